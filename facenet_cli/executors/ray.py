"""`--executor ray`: align and represent on a Ray cluster, with the same outputs as a local run.

The jobs keep everything that decides the outputs (listing, resume, the report journal, the
order of the rows in the reps folder) in `align.job.align_tree`, `represent.represent_tree` and
`FacePipeline.iter_photos`; this module only moves the per-item and per-batch work, and imports
nothing of them (the functions to run come as values, pickled by reference):

- `map` (the Executor protocol): every item is one Ray task running the caller's function
  (align: `align.job.align_chunk`, the very function of the local pool, so the crops are the
  same bytes); `setup` runs once per worker process before its first item (align: load the
  detector and landmark model). Results come back in order, or as they finish.
- `embed_batches` (represent): a pool of actors, each holding the pipeline's network once (one
  GPU each when the cluster has GPUs, else one CPU each), runs the caller's function on batches
  of `batch_size` crops; the driver writes the rows through `RepsWriter` in the listing's order,
  whatever order the batches finish in.

A worker process that dies mid-task (killed, out of memory) costs nothing: Ray runs its task
again (`TASK_RETRIES`), a dead actor is restarted and its batches are sent again
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import WorkersLost, register_executor
from ..errors import FacenetError, UsageError

if TYPE_CHECKING:
    from ..pipeline.face_pipeline import FacePipeline

INSTALL_HINT = ("--executor ray needs Ray, which is not installed here; install it with "
                "`pip install 'facenet-cli[ray]'` (or `pip install 'ray>=2.40'`).")
TASK_RETRIES = 3  # runs of a task after its worker process died
ALIGN_TASK_RETRIES = TASK_RETRIES
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

_WORKER_FUNCTIONS: dict[str, Callable] = {}  # per worker process: the function of the map it set up for


def run_on_worker(token: str, setup: Callable | None, function: Callable, item: Any) -> tuple[bool, Any]:
    """One item of a map, in a Ray worker process: (True, result), or (False, error) for an
    error that ends the map (a full disk, a damaged model file): the driver raises it as one
    sentence, and Ray does not retry it. `setup` runs once per process and map (`token`); the
    function deserialized then is kept, with whatever it loaded."""
    try:
        if token not in _WORKER_FUNCTIONS:
            if setup is not None:
                setup()
            _WORKER_FUNCTIONS.clear()
            _WORKER_FUNCTIONS[token] = function
        return True, _WORKER_FUNCTIONS[token](item)
    except FacenetError as exc:
        return False, _portable(exc)


def _portable(exc: FacenetError) -> FacenetError:
    """An error that pickles back to the driver: typed errors built from their message keep
    their type (DiskFull stays DiskFull), the others become a FacenetError with the sentence."""
    return exc if type(exc).__init__ is FacenetError.__init__ else FacenetError(str(exc))


class EmbedActor:
    """Holds one pipeline's embedder for its lifetime (made a Ray actor class by RayExecutor)."""

    def __init__(self, pipeline: "FacePipeline"):
        self.embedder, self.failure = None, None
        try:
            # engine "auto" picks dlib's network for tiny jobs; a pool always embeds whole
            # batches with the network a local `represent` uses.
            if pipeline.options.engine == "auto":
                pipeline = pipeline.replace(engine="torch")
            self.embedder = pipeline.embedder
        except FacenetError as exc:  # reported by the first batch, as one sentence
            self.failure = _portable(exc)

    def embed(self, function: Callable, batch: list) -> Any:
        if self.failure is not None:
            return self.failure
        try:
            return function(self.embedder, batch)
        except FacenetError as exc:
            return _portable(exc)


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
    """The Executor protocol on a Ray cluster (executors/__init__.py); a context manager around
    the connection.

        with RayExecutor(address="10.0.0.5:6379") as executor:
            align_tree(raw, out, job, executor=executor)
            represent_tree(out, reps, embedder, executor=executor)

    `address`: a running cluster (`ray start --head` prints it); None connects to the cluster
    Ray finds (RAY_ADDRESS, or the latest `ray start` on this machine), else starts a local one
    for the job and stops it afterwards. A driver that is already connected (ray.init called
    before) is used as it is and left connected. `max_tasks` (`workers` through get_executor):
    tasks in flight at most (default: TASKS_PER_CPU x the cluster's CPUs); `actors`: embedding
    actors (default: one per GPU of the cluster, else one per CPU).
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_tasks: int | None = None, actors: int | None = None,
                 workers: int | None = None):
        max_tasks = workers if max_tasks is None else max_tasks
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

    @property
    def workers(self) -> int:
        """Tasks in flight at most (connects to find the cluster's CPUs when not set)."""
        return self.max_tasks or max(1, TASKS_PER_CPU * self._cluster("CPU"))

    # --- the Executor protocol -----------------------------------------------------------

    def map(self, function: Callable, items: Iterable, *, setup: Callable | None = None,
            ordered: bool = True) -> Iterator[tuple[int, Any]]:
        """(index, function(item)) of every item, each item a Ray task (see the protocol in
        executors/__init__.py). Workers read and write by absolute path: give absolute paths in
        items on a cluster of several machines."""
        import uuid

        items = list(items)
        if not items:
            return
        ray = self.connect()
        remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(run_on_worker)
        window = self.workers
        token = uuid.uuid4().hex
        setup_ref, function_ref = ray.put(setup), ray.put(function)
        queue = iter(enumerate(items))
        pending: dict = {}
        finished: dict[int, Any] = {}
        wanted = 0

        def submit() -> None:
            for index, item in queue:
                pending[remote.remote(token, setup_ref, function_ref, item)] = index
                return

        try:
            for _ in range(window):
                submit()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        ok, result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise WorkersLost(f"on the Ray cluster while working on item {index + 1} of {len(items)}, "
                                          f"more often than its {TASK_RETRIES} retries allow "
                                          f"({type(exc).__name__}),") from None
                    if not ok:
                        raise result
                    if ordered:
                        finished[index] = result
                    else:
                        yield index, result
                    submit()
                while ordered and wanted in finished:
                    yield wanted, finished.pop(wanted)
                    wanted += 1
        finally:
            for ref in pending:  # Ctrl-C, a full disk, a generator closed: stop what is queued or running
                ray.cancel(ref)

    # --- represent ----------------------------------------------------------------------

    def embed_batches(self, function: Callable, batches: list[list], pipeline: "FacePipeline") -> Iterator[Any]:
        """`function(embedder, batch)` of each batch, in order, computed by an actor pool in
        which every actor holds `pipeline`'s embedder once (represent: decode and embed a batch
        of crop files). The pipeline travels by pickle: its options, record and verified
        weights file, not its loaded parts."""
        if not batches:
            return
        ray = self.connect()
        options = pipeline.options
        gpus = self._cluster("GPU") if options.device != "cpu" and options.precision != "int8" else 0
        count = self.actors or (gpus or max(1, self._cluster("CPU")))
        count = min(count, len(batches))
        actor_class = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=ACTOR_RESTARTS,
                                 max_task_retries=ACTOR_RESTARTS)(EmbedActor)
        pipeline_ref, function_ref = ray.put(pipeline), ray.put(function)
        actors = [actor_class.remote(pipeline_ref) for _ in range(count)]
        queued: dict = {}  # ref -> (batch index, actor)
        load = {index: 0 for index in range(count)}
        finished: dict[int, Any] = {}
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
                ref = actors[index].embed.remote(function_ref, batches[following])
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


register_executor("ray", RayExecutor)
