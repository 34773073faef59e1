"""`--executor ray`: align and represent on a Ray cluster, with the same outputs as a local run.

The jobs keep everything that decides the outputs (listing, resume, the report journal, the
order of the rows in the reps folder) in `jobs.align_tree` and `represent.represent_tree`; this
module only moves the per-file and per-batch work:

- align: every file to align is one Ray task (decode, detect, landmarks, warp, write the PNG),
  running `jobs._align_one`, the very function of the local pool, so the crops are the same
  bytes. Each worker process loads the detector and landmark model once (`jobs._aligner_for`
  keeps them per process). The driver records each outcome in the journal as it arrives.
- represent: a pool of actors, each holding the network once (one GPU each when the cluster has
  GPUs, else one CPU each), embeds batches of `batch_size` crops with `represent.embed_batch`;
  the driver writes the rows through `RepsWriter` in the listing's order, whatever order the
  batches finish in.

A worker process that dies mid-task (killed, out of memory) costs nothing: Ray runs its task
again (`ALIGN_TASK_RETRIES`), a dead actor is restarted and its batches are sent again
(`ACTOR_RESTARTS`). Every output is written atomically, so a task cut short leaves only a
temporary file (removed by `remove_stale_temps`) and the retried task writes the same bytes
under the real name once; the driver records each file once. Only when the retries run out
does the job end, with the report of what was done, like a broken local pool.

Workers read the inputs and write the outputs by absolute path, so on a cluster of several
machines RAW, OUT and the model files must be on storage every node sees under the same path.
Ray is imported here only, when a job asks for it: `facenet --help` and local runs never load it.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ..errors import FacenetError, UsageError

if TYPE_CHECKING:
    from ..formats.aligned import FileOutcome
    from ..nets.embedder import Embedder
    from ..align.job import AlignJob
    from ..pipeline.represent import EmbeddedBatch

INSTALL_HINT = ("--executor ray needs Ray, which is not installed here; install it with "
                "`pip install 'facenet-cli[ray]'` (or `pip install 'ray>=2.40'`).")
ALIGN_TASK_RETRIES = 3  # runs of an align task after its worker process died
ACTOR_RESTARTS = 3  # restarts of an embedding actor whose process died; its batches are resent
TASKS_PER_CPU = 2  # align tasks in flight per cluster CPU: keeps workers busy, bounds memory
BATCHES_PER_ACTOR = 2  # batches queued per actor: the next one is decoded while one is embedded


def import_ray():
    """The `ray` module, or one sentence saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


# ---------------------------------------------------------------- what runs on the workers

def align_on_worker(job: "AlignJob", task: tuple[str, str, str, str]) -> "FileOutcome | FacenetError":
    """One file's outcome, in a Ray worker process. Errors that end the job (a full disk, a
    damaged model file) come back as values: the driver raises them as one sentence, and Ray
    does not retry them."""
    from ..align.job import _align_one, _aligner_for

    try:
        _aligner_for(job)
        return _align_one(task)
    except FacenetError as exc:
        return _portable(exc)


def _portable(exc: FacenetError) -> FacenetError:
    """An error that pickles back to the driver: typed errors built from their message keep
    their type (DiskFull stays DiskFull), the others become a FacenetError with the sentence."""
    return exc if type(exc).__init__ is FacenetError.__init__ else FacenetError(str(exc))


@dataclass(frozen=True)
class EmbedderSpec:
    """What an actor needs to build the driver's Embedder again: small and picklable."""

    record: object  # catalogue.ModelRecord
    device: str
    flip: bool
    batch_size: int
    weights: str | None  # the driver's verified file; an actor that cannot see it resolves its own
    precision: str
    tta: int
    engine: str

    @classmethod
    def of(cls, embedder: "Embedder") -> "EmbedderSpec":
        weights = embedder.weights_path()
        # engine "auto" picks dlib's network for tiny jobs; a pool always embeds whole batches
        # with the network a local `represent` uses.
        engine = "torch" if embedder.engine == "auto" else embedder.engine
        return cls(embedder.record, embedder.requested_device, embedder.flip, embedder.batch_size,
                   str(Path(weights).absolute()) if weights is not None else None,
                   embedder.precision, embedder.tta, engine)

    def build(self) -> "Embedder":
        from ..pipeline.face_pipeline import FacePipeline, PipelineOptions

        weights = self.weights if self.weights and Path(self.weights).is_file() else None
        options = PipelineOptions(model=self.record.name, device=self.device, flip=self.flip,
                                  batch_size=self.batch_size, precision=self.precision, tta=self.tta,
                                  engine=self.engine)
        # The driver's record as it is (a checkpoint's may not resolve on this machine).
        return FacePipeline.build(options, record=self.record, verify=False, weights=weights).embedder


class EmbedActor:
    """Holds one Embedder for its lifetime (made a Ray actor class by RayExecutor)."""

    def __init__(self, spec: EmbedderSpec):
        self.embedder, self.failure = None, None
        try:
            self.embedder = spec.build()
        except FacenetError as exc:  # reported by the first batch, as one sentence
            self.failure = _portable(exc)

    def embed(self, aligned: str, files: list[str]) -> "EmbeddedBatch | FacenetError":
        from ..pipeline.represent import decode_batch, embed_batch

        if self.failure is not None:
            return self.failure
        return embed_batch(decode_batch(Path(aligned), files), self.embedder)


# ---------------------------------------------------------------- the driver

RAY_CLIENT_PORT = 10001  # ray://host without a port
# A host name (RFC 1123 labels) or an IPv4 address; IPv6 addresses come in brackets.
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
RAY_WORDS = ("auto", "local")  # the cluster Ray finds; a new one on this machine


def parse_address(address: str, source: str = "--address") -> tuple[str, int] | None:
    """(host, port) of a Ray address (host:port, [v6]:port, ray://host[:port]); None for Ray's
    words auto and local. Anything else is a usage error, before Ray is asked (which would end
    in a ValueError traceback, after the output folder was made)."""
    if address in RAY_WORDS:
        return None
    rest, default_port = address, None
    if address.startswith("ray://"):
        rest, default_port = address[len("ray://"):], RAY_CLIENT_PORT
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else (None if tail == "" else "bad")
        valid_host = bool(bracket) and _is_ip(host, 6)
    else:
        host, colon, port = rest.rpartition(":")
        if not colon:
            host, port = rest, None
        valid_host = bool(_HOST_NAME.fullmatch(host)) and (not host.replace(".", "").isdigit() or _is_ip(host, 4))
    if port is None and default_port is not None:
        port = str(default_port)
    if not (valid_host and port is not None and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"{source} {address!r} is not a Ray cluster address; give host:port as `ray start --head` "
                         "prints it (e.g. 10.0.0.5:6379), ray://host:port for Ray Client, auto (the cluster Ray "
                         "finds) or local (a new one on this machine).")
    return host, int(port)


def _is_ip(text: str, version: int) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host.rstrip(".").lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str, where: tuple[str, int], timeout: float = 5.0) -> None:
    """Refuse a host:port nothing listens on in seconds (Ray itself retries for minutes)."""
    import socket

    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as exc:
        raise FacenetError(f"No Ray cluster answers at {address} ({exc.strerror or exc}); start one there with "
                           "`ray start --head`, or leave out --address to start a local one.") from None


LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _on_loopback() -> Iterator[None]:
    """Ray's processes started (and this driver's own listening socket opened) inside bind
    127.0.0.1 only.

    On Linux, Ray 2.60 binds every interface and puts cluster traffic on the machine's network
    address even when told 127.0.0.1 (it even turns a 127.0.0.1 --address into that network
    address); RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps everything on 127.0.0.1 (one node: a
    local cluster for one run needs nobody else). Ray reads that variable when it is imported,
    so besides setting it for the processes Ray starts, its constant is set to match (unless
    the user chose otherwise); this process's environment is restored afterwards."""
    before = os.environ.get(LOOPBACK_ONLY)
    os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        if os.environ[LOOPBACK_ONLY] == "0":
            try:
                from ray._private import ray_constants

                ray_constants.ENABLE_RAY_CLUSTER = False
            except (ImportError, AttributeError):  # another Ray: the variable alone
                pass
        yield
    finally:
        if before is None:
            os.environ.pop(LOOPBACK_ONLY, None)


def _found_cluster() -> bool:
    """Would ray.init() without an address connect to a running cluster (RAY_ADDRESS, or the
    latest `ray start` on this machine)?"""
    import tempfile

    return bool(os.environ.get("RAY_ADDRESS")) or Path(tempfile.gettempdir(), "ray", "ray_current_cluster").is_file()


def _start_local(ray, settings: dict, fresh: bool = False) -> None:
    """ray.init without an address: the cluster Ray finds (RAY_ADDRESS, or the latest `ray
    start` on this machine), else (or with `fresh`: --address local) a local one for this run,
    with no dashboard and on loopback only (_on_loopback)."""
    if _found_cluster() and not fresh:
        ray.init(**settings)
        return
    with _on_loopback():
        ray.init(address="local", include_dashboard=False, **settings)


class RayExecutor:
    """Runs align and represent on a Ray cluster; a context manager around the connection.

        with RayExecutor(address="10.0.0.5:6379") as executor:
            align_tree(raw, out, job, executor=executor)
            represent_tree(out, reps, embedder, executor=executor)

    `address`: a running cluster (`ray start --head` prints it); None connects to the cluster
    Ray finds (RAY_ADDRESS, or the latest `ray start` on this machine), else starts a local one
    for the job and stops it afterwards. A driver that is already connected (ray.init called
    before) is used as it is and left connected. `max_tasks`: align tasks in flight at most
    (default: TASKS_PER_CPU x the cluster's CPUs); `actors`: embedding actors (default: one per
    GPU of the cluster, else one per CPU).
    """

    def __init__(self, address: str | None = None, max_tasks: int | None = None, actors: int | None = None):
        if max_tasks is not None and max_tasks < 1:
            raise UsageError(f"--workers must be at least 1, not {max_tasks}.")
        if actors is not None and actors < 1:
            raise UsageError(f"actors must be at least 1, not {actors}.")
        # A malformed address (or RAY_ADDRESS, which Ray uses without one) is a usage error now.
        if address is not None:
            self._where = parse_address(address)
        elif os.environ.get("RAY_ADDRESS"):
            self._where = parse_address(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        else:
            self._where = None
        self.address, self.max_tasks, self.actors = address, max_tasks, actors
        self._ray = None
        self._connected_here = False

    # --- connection ---------------------------------------------------------------------

    def __enter__(self) -> "RayExecutor":
        # Not installed, nothing at --address, no cluster where one is expected: one sentence
        # now, before any output is written. A running cluster is connected to now (seconds);
        # a local one is started only for the first work (a rerun with nothing to do needs none).
        import_ray()
        if self._where is not None:  # also when this driver is connected already: --address was meant
            _check_reachable(self.address or os.environ["RAY_ADDRESS"], self._where)
        if self.address != "local" and (self.address is not None or _found_cluster()):
            self.connect()
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def connect(self):
        """Connect (or start a local cluster) once; returns the ray module."""
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            settings = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
            try:
                if self._where is not None:  # Ray itself would retry for minutes
                    _check_reachable(self.address or os.environ["RAY_ADDRESS"], self._where)
                if self.address in (None, "local"):
                    _start_local(ray, settings, fresh=self.address == "local")
                elif self._where is not None and _is_loopback(self._where[0]):
                    with _on_loopback():  # this driver's own socket on loopback too, and 127.0.0.1 kept
                        ray.init(address=self.address, **settings)
                else:
                    ray.init(address=self.address, **settings)
            except ConnectionError as exc:
                where = f"at {self.address}" if self.address else "that Ray found"
                raise FacenetError(f"Cannot connect to the Ray cluster {where} ({' '.join(str(exc).split())[:200]}); "
                                   "check that it runs (`ray status`) or leave out --address to start a local "
                                   "one.") from None
            self._connected_here = True
        self._ray = ray
        return ray

    def close(self) -> None:
        """Disconnect; a cluster this executor started on this machine stops with it."""
        if self._ray is not None and self._connected_here:
            self._ray.shutdown()
        self._ray, self._connected_here = None, False

    def _cluster(self, resource: str) -> int:
        return int(self.connect().cluster_resources().get(resource, 0))

    # --- align --------------------------------------------------------------------------

    def align_files(self, todo: list[tuple[str, str, str, str]], job: "AlignJob",
                    record: Callable[["FileOutcome"], None], out: Path) -> None:
        """Align every (raw, out, rel, stem) task on the cluster, calling `record(outcome)` in
        the driver once per file as it finishes."""
        if not todo:
            return
        from ..atomic import remove_stale_temps
        from ..align.job import WorkersLost, _aligner_for

        # Models load and are verified here first: a damaged model file is one sentence before
        # Ray starts or any task runs, as in a local run.
        _aligner_for(job)
        ray = self.connect()
        # Workers have their own working directory (and maybe machine): absolute paths only.
        if job.fallback_dir:
            job = replace(job, fallback_dir=os.path.abspath(job.fallback_dir))
        todo = [(os.path.abspath(raw), os.path.abspath(dst), rel, stem) for raw, dst, rel, stem in todo]
        remote = ray.remote(num_cpus=1, max_retries=ALIGN_TASK_RETRIES, retry_exceptions=False)(align_on_worker)
        window = self.max_tasks or max(1, TASKS_PER_CPU * self._cluster("CPU"))
        job_ref = ray.put(job)
        tasks = iter(todo)
        pending: dict = {}

        def submit() -> None:
            task = next(tasks, None)
            if task is not None:
                pending[remote.remote(job_ref, task)] = task

        try:
            for _ in range(window):
                submit()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise WorkersLost(f"on the Ray cluster while aligning {task[2]}, more often than its "
                                          f"{ALIGN_TASK_RETRIES} retries allow ({type(exc).__name__}),") from None
                    if isinstance(outcome, FacenetError):
                        raise outcome
                    record(outcome)
                    submit()
        finally:
            for ref in pending:  # Ctrl-C or a full disk: stop what is queued or running
                ray.cancel(ref)
            # Temporary files of worker processes that died (a retried task) are stale now.
            remove_stale_temps(out)

    # --- represent ----------------------------------------------------------------------

    def embed_batches(self, aligned: Path, files: list[str], embedder: "Embedder") -> Iterator["EmbeddedBatch"]:
        """The EmbeddedBatch of each run of `embedder.batch_size` files, in order, computed by an
        actor pool that holds the network once per actor."""
        batches = [files[i:i + embedder.batch_size] for i in range(0, len(files), embedder.batch_size)]
        if not batches:
            return
        ray = self.connect()
        spec = EmbedderSpec.of(embedder)
        gpus = self._cluster("GPU") if spec.device != "cpu" and spec.precision != "int8" else 0
        count = self.actors or (gpus or max(1, self._cluster("CPU")))
        count = min(count, len(batches))
        actor_class = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=ACTOR_RESTARTS,
                                 max_task_retries=ACTOR_RESTARTS)(EmbedActor)
        actors = [actor_class.remote(spec) for _ in range(count)]
        folder = os.path.abspath(aligned)
        queued: dict = {}  # ref -> (batch index, actor)
        load = {index: 0 for index in range(count)}
        finished: dict[int, "EmbeddedBatch"] = {}
        following = 0  # the next batch to submit
        wanted = 0  # the next batch to hand to the writer
        # Batches finished ahead of a slow one wait for it in memory; this bounds how many.
        ahead = 2 * BATCHES_PER_ACTOR * count

        def submit() -> None:
            nonlocal following
            while following < len(batches) and following < wanted + ahead:
                index = min(load, key=load.get)
                if load[index] >= BATCHES_PER_ACTOR:
                    return
                ref = actors[index].embed.remote(folder, batches[following])
                queued[ref] = (following, index)
                load[index] += 1
                following += 1

        try:
            while wanted < len(batches):
                if wanted in finished:
                    yield finished.pop(wanted)
                    wanted += 1
                    continue
                submit()
                done, _ = ray.wait(list(queued), num_returns=1)
                for ref in done:
                    number, index = queued.pop(ref)
                    load[index] -= 1
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise FacenetError(
                            f"An embedding worker process died (killed, or out of memory) on the Ray cluster while "
                            f"embedding batch {number + 1} of {len(batches)}, more often than its {ACTOR_RESTARTS} "
                            f"restarts allow ({type(exc).__name__}); nothing was written, and rerunning the same "
                            "command starts again.") from None
                    if isinstance(result, FacenetError):
                        raise result
                    finished[number] = result
        finally:
            for actor in actors:  # also ends the batches they still hold
                ray.kill(actor)
