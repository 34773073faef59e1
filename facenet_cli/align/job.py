"""Batch alignment of a `<person>/<image>` tree: process pool, resumable, every entry's outcome.

The run, in order:

1. refuse what cannot work: RAW missing, OUT unwritable, OUT and RAW nested in each other,
   OUT aligned with other options or with a damaged `align-spec.json`;
2. remove temporary files that killed runs left in OUT (their names carry the dead pid);
3. list RAW: every entry gets exactly one outcome. Hidden entries, links to folders and special
   files are `skipped` (with why), names with control characters are `bad-name`, inputs whose
   output name is taken are `collision`; files already finished by an earlier run (same input
   size and mtime, outputs present) keep their recorded outcome, marked `resumed`;
4. align the rest in N processes that each load the detector and landmark model once (or as
   tasks on a Ray cluster: `executor=`, see executors/; steps 1-3 and 5 stay here). A failure
   inside one image is that image's `error` outcome; each finished file's outcome is appended to
   the report at once (`aligned.ReportJournal`), so a kill loses nothing finished;
5. rewrite the report sorted. A full disk, a dead worker process or Ctrl-C end the run with one
   sentence after killing the workers, removing their temporary files and writing the report
   of what was done; rerunning the same command resumes.

Every write goes through `atomic.py`: a killed run never leaves half an image under a real name.
"""
from __future__ import annotations

import os
import stat
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .specs import AlignSpec
from ..formats.aligned import (REPORT_FILE, STATUSES, AlignedFolder, FileOutcome, face_outputs,
                      name_problem, output_names, printable_name)
from ..detect import DEFAULT_DETECTOR
from ..atomic import remove_stale_temps, temp_path, write_bytes_atomic
from ..errors import BadImage, DiskFull, FacenetError, MultipleFaces, NoFace, UsageError, write_error
from ..executors import WorkersLost
# die_with_parent: where the align job's tests (and older callers) found it.
from ..executors.local import die_with_parent  # noqa: F401

if TYPE_CHECKING:
    from ..executors import Executor
    from ..pipeline.face_pipeline import FacePipeline
    from ..progress import Progress

STAGES = ("decode", "detect", "landmarks", "warp", "write")
# Outcomes of reading an input that a rerun may reuse while the input is unchanged. `error` is
# always retried (it may have been passing trouble); skipped, bad-name and collision are
# decided afresh from the listing on every run.
REUSABLE = ("aligned", "fallback", "no-face", "multiple-faces", "unreadable")
WROTE_FACES = ("aligned", "fallback")


@dataclass(frozen=True)
class AlignJob:
    """Everything a worker needs to align a file; small and picklable. Values are checked here,
    so a bad one fails before any model loads."""

    spec: AlignSpec
    detector: str = DEFAULT_DETECTOR
    upsample: int | str = "auto"
    min_face: int | None = None  # narrowest face to find, photo pixels (None: what the detector reaches)
    faces: str = "largest"
    fallback: str = "none"  # "none", "center" or "whole"
    fallback_dir: str | None = None  # OpenFace style: the same relative path in a second tree
    # Return each file's crops with its outcome (represent --photos embeds them at once); not a
    # property of the aligned folder, so not in record().
    hand_over_crops: bool = False

    def __post_init__(self):
        from .aligner import FACE_POLICIES, FALLBACKS, check_size
        from ..detect import detector_names, parse_upsample  # noqa: I001 (the engine validates its own values)

        # Enum members (the CLI's) and paths become the plain values that align-spec.json records.
        # Detectors: every registered one (a detector registered at run time included).
        for name, allowed in (("detector", detector_names()), ("faces", FACE_POLICIES), ("fallback", FALLBACKS)):
            value = getattr(self, name)
            value = getattr(value, "value", value)
            if value not in allowed:
                raise UsageError(f"--{name} must be one of {', '.join(allowed)}, not {value!r}.")
            object.__setattr__(self, name, str(value))
        object.__setattr__(self, "upsample", parse_upsample(getattr(self.upsample, "value", self.upsample)))
        if self.fallback_dir is not None:
            object.__setattr__(self, "fallback_dir", str(self.fallback_dir))
        if self.min_face is not None and (isinstance(self.min_face, bool) or not isinstance(self.min_face, int)
                                          or self.min_face < 1):
            raise UsageError(f"--min-face must be a width in pixels of 1 or more, not {self.min_face!r}.")
        check_size(self.spec.size)

    @classmethod
    def of(cls, pipeline: "FacePipeline", **changes) -> "AlignJob":
        """A pipeline's options as the align job a worker pool runs (align_tree, represent
        --photos): its model's alignment spec and its detection settings; `changes` set fields."""
        o = pipeline.options
        settings = {"spec": pipeline.record.align, "detector": o.detector, "upsample": o.upsample, "faces": o.faces,
                    "fallback": o.fallback, "fallback_dir": o.fallback_dir, "min_face": o.min_face, **changes}
        return cls(**settings)

    @property
    def numbered(self) -> bool:
        return self.faces == "all"

    def record(self) -> dict:
        """What goes into OUT/align-spec.json; a rerun must match it, `represent` checks the spec."""
        record = {"spec": self.spec.to_dict(), "detector": self.detector, "upsample": self.upsample,
                  "faces": self.faces, "fallback": self.fallback,
                  "fallback_dir": self.fallback_dir}
        if self.min_face is not None:  # only when set: folders aligned before it existed still match
            record["min_face"] = self.min_face
        return record


@dataclass
class AlignReport:
    outcomes: list[FileOutcome]  # one per entry of RAW, in listing order
    seconds: float
    out_dir: Path
    raw_dir: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        counter = Counter(o.status for o in self.outcomes)
        return {status: counter.get(status, 0) for status in STATUSES}

    @property
    def counts_now(self) -> dict[str, int]:
        counter = Counter(o.status for o in self.outcomes if not o.resumed)
        return {status: counter.get(status, 0) for status in STATUSES}

    @property
    def counts_earlier(self) -> dict[str, int]:
        """Per status, the files finished by earlier runs of the same job (reused, not redone)."""
        counter = Counter(o.status for o in self.outcomes if o.resumed)
        return {status: counter.get(status, 0) for status in STATUSES}

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE

    def stage_ms(self) -> dict[str, float]:
        """Mean milliseconds per processed file for each stage."""
        worked = [o for o in self.outcomes if o.timings]
        return {s: (sum(o.timings.get(s, 0.0) for o in worked) / len(worked) if worked else 0.0)
                for s in STAGES}

    def summary(self) -> dict:
        """The `--json` summary: counts per status (now / in earlier runs), total, seconds, paths."""
        now, earlier = self.counts_now, self.counts_earlier
        return {
            "counts": {s: {"now": now[s], "earlier": earlier[s], "total": now[s] + earlier[s]} for s in STATUSES},
            "now": sum(now.values()), "earlier": sum(earlier.values()), "total": self.total,
            "seconds": round(self.seconds, 3), "raw": str(self.raw_dir) if self.raw_dir else None,
            "out": str(self.out_dir), "report": str(self.report_path),
        }


# ---------------------------------------------------------------- listing RAW

@dataclass
class Listing:
    """RAW's entries: files to read (with their size:mtime signature) and entries settled
    without reading (skipped, bad-name)."""

    files: list[str] = field(default_factory=list)
    signatures: dict[str, str] = field(default_factory=dict)
    settled: list[FileOutcome] = field(default_factory=list)


def scan_tree(raw: Path) -> Listing:
    """Every entry under RAW: regular files and links to files are inputs; hidden entries, links
    to folders (never entered, so a tree cannot loop or leave RAW) and special files are
    skipped with why; names with control characters are refused. Sorted, posix, relative."""
    listing = Listing()

    def settle(rel: str, status: str, detail: str) -> None:
        listing.settled.append(FileOutcome(printable_name(rel), status, detail=detail))

    def walk(folder: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            settle(prefix.rstrip("/") or ".", "skipped", f"folder cannot be listed ({exc.strerror or exc})")
            return
        for entry in entries:
            rel = prefix + entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_link, is_dir = False, False
            if entry.name.startswith("."):
                settle(rel, "skipped", "hidden folder, not entered" if is_dir else "hidden file")
            elif is_dir and is_link:
                settle(rel, "skipped", "link to a folder, not entered")
            elif is_dir:
                walk(Path(entry.path), rel + "/")
            else:
                try:
                    info = entry.stat()  # follows a link to its file
                except OSError:
                    settle(rel, "skipped", "broken link" if is_link else "cannot be read")
                    continue
                if not stat.S_ISREG(info.st_mode):
                    settle(rel, "skipped", "not a regular file (a device, pipe or socket)")
                elif name_problem(rel):
                    settle(rel, "bad-name", name_problem(rel))
                else:
                    listing.files.append(rel)
                    listing.signatures[rel] = f"{info.st_size}:{info.st_mtime_ns}"

    walk(raw, "")
    return listing


def list_inputs(raw: Path) -> list[str]:
    """The files under RAW that align would read, as sorted posix paths relative to it."""
    return sorted(scan_tree(Path(raw)).files)


# ---------------------------------------------------------------- the worker

_ALIGNER = None  # FaceAligner, built once per process and job
_JOB: AlignJob | None = None


def _aligner_for(job: AlignJob):
    global _ALIGNER, _JOB
    if _ALIGNER is None or _JOB != job:
        import cv2

        from ..pipeline.face_pipeline import make_aligner

        cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only contend
        _ALIGNER = make_aligner(job.spec, job.detector, job.upsample, job.faces, job.fallback, min_face=job.min_face)
        _JOB = job
    return _ALIGNER


# Files per task when the job has an in-worker step (align alone sends one file per task).
CHUNK_FILES = 16
_FINISH: Callable[[list[FileOutcome]], None] | None = None  # the job's in-worker step, if any


@dataclass(frozen=True)
class WorkerSetup:
    """What each worker process does before its first task (the executor runs it there): build
    the job's aligner (kept per process) and remember the in-worker step. Picklable when
    `finish` is None (a Ray worker gets it by pickle, a forked one by fork)."""

    job: AlignJob
    finish: Callable[[list[FileOutcome]], None] | None = None

    def __call__(self) -> None:
        global _FINISH
        _aligner_for(self.job)
        _FINISH = self.finish


def align_chunk(tasks: list[tuple[str, str, str, str]]) -> list[FileOutcome]:
    """One task of the job, run by the executor in a worker set up by WorkerSetup: several
    files' outcomes, then the job's in-worker step on them together (e.g. embedding the
    chunk's crops as one batch)."""
    outcomes = [_align_one(task) for task in tasks]
    if _FINISH is not None:
        _FINISH(outcomes)
    return outcomes


def _align_one(task: tuple[str, str, str, str]) -> FileOutcome:
    """One file's outcome; nothing that goes wrong inside one image ends the run, except a full
    disk (every later write would fail too)."""
    rel = task[2]
    try:
        return _align_file(task)
    except DiskFull:
        raise
    except Exception as exc:  # noqa: BLE001 (MemoryError included: that image alone was too much)
        return FileOutcome(rel, "error", detail=short_reason(exc))


def short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    reason = f"{type(exc).__name__}: {text}" if not isinstance(exc, FacenetError) else text
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _align_file(task: tuple[str, str, str, str]) -> FileOutcome:
    import cv2

    from ..images import read_rgb

    raw, out, rel, stem = task
    job = _JOB
    aligner = _aligner_for(job)
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
            box = "the whole image" if job.fallback == "whole" else "the centre box"
            status, detail = "fallback", f"no face found; landmarks on {box}"
    except MultipleFaces as exc:
        return FileOutcome(rel, "multiple-faces", detail=str(exc), timings=timings)
    except NoFace:
        faces = _from_fallback_dir(job, aligner, rel)
        if not faces:
            return FileOutcome(rel, "no-face", detail="no face found", timings=timings)
        status, detail = "fallback", f"no face found; aligned from {job.fallback_dir}"
    t = time.perf_counter()
    names = face_outputs(stem, len(faces), job.numbered)
    written: list[Path] = []
    try:
        for name, face in zip(names, faces):
            ok, png = cv2.imencode(".png", cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise FacenetError("PNG encoding failed")
            write_bytes_atomic(Path(out, name), png.tobytes())
            written.append(Path(out, name))
    except BaseException:
        for path in written:  # no crop of an image whose outcome is not `aligned`
            path.unlink(missing_ok=True)
        raise
    timings["write"] = (time.perf_counter() - t) * 1000.0
    if len(faces) > 1:
        detail = f"{len(faces)} faces"
    return FileOutcome(rel, status, names, detail, timings,
                       crops=[face.image for face in faces] if job.hand_over_crops else [])


def _from_fallback_dir(job: AlignJob, aligner, rel: str):
    return aligner.align_stand_in(Path(job.fallback_dir, rel)) if job.fallback_dir else []


# ---------------------------------------------------------------- the job

def check_folders(raw: Path, out: Path) -> None:
    """Refuse a missing RAW, nested RAW and OUT, and an OUT that cannot be written."""
    if not raw.exists():
        raise UsageError(f"The input folder {raw} does not exist.")
    if not raw.is_dir():
        raise UsageError(f"The input {raw} is not a folder; give a folder of <person>/<image> files.")
    real_raw, real_out = raw.resolve(), out.resolve()
    if real_raw == real_out:
        raise UsageError(f"The output folder {out} is the input folder; choose an output folder outside {raw}.")
    if real_raw in real_out.parents:
        raise UsageError(f"The output folder {out} is inside the input folder {raw}, so a later run would align "
                         "its own crops; choose an output folder outside it.")
    if real_out in real_raw.parents:
        raise UsageError(f"The input folder {raw} is inside the output folder {out}; choose an output folder "
                         "that does not hold the photos.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = temp_path(out / "write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        error = write_error(exc, out)
        if isinstance(error, DiskFull):
            raise error from None
        raise UsageError(f"The output folder {out} cannot be written; choose a folder you can write to.") from None


def reusable(previous: FileOutcome | None, signature: str, stem: str, numbered: bool, out: Path) -> bool:
    """May an earlier run's outcome stand for this input? Only for an unchanged input (size and
    mtime), an outcome of reading it, and, where faces were written, the same output names, all
    present (a crop deleted by hand is made again)."""
    if previous is None or previous.status not in REUSABLE or not previous.source or previous.source != signature:
        return False
    if previous.status not in WROTE_FACES:
        return not previous.outputs
    if not previous.outputs or previous.outputs != face_outputs(stem, len(previous.outputs), numbered):
        return False
    return all((out / name).is_file() for name in previous.outputs)


def align_tree(raw: str | Path, out: str | Path, job: AlignJob, workers: int | None = None,
               on_outcome: Callable[[FileOutcome], None] | None = None, executor: "Executor | None" = None,
               finish_in_worker: Callable[[list[FileOutcome]], None] | None = None,
               progress: "Progress | None" = None) -> AlignReport:
    """Align every image under RAW into OUT (same layout, PNG); resumable; returns the report.

    `progress` (progress.Progress) is started with the number of entries and advanced by each
    entry's outcome as it is settled; `on_outcome(outcome)` gets every outcome too. `executor`
    (executors.Executor) runs the per-file tasks: by default this machine's processes, `workers`
    of them (default 1); a Ray executor runs them on a cluster. Listing, resume, journal and
    report stay here, the same for every executor. Raises UsageError / DataError before any
    work, DiskFull or FacenetError (a worker process died) after writing the report of what was
    done.

    `finish_in_worker(outcomes)`: a step run in the worker processes on each chunk of up to
    CHUNK_FILES outcomes before they come back (represent --photos embeds the chunk's crops
    there); it reaches local workers by fork, so it need not pickle. With it, a kill loses the
    outcomes of the chunks in flight (their files are aligned again on the rerun)."""
    from ..executors import get_executor
    from ..progress import progress_or_none

    progress = progress_or_none(progress)
    if executor is None:
        executor = get_executor("local", 1 if workers is None else workers)
    raw, out = Path(raw), Path(out)
    if job.fallback_dir and not Path(job.fallback_dir).is_dir():
        raise UsageError(f"The fallback folder {job.fallback_dir} does not exist.")
    check_folders(raw, out)
    folder = AlignedFolder(out)
    folder.claim(job.record())  # refuses other options and a damaged align-spec.json
    remove_stale_temps(out)
    started = time.perf_counter()

    listing = scan_tree(raw)
    stems, collisions = output_names(listing.files, job.numbered)
    previous = folder.report()
    settled = list(listing.settled)
    todo: list[tuple[str, str, str, str]] = []
    for rel in listing.files:
        signature = listing.signatures[rel]
        if rel in collisions:
            settled.append(FileOutcome(rel, "collision", detail=f"its output name is taken by {collisions[rel]}",
                                       source=signature))
            continue
        before = previous.get(rel)
        if reusable(before, signature, stems[rel], job.numbered, out):
            settled.append(FileOutcome(rel, before.status, before.outputs, before.detail, resumed=True,
                                       source=signature))
        else:
            todo.append((os.path.abspath(raw), os.path.abspath(out), rel, stems[rel]))
    progress.start(len(settled) + len(todo))

    outcomes: list[FileOutcome] = []

    def finished(outcome: FileOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
        progress.advance(1)

    for outcome in settled:
        finished(outcome)
    journal = folder.journal() if todo else None
    try:
        def record(outcome: FileOutcome) -> None:
            outcome.source = listing.signatures[outcome.input]
            journal.append(outcome)
            finished(outcome)

        _run(todo, job, executor, record, out, finish_in_worker)
    except BaseException as exc:
        if journal:
            journal.close()
        _write_report_of_what_was_done(folder, outcomes)
        if isinstance(exc, WorkersLost):
            raise FacenetError(
                f"A worker process died (killed, or out of memory) {str(exc) + ' ' if str(exc) else ''}"
                f"after {len(outcomes)} of "
                f"{len(settled) + len(todo)} files; what was done is recorded in {folder.report_file}, and "
                "rerunning the same command resumes.") from None
        raise
    if journal:
        journal.close()
    outcomes.sort(key=lambda o: o.input)
    folder.write_report(outcomes)
    return AlignReport(outcomes, time.perf_counter() - started, out, raw)


def _write_report_of_what_was_done(folder: AlignedFolder, outcomes: list[FileOutcome]) -> None:
    """After a failure: the sorted report of every file settled so far. When even that cannot be
    written (the disk is full), the journal appended so far stands in for it."""
    try:
        folder.write_report(sorted(outcomes, key=lambda o: o.input))
    except FacenetError:
        pass


def _run(todo: list, job: AlignJob, executor: "Executor", record: Callable[[FileOutcome], None], out: Path,
         finish: Callable[[list[FileOutcome]], None] | None = None) -> None:
    if not todo:
        return
    # The models load (and their files are verified) here, in the parent: a damaged model file
    # is one sentence before any work, and forked workers share the loaded models. Built anew
    # for every run (the model objects themselves are cached per file and stamp), so an earlier
    # run's aligner in this process never hides a file damaged or replaced since.
    global _ALIGNER
    _ALIGNER = None
    # Workers elsewhere (Ray; maybe another machine) have their own working directory: absolute
    # paths there (locally the folder stays as given, as the report's details name it).
    if job.fallback_dir and executor.name != "local":
        job = replace(job, fallback_dir=os.path.abspath(job.fallback_dir))
    setup = WorkerSetup(job, finish)
    setup()
    # Tasks are chunks of files: one file each for align alone (each outcome recorded as soon as
    # it is done); with an in-worker step several, so that the step gets a batch (the network's),
    # and small jobs still give every worker a few chunks. Outcomes are recorded as each task
    # finishes (not in list order), so a kill loses no finished task's outcomes.
    workers = max(1, executor.workers)
    size = max(1, min(CHUNK_FILES, len(todo) // (workers * 4))) if finish is not None else 1
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    try:
        for _, outcomes in executor.map(align_chunk, chunks, setup=setup, ordered=False):
            for outcome in outcomes:
                record(outcome)
    finally:
        # Temporary files of killed workers (stopped, or a task an executor retried) are stale
        # now (their pids are dead).
        remove_stale_temps(out)
