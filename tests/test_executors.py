"""Executors and the progress protocol: an executor is one file (one defined here, in the tests,
runs the batch use cases); one progress protocol whose counts add up; --workers changes where
faces are found, never the answer; one exit code (3) when the inputs hold no face; no import
cycle among the pipeline, executors, recognition and align packages."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import copy_people

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = ("Tony_Blair", "Colin_Powell", "Serena_Williams")


class RecordingProgress:
    """The progress protocol (progress.Progress), recording (stage, total, units advanced)."""

    def __init__(self):
        self.stages: list[list] = []

    def start(self, total):
        if not self.stages:
            self.stages.append(["", None, 0])
        self.stages[-1][1] = total

    def advance(self, count=1):
        if not self.stages:
            self.stages.append(["", None, 0])
        self.stages[-1][2] += count

    def stage(self, name, total):
        self.stages.append([name, total, 0])


@pytest.fixture(scope="module")
def raw(lfw_images, tmp_path_factory):
    """<person>/<image>: two photos of each of three people, and a photo without a face."""
    from PIL import Image

    root = tmp_path_factory.mktemp("executors") / "raw"
    copy_people(lfw_images, root, {p: 2 for p in PEOPLE})
    Image.new("RGB", (160, 160), (90, 140, 200)).save(root / PEOPLE[0] / "sky.png")
    return root


@pytest.fixture(scope="module")
def faceless(tmp_path_factory):
    """A folder of two readable photos without a face."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("faceless")
    Image.new("RGB", (160, 160), (90, 140, 200)).save(folder / "sky.png")
    Image.new("RGB", (200, 120), (200, 200, 200)).save(folder / "wall.jpg")
    return folder


@pytest.fixture(scope="module")
def gallery(lfw_images, tmp_path_factory):
    from facenet_cli.recognition.enrol import add_to_gallery

    root = tmp_path_factory.mktemp("executors-gallery")
    for person in PEOPLE:  # other photos than raw's
        (root / "known" / person).mkdir(parents=True)
        for photo in sorted((lfw_images / person).iterdir())[2:5]:
            shutil.copy(photo, root / "known" / person / photo.name)
    path = root / "people.gallery"
    add_to_gallery(path, [root / "known"])
    return path


def test_an_executor_is_one_file(raw, tmp_path, face_pipeline):
    """The executor of tests/_inline_executor.py, registered by importing that one file, runs
    the align job and the pipeline's photos with the same outputs as the local pool."""
    from facenet_cli.align.job import AlignJob, align_tree
    from facenet_cli.executors import Executor, executor_names, get_executor
    from facenet_cli.recognition.compare import compare_photos

    import tests._inline_executor  # noqa: F401 (registers "inline-test")

    executor = get_executor("inline-test")
    assert isinstance(executor, Executor) and "inline-test" in executor_names()
    job = AlignJob.of(face_pipeline, faces="largest")
    ours = align_tree(raw, tmp_path / "ours", job, executor=executor)
    local = align_tree(raw, tmp_path / "local", job, workers=2)
    assert executor.items == ours.total == local.total == 2 * len(PEOPLE) + 1 and executor.setups == 1
    assert [(o.input, o.status, o.outputs) for o in ours.outcomes] == \
        [(o.input, o.status, o.outputs) for o in local.outcomes]
    for crop in (tmp_path / "local").rglob("*.png"):
        assert (tmp_path / "ours" / crop.relative_to(tmp_path / "local")).read_bytes() == crop.read_bytes()

    photos = sorted(str(p) for p in raw.rglob("*.*"))
    with get_executor("inline-test") as inline:
        theirs = compare_photos(photos, face_pipeline, executor=inline)
        assert inline.items == len(photos)
    plain = compare_photos(photos, face_pipeline, workers=1)
    assert [f.label for f in theirs.faces] == [f.label for f in plain.faces] and theirs.problems == plain.problems
    np.testing.assert_allclose(theirs.distances, plain.distances, atol=1e-6)


def test_unknown_executors_and_workers_are_usage_errors(run_cli, raw, tmp_path):
    from facenet_cli.errors import UsageError
    from facenet_cli.executors import get_executor

    with pytest.raises(UsageError, match="--executor must be one of local, ray"):
        get_executor("nope")
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        get_executor("local", 0)
    done = run_cli("align", raw, tmp_path / "out", "--address", "127.0.0.1:6379")
    assert done.exit_code == 2 and "add --executor ray" in done.stderr
    done = run_cli("identify", tmp_path / "x.gallery", raw, "--workers", "0")
    assert done.exit_code == 2


def test_progress_events_add_up(raw, tmp_path, face_pipeline):
    """One protocol everywhere: each stage's advances add up to the total it started with."""
    from facenet_cli.align.job import AlignJob, align_tree
    from facenet_cli.pipeline.represent import represent_photos
    from facenet_cli.recognition.cluster import cluster_faces

    entries = 2 * len(PEOPLE) + 1
    progress = RecordingProgress()
    align_tree(raw, tmp_path / "aligned", AlignJob.of(face_pipeline, faces="largest"), workers=2, progress=progress)
    assert progress.stages == [["", entries, entries]]

    progress = RecordingProgress()
    _, report = represent_photos(raw, tmp_path / "reps", face_pipeline, AlignJob.of(face_pipeline, faces="largest"),
                                 progress=progress)
    assert progress.stages == [["Aligning", entries, entries], ["Embedding", report.total, report.total]]

    progress = RecordingProgress()
    photos = sorted(str(p) for p in raw.rglob("*.*"))
    found = face_pipeline.photos(photos, workers=2, progress=progress)
    assert progress.stages == [["", len(photos), len(photos)]] and len(found) == len(photos)

    progress = RecordingProgress()
    cluster_faces(raw, tmp_path / "clusters", max_distance=0.15, progress=progress, workers=2)
    names = [name for name, _, _ in progress.stages]
    assert names == ["Aligning", "Embedding", "Neighbours", "Linking", "Contact sheet"]
    for name, total, done in progress.stages:
        assert total is None or done == total, (name, total, done)


def test_workers_change_where_faces_are_found_not_the_answer(run_cli, gallery, raw, tmp_path):
    one = run_cli("identify", gallery, raw, "--json", "--workers", "1")
    two = run_cli("identify", gallery, raw, "--json", "--workers", "2")
    assert one.exit_code == two.exit_code == 0, one.stderr + two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["faces_found"] == 2 * len(PEOPLE) and a["problems"] == b["problems"] == {f"{PEOPLE[0]}/sky.png":
                                                                                     "no face found"}
    assert a["faces"] == b["faces"]

    for workers in ("1", "2"):
        done = run_cli("cluster", raw, tmp_path / f"clusters-{workers}", "--json", "--workers", workers,
                       "--device", "cpu")
        assert done.exit_code == 0, done.stderr
    # The same rows; the crop column names each run's own OUT.
    first, second = ((tmp_path / f"clusters-{w}" / "clusters.csv").read_text().replace(f"clusters-{w}", "OUT")
                     for w in ("1", "2"))
    assert first == second and first.count("\n") == 2 * len(PEOPLE) + 1


def test_nothing_found_is_exit_3_everywhere(run_cli, gallery, faceless, tmp_path):
    """The inputs were read but hold no face: one exit code (errors.EXIT_NOTHING_FOUND) and one
    `Error:` sentence for compare, search, identify and cluster alike."""
    photos = sorted(faceless.iterdir())
    runs = {
        "compare": run_cli("compare", *photos),
        "compare --json": run_cli("compare", *photos, "--json"),
        "search": run_cli("search", gallery, photos[0]),
        "identify": run_cli("identify", gallery, faceless),
        "identify --json": run_cli("identify", gallery, faceless, "--json"),
        "cluster": run_cli("cluster", faceless, tmp_path / "out"),
    }
    for what, done in runs.items():
        assert done.exit_code == 3, (what, done.exit_code, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "No face was found" in errors[0] and "Traceback" not in done.stderr, what
    # The JSON output still comes, with every photo's problem, before the exit code says nothing was found.
    assert set(json.loads(runs["identify --json"].stdout)["problems"]) == {"sky.png", "wall.jpg"}
    assert set(json.loads(runs["compare --json"].stdout)["problems"]) == {"sky.png", "wall.jpg"}


def test_json_and_csv_together_are_a_usage_error(run_cli, gallery, faceless):
    done = run_cli("identify", gallery, faceless, "--json", "--csv")
    assert done.exit_code == 2 and "cannot be used together" in done.stderr


def test_usage_lines_name_the_arguments(run_cli):
    for command, usage in ((["identify"], "GALLERY PHOTOS..."), (["align"], "RAW OUT"),
                           (["cluster"], "SOURCE OUT"), (["compare"], "IMAGES...")):
        shown = run_cli(*command, "--help", env={"COLUMNS": "200"})
        assert f"[OPTIONS] {usage}" in shown.stdout and "{" not in shown.stdout.splitlines()[1], shown.stdout


# ---------------------------------------------------------------- import cycles

PACKAGES = ("pipeline", "executors", "recognition", "align")


def _imports(path: Path, module: str) -> set[str]:
    """facenet_cli modules that `module` imports, at its top or inside functions, leaving out
    `if TYPE_CHECKING:` blocks (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("facenet_cli"):
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if (ROOT / Path(*f"{base}.{alias.name}".split("."))).with_suffix(
                        ".py").exists() else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("facenet_cli"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def test_no_import_cycle_among_pipeline_executors_recognition_align():
    modules = {}
    for path in sorted((ROOT / "facenet_cli").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path, name) if m in modules} for name, path in modules.items()}
    ours = {name for name in modules if name.split(".")[1:2] and name.split(".")[1] in PACKAGES}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [cycle for cycle in map(cycle_from, sorted(ours)) if cycle]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_consumer_that_stops_early_leaves_no_hung_process():
    """Stopping a local map kills its workers, one of them possibly mid-way through writing a
    result; the pool's manager thread then waited forever for the rest of it and the process
    never exited (a whole test session once hung at exit this way)."""
    import subprocess
    import sys

    code = """
import time
from facenet_cli.executors.local import LocalExecutor

def big(i):
    return b"x" * 50_000_000  # a long write into the result pipe

results = LocalExecutor(workers=2).map(big, range(6), ordered=False)
next(results)
time.sleep(0.05)  # the other worker is writing its result now
results.close()  # the consumer stops early: the workers are killed, one mid-write
print("stopped", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["stopped"], done.stderr[-2000:]
