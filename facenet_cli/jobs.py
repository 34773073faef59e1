"""Batch alignment of a `<person>/<image>` tree: process pool, resumable, every file's outcome.

Each worker process builds its FaceAligner (detector + landmark model) once. Outputs are written
to a temporary file and renamed, so a killed run leaves only whole images and a rerun skips them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from .align import FaceAligner, center_box
from .align_specs import AlignSpec
from .errors import BadImage, FacenetError, MultipleFaces, NoFace, UsageError
from .images import read_rgb

SPEC_FILE = "align-spec.json"
REPORT_FILE = "align-report.csv"
TEMP_MARK = ".tmp-"

# Every input file ends in exactly one of these.
STATUSES = ("aligned", "fallback", "no-face", "multiple-faces", "unreadable", "done-before")
STAGES = ("decode", "detect", "landmarks", "warp", "write")


@dataclass(frozen=True)
class AlignJob:
    """Everything a worker needs to align a file; small and picklable."""

    spec: AlignSpec
    detector: str = "hog"
    upsample: int | str = "auto"
    faces: str = "largest"
    fallback: str = "none"  # "none" or "center"
    fallback_dir: str | None = None  # OpenFace style: the same relative path in a second tree

    def record(self) -> dict:
        """What goes into OUT/align-spec.json; `represent` checks it against the model."""
        return {"spec": self.spec.to_dict(), "detector": self.detector, "upsample": self.upsample,
                "faces": self.faces, "fallback": self.fallback,
                "fallback_dir": self.fallback_dir}


@dataclass
class FileOutcome:
    input: str  # relative to RAW, posix
    status: str
    outputs: list[str] = field(default_factory=list)  # relative to OUT
    detail: str = ""
    timings: dict = field(default_factory=dict)


@dataclass
class AlignReport:
    outcomes: list[FileOutcome]
    seconds: float
    out_dir: Path

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(o.status for o in self.outcomes)
        return {status: counter.get(status, 0) for status in STATUSES}

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def stage_ms(self) -> dict[str, float]:
        """Mean milliseconds per processed file for each stage."""
        worked = [o for o in self.outcomes if o.timings]
        return {s: (sum(o.timings.get(s, 0.0) for o in worked) / len(worked) if worked else 0.0)
                for s in STAGES}


# ---------------------------------------------------------------- listing and naming

def list_inputs(raw: Path) -> list[str]:
    """Every non-hidden file under RAW, as sorted posix paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(raw):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(raw).as_posix())
    return sorted(found)


def output_names(inputs: list[str]) -> dict[str, str]:
    """Map each input to its PNG output stem; `a.jpg` and `a.png` side by side keep both."""
    stems = Counter(str(Path(p).with_suffix("")) for p in inputs)
    return {p: (str(Path(p).with_suffix("")) if stems[str(Path(p).with_suffix(""))] == 1 else p)
            for p in inputs}


def face_outputs(stem: str, count: int, numbered: bool) -> list[str]:
    if not numbered:
        return [stem + ".png"]
    return [f"{stem}_{i}.png" for i in range(count)]


def finished_marker(stem: str, numbered: bool) -> str:
    # In "all" mode face 0 is written last, so its presence means the whole image is done.
    return f"{stem}_0.png" if numbered else stem + ".png"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FacenetError("PNG encoding failed")
    return buf.tobytes()


# ---------------------------------------------------------------- the worker

_ALIGNER: FaceAligner | None = None
_JOB: AlignJob | None = None


def _init_worker(job: AlignJob) -> None:
    global _ALIGNER, _JOB
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only contend
    _JOB = job
    _ALIGNER = FaceAligner(job.spec, job.detector, job.upsample, job.faces, job.fallback)


def _align_one(task: tuple[str, str, str, str]) -> FileOutcome:
    raw, out, rel, stem = task
    job, aligner = _JOB, _ALIGNER
    assert job is not None and aligner is not None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        rgb = read_rgb(Path(raw, rel))
    except BadImage as exc:
        return FileOutcome(rel, "unreadable", detail=exc.reason)
    timings["decode"] = (time.perf_counter() - start) * 1000.0
    status, detail = "aligned", ""
    try:
        faces = aligner.align(rgb, timings)
        if faces and faces[0].fallback:
            status, detail = "fallback", "no face found; landmarks on the centre box"
    except MultipleFaces as exc:
        return FileOutcome(rel, "multiple-faces", detail=str(exc), timings=timings)
    except NoFace:
        faces = _from_fallback_dir(job, aligner, rel)
        if not faces:
            return FileOutcome(rel, "no-face", detail="no face found", timings=timings)
        status, detail = "fallback", f"no face found; aligned from {job.fallback_dir}"
    t = time.perf_counter()
    numbered = job.faces == "all"
    names = face_outputs(stem, len(faces), numbered)
    for name, face in reversed(list(zip(names, faces))):
        write_atomic(Path(out, name), encode_png(face.image))
    timings["write"] = (time.perf_counter() - t) * 1000.0
    if len(faces) > 1:
        detail = f"{len(faces)} faces"
    return FileOutcome(rel, status, names, detail, timings)


def _from_fallback_dir(job: AlignJob, aligner: FaceAligner, rel: str):
    if not job.fallback_dir:
        return []
    path = Path(job.fallback_dir, rel)
    if not path.exists():
        return []
    try:
        rgb = read_rgb(path)
    except BadImage:
        return []
    try:
        return aligner.align(rgb)
    except (NoFace, MultipleFaces):
        # The second tree's image is a stand-in already; take its centre rather than nothing.
        box = center_box(rgb.shape[0], rgb.shape[1])
        return [aligner.align_box(rgb, box, fallback=True)]


# ---------------------------------------------------------------- the job

def check_folders(raw: Path, out: Path) -> None:
    if not raw.exists():
        raise UsageError(f"The input folder {raw} does not exist.")
    if not raw.is_dir():
        raise UsageError(f"The input {raw} is not a folder; give a folder of <person>/<image> files.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe{TEMP_MARK}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        raise UsageError(f"The output folder {out} cannot be written; choose a folder you can write to.") from None


def claim_output_folder(out: Path, job: AlignJob) -> None:
    """Record the alignment in OUT, or refuse a folder aligned another way (a resumed run
    must not mix faces aligned with different specs or options)."""
    spec_file = out / SPEC_FILE
    if spec_file.exists():
        try:
            previous = json.loads(spec_file.read_text())
            previous_spec = AlignSpec.from_dict(previous["spec"])
        except (ValueError, KeyError, TypeError):
            previous = None
        if previous is not None:
            if previous_spec != job.spec:
                raise UsageError(
                    f"{out} was aligned with {previous_spec.name} at {previous_spec.size} px; "
                    f"use another output folder for {job.spec.name} at {job.spec.size} px.")
            changed = [f"--{k.replace('_', '-')} {previous.get(k)} (now {v})" for k, v in job.record().items()
                       if k != "spec" and previous.get(k) != v]
            if changed:
                raise UsageError(f"{out} was aligned with {', '.join(changed)}; rerun with the same options "
                                 "to resume, or use another output folder.")
    write_atomic(spec_file, (json.dumps(job.record(), indent=2, sort_keys=True) + "\n").encode())


def remove_stale_temp_files(out: Path) -> None:
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            if name.startswith(".") and TEMP_MARK in name:
                Path(dirpath, name).unlink(missing_ok=True)


def align_tree(raw: str | Path, out: str | Path, job: AlignJob, workers: int = 1,
               on_outcome: Callable[[FileOutcome], None] | None = None,
               on_start: Callable[[int], None] | None = None) -> AlignReport:
    """Align every image under RAW into OUT (same layout, PNG); resumable; returns the report."""
    raw, out = Path(raw), Path(out)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}.")
    if job.fallback_dir and not Path(job.fallback_dir).is_dir():
        raise UsageError(f"The fallback folder {job.fallback_dir} does not exist.")
    check_folders(raw, out)
    claim_output_folder(out, job)
    remove_stale_temp_files(out)
    started = time.perf_counter()

    inputs = list_inputs(raw)
    stems = output_names(inputs)
    numbered = job.faces == "all"
    previous = read_report(out / REPORT_FILE)
    if on_start:
        on_start(len(inputs))

    outcomes: list[FileOutcome] = []
    todo: list[tuple[str, str, str, str]] = []
    for rel in inputs:
        stem = stems[rel]
        if (out / finished_marker(stem, numbered)).exists():
            before = previous.get(rel)
            outs = before.outputs if before else [finished_marker(stem, numbered)]
            detail = f"was {before.status}" if before and before.status != "done-before" else (
                before.detail if before else "output exists")
            outcome = FileOutcome(rel, "done-before", outs, detail)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        else:
            todo.append((str(raw), str(out), rel, stem))

    for outcome in _run(todo, job, workers):
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    order = {rel: i for i, rel in enumerate(inputs)}
    outcomes.sort(key=lambda o: order[o.input])
    report = AlignReport(outcomes, time.perf_counter() - started, out)
    write_report(out / REPORT_FILE, outcomes)
    return report


def _run(todo, job: AlignJob, workers: int) -> Iterator[FileOutcome]:
    if not todo:
        return
    if workers == 1:
        _init_worker(job)
        for task in todo:
            yield _align_one(task)
        return
    # The sorted list is cut into small chunks that N processes take in turn: each process
    # loads its models once; chunking keeps the shards balanced when some images are slow.
    chunk = max(1, min(16, len(todo) // (workers * 4) or 1))
    # fork: no re-import of __main__ (works from notebooks and stdin scripts); workers touch
    # neither torch nor OpenMP, so forking a parent that imported them is safe.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method),
                             initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.map(_align_one, todo, chunksize=chunk)


# ---------------------------------------------------------------- the report file

REPORT_COLUMNS = ("input", "status", "outputs", "detail")


def write_report(path: Path, outcomes: Iterable[FileOutcome]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for o in outcomes:
        writer.writerow([o.input, o.status, ";".join(o.outputs), o.detail])
    write_atomic(path, buf.getvalue().encode("utf-8"))


def read_report(path: Path) -> dict[str, FileOutcome]:
    if not path.exists():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return {r["input"]: FileOutcome(r["input"], r["status"], [x for x in r["outputs"].split(";") if x],
                                        r["detail"]) for r in rows}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return {}  # a damaged old report only loses history, never the outputs
