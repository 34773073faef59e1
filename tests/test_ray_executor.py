"""`--executor ray` on a real one-node Ray cluster started here, against the local executor.

The cluster (2 CPUs, a 200 MB object store, no dashboard) is started by this module and stopped
at its end; only its own processes are ever killed (children of its raylet). Traffic stays on
127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray 2.60 bind and connect on loopback on
Linux (without it, cluster traffic goes to the machine's network address). That mode refuses a
second node, so the cluster is one node with several worker processes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ._sockets import LOOPBACK, SocketWatcher, listeners

pytestmark = pytest.mark.slow  # starts real local Ray clusters (~40 s)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Embeddings from the actors may differ from the local run's by float rounding (another thread
# count); measured: identical on this machine. The bound is far below any decision (thresholds
# of squared distances are ~0.1).
EMBEDDING_TOLERANCE = 1e-5
PEOPLE, PER_PERSON = 8, 2


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster: its address and the raylet's pid (whose children are its workers)."""
    import logging

    with pytest.MonkeyPatch.context() as patch:
        for key, value in LOOPBACK_ENV.items():  # before Ray is imported: it reads them then
            patch.setenv(key, value)
        ray = pytest.importorskip("ray", reason="Ray is not installed (`pip install 'facenet-cli[ray]'`)")
        from ray._private import ray_constants, worker

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: Ray may have been imported before

        context = ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
                           log_to_driver=False, logging_level=logging.ERROR)
        try:
            # Loopback only: the node and the cluster's control service (GCS) listen on 127.0.0.1.
            assert context.address_info["node_ip_address"] == "127.0.0.1"
            assert context.address_info["gcs_address"].startswith("127.0.0.1:")
            raylet = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
            yield {"address": ray.get_runtime_context().gcs_address, "raylet": raylet}
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def photos(lfw_images, tmp_path_factory) -> Path:
    """PEOPLE x PER_PERSON real LFW photos and one truncated JPEG (an `unreadable` outcome)."""
    raw = tmp_path_factory.mktemp("ray-raw")
    people = [p for p in sorted(os.listdir(lfw_images)) if len(os.listdir(lfw_images / p)) >= PER_PERSON][:PEOPLE]
    for person in people:
        (raw / person).mkdir()
        for name in sorted(os.listdir(lfw_images / person))[:PER_PERSON]:
            (raw / person / name).write_bytes((lfw_images / person / name).read_bytes())
    first = sorted((raw / people[0]).iterdir())[0]
    (raw / people[0] / "cut.jpg").write_bytes(first.read_bytes()[:600])
    return raw


@pytest.fixture(scope="module")
def local(photos, tmp_path_factory):
    """The local executor's outputs: aligned crops and their representation."""
    from facenet_cli.cli._app import load_embedder
    from facenet_cli.align.job import AlignJob, align_tree
    from facenet_cli.pipeline.represent import represent_tree

    out = tmp_path_factory.mktemp("ray-local")
    embedder = load_embedder("dlib-resnet.v1", "cpu", 4)
    report = align_tree(photos, out / "aligned", AlignJob(spec=embedder.record.align), workers=1)
    assert report.counts["aligned"] >= PEOPLE * PER_PERSON - 2 and report.counts["unreadable"] == 1
    represent_tree(out / "aligned", out / "reps", embedder)
    return out


def crops(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def temp_files(folder: Path) -> list[str]:
    from facenet_cli.atomic import is_temp_name

    return [str(p) for p in folder.rglob("*") if is_temp_name(p.name)]


def assert_same_reps(ours: Path, ours_aligned: Path, theirs: Path, theirs_aligned: Path) -> None:
    """The same faces in the same order with the same class ids, embeddings within the tolerance."""
    from facenet_cli.formats.reps import read_reps

    a, b = read_reps(ours), read_reps(theirs)
    assert [Path(p).relative_to(ours_aligned) for p in a.paths] == [Path(p).relative_to(theirs_aligned)
                                                                   for p in b.paths]
    assert a.labels.tolist() == b.labels.tolist()
    assert a.embeddings.shape == b.embeddings.shape == (len(b.paths), 128)
    assert np.abs(a.embeddings - b.embeddings).max() <= EMBEDDING_TOLERANCE


# Progress is drawn only on a terminal; rich's TTY_COMPATIBLE=1 makes the pipe count as one.
SHOW_PROGRESS = {"TTY_COMPATIBLE": "1"}


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "facenet_cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **LOOPBACK_ENV, **(env or {})})


def own_workers(raylet: int, title: str) -> list[int]:
    """Pids of this cluster's worker processes (children of its raylet) whose Ray process title
    starts with `title` (`ray::run_on_worker` while a worker runs a task of a map)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            name = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == raylet and name.startswith(title):
            pids.append(int(entry))
    return pids


def kill_one(raylet: int, title: str, within: float = 20.0) -> int:
    """SIGKILL one of this cluster's workers busy with `title`; returns its pid."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = own_workers(raylet, title)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.01)
    raise AssertionError(f"no worker process titled {title!r} appeared within {within} s")


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether `pid` has ended (or is a zombie) within `within` s: a SIGKILLed process with a
    model in memory takes a moment to tear down (CI once saw it still running as the job ended)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# ---------------------------------------------------------------- the commands, on the cluster

def test_align_command_on_ray_matches_local_and_resumes(cluster, photos, local, tmp_path):
    out = tmp_path / "aligned"
    done = cli("align", str(photos), str(out), "--executor", "ray", "--address", cluster["address"], "--json",
               env=SHOW_PROGRESS)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["total"] == PEOPLE * PER_PERSON + 1 and summary["earlier"] == 0
    assert summary["counts"]["unreadable"]["now"] == 1
    assert "Aligning" in done.stderr and f"{summary['total']}/{summary['total']}" in done.stderr  # progress
    assert crops(out) == crops(local / "aligned")
    assert (out / "align-report.csv").read_bytes() == (local / "aligned" / "align-report.csv").read_bytes()
    assert (out / "align-spec.json").read_bytes() == (local / "aligned" / "align-spec.json").read_bytes()

    # A rerun skips finished work: only the crop deleted by hand is made again, on the cluster.
    gone_crop = sorted(out.rglob("*.png"))[3]
    gone_crop.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = cli("align", str(photos), str(out), "--executor", "ray", "--address", cluster["address"], "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["now"], summary["earlier"]) == (1, PEOPLE * PER_PERSON)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert crops(out) == crops(local / "aligned")
    assert (out / "align-report.csv").read_bytes() == (local / "aligned" / "align-report.csv").read_bytes()


def test_represent_photos_command_on_ray_matches_local(cluster, photos, local, tmp_path):
    out = tmp_path / "reps"
    done = cli("represent", str(photos), str(out), "--photos", "--batch-size", "4", "--device", "cpu",
               "--executor", "ray", "--address", cluster["address"], "--json", env=SHOW_PROGRESS)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["align"]["counts"]["unreadable"]["total"] == 1
    assert result["faces"] == sum(1 for _ in (local / "aligned").rglob("*.png"))
    faces = result["faces"]
    assert "Aligning" in done.stderr and "Embedding" in done.stderr and f"{faces}/{faces}" in done.stderr
    assert crops(out / "aligned") == crops(local / "aligned")
    assert_same_reps(out, out / "aligned", local / "reps", local / "aligned")


def test_identify_and_cluster_on_ray_answer_as_local(cluster, photos, tmp_path):
    """The pipeline's photos through the Ray executor (the pipeline pickled to the workers, its
    models built there): the same answers as one local process."""
    from facenet_cli.executors import get_executor
    from facenet_cli.recognition.cluster import cluster_faces
    from facenet_cli.recognition.enrol import add_to_gallery
    from facenet_cli.recognition.identify import identify

    gallery = tmp_path / "people.gallery"
    add_to_gallery(gallery, [photos])
    local = identify(gallery, [photos], workers=1)
    with get_executor("ray") as executor:  # the driver connected by the fixture
        remote = identify(gallery, [photos], executor=executor)
        clustered = cluster_faces(photos, tmp_path / "ray-clusters", executor=executor, max_distance=0.15)
    assert len(local.faces) >= PEOPLE * PER_PERSON and local.problems == remote.problems  # some photos hold two
    assert [f.to_dict() for f in remote.faces] == [f.to_dict() for f in local.faces]
    plain = cluster_faces(photos, tmp_path / "local-clusters", workers=1, max_distance=0.15)
    assert clustered.labels.tolist() == plain.labels.tolist()
    assert [(f.path, f.face) for f in clustered.faces] == [(f.path, f.face) for f in plain.faces]


# ---------------------------------------------------------------- a worker dies mid-run

def test_align_survives_a_killed_worker(cluster, photos, local, tmp_path):
    from facenet_cli.align.job import AlignJob, align_tree
    from facenet_cli.executors.ray import RayExecutor
    from facenet_cli.models.catalogue import CATALOGUE

    out = tmp_path / "aligned"
    seen: list[str] = []
    killed: list[int] = []

    def on_outcome(outcome) -> None:
        seen.append(outcome.input)
        if len(seen) == 3:  # tasks are in flight on both workers now: kill one mid-task
            killed.append(kill_one(cluster["raylet"], "ray::run_on_worker"))

    with RayExecutor() as executor:  # the driver connected by the fixture
        report = align_tree(photos, out, AlignJob(spec=CATALOGUE["dlib-resnet.v1"].align), on_outcome=on_outcome,
                            executor=executor)
    assert killed and gone(killed[0])
    # Every file recorded once, none lost; the outputs equal an undisturbed run's.
    assert sorted(seen) == sorted(set(seen)) and len(seen) == PEOPLE * PER_PERSON + 1
    assert sum(report.counts_earlier.values()) == 0
    assert crops(out) == crops(local / "aligned")
    assert (out / "align-report.csv").read_bytes() == (local / "aligned" / "align-report.csv").read_bytes()
    assert temp_files(out) == []


def test_represent_survives_a_killed_actor(cluster, local, tmp_path):
    from facenet_cli.cli._app import load_embedder
    from facenet_cli.executors.ray import RayExecutor
    from facenet_cli.pipeline.represent import represent_tree

    embedder = load_embedder("dlib-resnet.v1", "cpu", 4, engine="auto")
    killed: list[int] = []
    batches: list[int] = []

    class KillAfterTheFirstBatch:  # the progress protocol (progress.Progress)
        def start(self, total):
            pass

        def stage(self, name, total):
            pass

        def advance(self, count=1):
            batches.append(count)
            if len(batches) == 1:  # the other batches are queued on the two actors: kill one
                killed.append(kill_one(cluster["raylet"], "ray::EmbedActor"))

    with RayExecutor() as executor:
        report = represent_tree(local / "aligned", tmp_path / "reps", embedder, executor=executor,
                                progress=KillAfterTheFirstBatch())
    assert killed and gone(killed[0])
    assert report.count == sum(1 for _ in (local / "aligned").rglob("*.png")) == sum(batches)
    assert_same_reps(tmp_path / "reps", local / "aligned", local / "reps", local / "aligned")
    assert temp_files(tmp_path / "reps") == []


# ---------------------------------------------------------------- without Ray

def test_without_ray_one_sentence_and_local_runs_never_import_it(photos, tmp_path, run_cli):
    person = sorted(p for p in photos.iterdir())[1]
    raw = tmp_path / "raw"
    (raw / person.name).mkdir(parents=True)
    for photo in sorted(person.iterdir()):
        (raw / person.name / photo.name).write_bytes(photo.read_bytes())
    # `sys.modules["ray"] = None` makes `import ray` fail as on a machine without Ray.
    script = ("import sys; sys.modules['ray'] = None; sys.argv = ['facenet', *sys.argv[1:]]; "
              "from facenet_cli.cli import main; main()")
    done = subprocess.run([PYTHON, "-c", script, "align", str(raw), str(tmp_path / "out"), "--executor", "ray"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: --executor ray needs Ray, which is not installed here; install it with "
        "`pip install 'facenet-cli[ray]'` (or `pip install 'ray>=2.40'`)."]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))

    # --help and a local run load no Ray.
    probe = ("import sys, runpy; sys.argv = ['facenet', *sys.argv[1:]]\n"
             "from facenet_cli.cli import main\n"
             "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             "print('RAY-LOADED' if 'ray' in sys.modules else 'RAY-ABSENT', code, file=sys.stderr)\n")
    helped = subprocess.run([PYTHON, "-c", probe, "align", "--help"], capture_output=True, text=True, timeout=60)
    assert "--executor" in helped.stdout and "every node sees" in helped.stdout
    assert helped.stderr.strip().splitlines()[-1] == "RAY-ABSENT 0"
    ran = subprocess.run([PYTHON, "-c", probe, "align", str(raw), str(tmp_path / "local"), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert ran.stderr.strip().splitlines()[-1] == "RAY-ABSENT 0"
    assert json.loads(ran.stdout)["counts"]["aligned"]["now"] == PER_PERSON

    # --address belongs to --executor ray.
    refused = run_cli("align", str(raw), str(tmp_path / "x"), "--address", "127.0.0.1:6379")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == "Error: --address names a Ray cluster; add --executor ray to use it."


def test_an_address_where_no_cluster_runs_is_one_sentence(photos, tmp_path, run_cli):
    pytest.importorskip("ray", reason="Ray is not installed (`pip install 'facenet-cli[ray]'`)")
    done = run_cli("align", str(photos), str(tmp_path / "out"), "--executor", "ray", "--address", "127.0.0.1:1")
    assert done.exit_code == 1
    assert done.stderr.strip().splitlines() == [
        "Error: No Ray cluster answers at 127.0.0.1:1 (Connection refused); start one there with "
        "`ray start --head`, or leave out --address to start a local one."]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the address, checked first

@pytest.mark.parametrize("command", ["align", "represent"])
def test_a_malformed_address_is_a_usage_error_and_out_is_not_made(command, photos, tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is None:  # (not imported here: the cluster fixture imports it first)
        pytest.skip("Ray is not installed (`pip install 'facenet-cli[ray]'`)")
    extra = ["--photos", "--device", "cpu"] if command == "represent" else []
    for address, env in (("nonsense", {}), ("head:99999", {}), (None, {"RAY_ADDRESS": "nonsense"})):
        out = tmp_path / f"out-{address}"
        given = ["--address", address] if address else []
        done = cli(command, str(photos), str(out), *extra, "--executor", "ray", *given, env=env)
        source = "--address" if address else "RAY_ADDRESS"
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"Error: {source} '{address or 'nonsense'}' is not a Ray cluster address; give host:port as `ray start "
            "--head` prints it (e.g. 10.0.0.5:6379), ray://host:port for Ray Client, auto (the cluster Ray finds) or "
            "local (a new one on this machine)."]
        assert not out.exists()


# ---------------------------------------------------------------- what Ray listens on

def without_loopback_env() -> dict:
    """This environment without the variable that keeps Ray on loopback (nor RAY_ADDRESS): what
    the command does by itself is checked, not what the tests set."""
    return {k: v for k, v in os.environ.items() if k not in (*LOOPBACK_ENV, "RAY_ADDRESS")}


@pytest.mark.parametrize("how", ["a local cluster", "--address local", "--address of a running cluster"])
def test_every_ray_listener_is_on_loopback(how, cluster, photos, tmp_path):
    """`ss -ltnp` during `--executor ray`: the cluster the command starts (GCS, raylet, object
    manager, runtime-env agent, workers) and the driver itself listen on 127.0.0.1 only; so does
    the driver connected to a loopback cluster, whose processes (children of this test process)
    are watched too."""
    raw = tmp_path / "raw"
    person = sorted(p for p in photos.iterdir())[1]
    (raw / person.name).mkdir(parents=True)
    for photo in sorted(person.iterdir()):
        (raw / person.name / photo.name).write_bytes(photo.read_bytes())
    given = {"a local cluster": [], "--address local": ["--address", "local"],
             "--address of a running cluster": ["--address", cluster["address"]]}[how]
    process = subprocess.Popen([PYTHON, "-m", "facenet_cli", "align", str(raw), str(tmp_path / "out"), "--executor",
                                "ray", *given, "--json"], cwd=ROOT, env=without_loopback_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    command = SocketWatcher(process)
    command.start()
    ours = SocketWatcher(os.getpid())  # the test's own cluster, when the command uses it
    ours.start()
    try:
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:  # timed out: our own child, stopped by its pid
            process.kill()
            process.communicate()
        command.join()
        ours.stop()
    assert process.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["counts"]["aligned"]["now"] == PER_PERSON
    opened = listeners(command.sockets | ours.sockets)
    assert len(listeners(command.sockets)) >= (1 if given and how != "--address local" else 4), command.sockets
    assert all(host in LOOPBACK for host, _ in opened), sorted(opened)
