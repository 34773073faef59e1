"""Embed an aligned tree into a representation folder, streaming, decode overlapped with the net.

Every image the aligned folder lists gets one outcome: `embedded` (one row in the folder),
`unreadable` (corrupt, truncated, not an image), `wrong-size` (a crop of another size than the
model's input, in a folder without align-spec.json) or `bad-name` (a file name with a line break
or another control character, which cannot go into labels.csv). The counts add up to the
images listed.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from ..formats.aligned import AlignedFolder, printable_name
from ..errors import BadImage, DataError, UsageError
from ..images import read_rgb
from ..formats.reps import LABELS, META, REPS_CSV, REPS_NPY, RepsWriter, person_of

if TYPE_CHECKING:
    from ..align.job import AlignJob, AlignReport
    from ..executors import Executor
    from ..nets.embedder import Embedder
    from ..pipeline.face_pipeline import FacePipeline
    from ..progress import Progress

OUTCOMES = ("embedded", "unreadable", "wrong-size", "bad-name")


@dataclass
class RepresentReport:
    out_dir: Path
    count: int  # faces written (one per embedded image)
    seconds: float
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, outcome, reason)
    model: str = ""
    dimension: int = 0

    @property
    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in OUTCOMES}
        counts["embedded"] = self.count
        for _, status, _ in self.problems:
            counts[status] += 1
        return counts

    @property
    def total(self) -> int:
        """Images listed: embedded + unreadable + wrong size + bad names."""
        return sum(self.counts.values())

    @property
    def files(self) -> dict[str, str]:
        return {name: str(self.out_dir / name) for name in (LABELS, REPS_CSV, REPS_NPY, META)}

    def to_dict(self) -> dict:
        return {"out": str(self.out_dir), "model": self.model, "dimension": self.dimension,
                "images": self.total, "faces": self.count, "counts": self.counts,
                "seconds": round(self.seconds, 3), "files": self.files,
                "problems": [{"path": printable_name(p), "outcome": s, "reason": r} for p, s, r in self.problems]}


def decode_batch(aligned: Path, batch: list[str], skip=()) -> list[tuple[str, np.ndarray | BadImage | None]]:
    """Each file's RGB crop, or the BadImage saying why it could not be read (None for the files
    in `skip`: their vectors are known already)."""
    decoded = []
    for rel in batch:
        if rel in skip:
            decoded.append((rel, None))
            continue
        try:
            decoded.append((rel, read_rgb(aligned / rel)))
        except BadImage as exc:
            decoded.append((rel, exc))
    return decoded


def _decoded_batches(aligned: Path, files: list[str], batch_size: int,
                     skip=()) -> Iterator[list[tuple[str, np.ndarray | BadImage | None]]]:
    """Decode the next batch in a thread while the network runs the current one."""
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(decode_batch, aligned, batches[0], skip) if batches else None
        for index in range(len(batches)):
            current = future.result()
            if index + 1 < len(batches):
                future = pool.submit(decode_batch, aligned, batches[index + 1], skip)
            yield current


@dataclass
class EmbeddedBatch:
    """One batch's result: the embedded files with their vectors (same order), and the problems."""

    files: list[str]
    vectors: np.ndarray
    problems: list[tuple[str, str, str]]
    size: int  # images in the batch, embedded or not


def embed_batch(batch: list[tuple[str, np.ndarray | BadImage]], embedder: "Embedder") -> EmbeddedBatch:
    """Sort a decoded batch into problems (unreadable, wrong size) and embed the rest at once;
    the local run and every Ray actor go through here, so both give the same outcomes."""
    size = (embedder.record.align.size, embedder.record.align.size)
    problems, good = [], []
    for rel, image in batch:
        if isinstance(image, BadImage):
            problems.append((rel, "unreadable", image.reason))
        elif image.shape[:2] != size:
            problems.append((rel, "wrong-size", f"{image.shape[1]}x{image.shape[0]}, not {size[1]}x{size[0]}"))
        else:
            good.append((rel, image))
    vectors = embedder.embed([image for _, image in good]) if good else np.zeros((0, embedder.dim), np.float32)
    return EmbeddedBatch([rel for rel, _ in good], vectors, problems, len(batch))


def _local_batches(aligned: Path, files: list[str], embedder: "Embedder",
                   known: dict[str, np.ndarray] | None = None) -> Iterator[EmbeddedBatch]:
    """Batches in the listing's order; files whose vectors are `known` (embedded from the crops
    while aligning) are neither read nor embedded again."""
    known = known or {}
    for batch in _decoded_batches(aligned, files, embedder.batch_size, skip=known):
        fresh = embed_batch([(rel, image) for rel, image in batch if rel not in known], embedder)
        if not known:
            yield fresh
            continue
        vector_of = dict(zip(fresh.files, fresh.vectors))
        order = [rel for rel, _ in batch if rel in known or rel in vector_of]
        vectors = (np.stack([known[rel] if rel in known else vector_of[rel] for rel in order]) if order
                   else np.zeros((0, embedder.dim), np.float32))
        yield EmbeddedBatch(order, vectors, fresh.problems, len(batch))


class CropsEmbedder:
    """Embeds the crops that align workers hand over (`AlignJob(hand_over_crops=True)`) while the
    alignment goes on, in a thread of this process: the network and the align workers keep the
    cores busy together, and no crop is read back from its PNG. Give `take` to `align_tree` as
    `on_outcome`; `vectors` maps each crop's name in the aligned folder to its embedding.

    The network runs on `threads` torch threads meanwhile (default: the cores the align workers
    leave, at least one): a torch team of two spins at every barrier while an align process
    holds the other core. Batches still queued when the alignment ends run on every core."""

    def __init__(self, embedder: "Embedder", workers: int = 1, threads: int | None = None, queued_batches: int = 4):
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}
        self.threads = threads or max(1, (os.cpu_count() or 1) - workers)
        self._pending: list[tuple[str, np.ndarray]] = []
        # Bounded: when the network falls behind, the align loop waits instead of piling up crops.
        self._queue: queue.Queue = queue.Queue(maxsize=queued_batches)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="facenet-crops-embedder", daemon=True)
        self._threads_before: int | None = None
        self._aligned = threading.Event()  # the workers are done: the rest may use every core

    def __enter__(self) -> "CropsEmbedder":
        import torch

        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._thread.start()
        return self

    def take(self, outcome) -> None:
        """An align outcome: queue its crops for the network and drop them from the outcome (the
        report keeps every outcome; the crops would hold memory for the whole run)."""
        for name, crop in zip(outcome.outputs, outcome.crops):
            self._pending.append((name, crop))
        outcome.crops = []
        if len(self._pending) >= self.embedder.batch_size:
            self._send()
        if self._failure is not None:
            raise self._failure

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        self._queue.put(batch)

    def _run(self) -> None:
        import torch

        widened = False
        while (batch := self._queue.get()) is not None:
            if self._failure is not None:
                continue  # drain: the align loop stops at its next outcome
            if self._aligned.is_set() and not widened:
                # Set in this thread: torch's thread count is per calling thread under OpenMP.
                torch.set_num_threads(max(self.threads, os.cpu_count() or 1))
                widened = True
            try:
                vectors = self.embedder.embed([crop for _, crop in batch])
                self.vectors.update((name, vector) for (name, _), vector in zip(batch, vectors))
            except BaseException as exc:  # noqa: BLE001 (re-raised in the align loop / at the end)
                self._failure = exc

    def __exit__(self, exc_type, *exc) -> bool:
        import torch

        self._aligned.set()  # the batches still queued run on every core
        if exc_type is None and self._pending:
            self._send()
        self._queue.put(None)
        self._thread.join()
        torch.set_num_threads(self._threads_before)
        if exc_type is None and self._failure is not None:
            raise self._failure
        return False


class WorkerEmbedding:
    """The in-worker step of represent --photos when every core has an align worker: each
    worker embeds its own chunk of crops (one torch thread; the network was built before the
    fork, so the workers share its weights) and hands back vectors instead of crops. Two
    processes on two cores then do all the work, with no third thread contending for a core
    and no crops crossing between processes."""

    def __init__(self, embedder: "Embedder"):
        self.embedder = embedder
        embedder.network  # built here, before the fork (engine auto would load it per worker)
        self._parent = os.getpid()
        self._threads_set = False

    def __call__(self, outcomes) -> None:
        import torch

        if not self._threads_set and os.getpid() != self._parent:
            # One thread in a worker: OpenMP's pool is not usable in a child forked from a
            # parent that ran it, and the other cores have their own workers. (A one-chunk job
            # runs here in the parent, whose threads stay as they are.)
            torch.set_num_threads(1)
            self._threads_set = True
        crops = [crop for outcome in outcomes for crop in outcome.crops]
        vectors = iter(self.embedder.embed(crops)) if crops else iter(())
        for outcome in outcomes:
            outcome.vectors = [next(vectors) for _ in outcome.crops]
            outcome.crops = []


def embeds_in_workers(embedder: "Embedder", workers: int) -> bool:
    """Whether represent --photos should embed in the align workers: on the CPU, with a
    worker for every core (fewer workers leave cores to a torch team in this process, which
    CropsEmbedder uses), where processes start by fork."""
    from multiprocessing import get_all_start_methods

    return (workers >= 2 and workers >= (os.cpu_count() or 1) and embedder.device.type == "cpu"
            and "fork" in get_all_start_methods())


def represent_photos(raw: str | Path, out: str | Path, embedder: "Embedder | FacePipeline", job: "AlignJob",
                     workers: int | None = None, executor: "Executor | None" = None,
                     on_align_outcome: Callable | None = None,
                     progress: "Progress | None" = None) -> tuple["AlignReport", RepresentReport]:
    """Raw photos to embeddings (`facenet represent RAW OUT --photos`): align RAW into
    OUT/aligned (the same folder, report and resume rules as `facenet align`), then write OUT's
    representation files from every crop there. Locally the crops are embedded while the
    alignment goes on (CropsEmbedder), so the rows equal `represent_tree` of the aligned folder
    within float rounding; on another executor (Ray) the two stages run one after the other.
    With a worker per core (CPU) the workers embed their own crops instead (WorkerEmbedding).
    `workers`: local align processes (default 1) when no `executor` is given. `progress`:
    two stages, "Aligning" (entries) and "Embedding" (images)."""
    from dataclasses import replace

    from ..align.job import align_tree
    from ..executors import get_executor
    from ..progress import progress_or_none

    progress = progress_or_none(progress)
    embedder = _embedder_of(embedder)
    out = Path(out)
    aligned = out / "aligned"
    started = time.perf_counter()
    if executor is None:
        executor = get_executor("local", 1 if workers is None else workers)
    workers = executor.workers if executor.name == "local" else 0

    def outcome_seen(outcome) -> None:
        if on_align_outcome:
            on_align_outcome(outcome)

    progress.stage("Aligning", None)
    if executor.name != "local":
        align_report = align_tree(raw, aligned, job, on_outcome=outcome_seen, executor=executor, progress=progress)
        known = None
    elif embeds_in_workers(embedder, workers):
        known = {}

        def collect(outcome) -> None:
            known.update(zip(outcome.outputs, outcome.vectors))
            outcome.vectors = []
            outcome_seen(outcome)

        align_report = align_tree(raw, aligned, replace(job, hand_over_crops=True), on_outcome=collect,
                                  executor=executor, finish_in_worker=WorkerEmbedding(embedder), progress=progress)
    else:
        with CropsEmbedder(embedder, workers) as crops:
            def take(outcome) -> None:
                crops.take(outcome)
                outcome_seen(outcome)

            align_report = align_tree(raw, aligned, replace(job, hand_over_crops=True), on_outcome=take,
                                      executor=executor, progress=progress)
        known = crops.vectors
    report = represent_tree(aligned, out, embedder, executor=executor if executor.name != "local" else None,
                            known=known, progress=_StageAs("Embedding", progress))
    report.seconds = time.perf_counter() - started  # most embedding happened while aligning
    return align_report, report


class _StageAs:
    """A one-stage job's progress as a named stage of a longer job's (its start opens the stage)."""

    def __init__(self, name: str, progress: "Progress"):
        self.name, self.progress = name, progress

    def start(self, total: int | None) -> None:
        self.progress.stage(self.name, total)

    def advance(self, count: int = 1) -> None:
        self.progress.advance(count)

    def stage(self, name: str, total: int | None) -> None:
        self.progress.stage(name, total)


def _embedder_of(embedder: "Embedder | FacePipeline") -> "Embedder":
    return embedder.embedder if hasattr(embedder, "aligner_with") else embedder


def embed_files(aligned: str, embedder: "Embedder", files: list[str]) -> EmbeddedBatch:
    """Decode and embed one batch of crop files of ALIGNED (the work of a Ray actor)."""
    return embed_batch(decode_batch(Path(aligned), files), embedder)


def represent_tree(aligned: str | Path, out: str | Path, embedder: "Embedder | FacePipeline",
                   executor: "Executor | None" = None, known: dict[str, np.ndarray] | None = None,
                   progress: "Progress | None" = None) -> RepresentReport:
    """Embed every aligned image under ALIGNED into OUT's labels.csv, reps.csv, reps.npy and
    meta.json. Per-image problems are outcomes in the report; the run fails (DataError) only
    when no image at all could be embedded. `embedder`: an Embedder or a FacePipeline.

    `executor`: None (or one without an actor pool) to embed here, or one that offers
    `embed_batches` (executors.EmbedsBatches: Ray's actor pool) to embed each batch of
    `batch_size` files elsewhere. Either way the rows are written here, in the listing's order.
    `known`: vectors already computed from the crops themselves (represent_photos), by name in
    ALIGNED. `progress`: started with the number of images, advanced per batch."""
    from ..executors import EmbedsBatches
    from ..progress import progress_or_none

    progress = progress_or_none(progress)
    pipeline = embedder if hasattr(embedder, "aligner_with") else None
    embedder = _embedder_of(embedder)
    aligned, out = Path(aligned), Path(out)
    if not aligned.is_dir():
        raise UsageError(f"The aligned folder {aligned} does not exist; run `facenet align` first.")
    folder = AlignedFolder(aligned)
    files = folder.images()
    problems: list[tuple[str, str, str]] = [(rel, "bad-name", reason) for rel, reason in folder.bad_names()]
    if not files and not problems:
        raise UsageError(f"{aligned} holds no images; run `facenet align RAW {aligned}` first.")
    record = embedder.record
    folder.check_for(record)
    progress.start(len(files) + len(problems))
    if problems:
        progress.advance(len(problems))
    started = time.perf_counter()
    meta = {"model": record.to_dict(), "aligned": str(aligned.resolve()), "flip": embedder.flip, "normalised": True,
            "precision": embedder.precision, "tta": embedder.tta}
    with RepsWriter(out, max(len(files), 1), record.embedding_dim, meta) as writer:
        if isinstance(executor, EmbedsBatches):
            from functools import partial

            from ..pipeline.face_pipeline import FacePipeline

            size = embedder.batch_size
            # The actors run the precision this process resolved (auto: for its CPU), the one meta.json records.
            batches = executor.embed_batches(partial(embed_files, os.path.abspath(aligned)),
                                             [files[i:i + size] for i in range(0, len(files), size)],
                                             pipeline.replace(precision=embedder.precision) if pipeline
                                             else FacePipeline.of_embedder(embedder))
        else:
            batches = _local_batches(aligned, files, embedder, known)
        for batch in batches:
            problems.extend(batch.problems)
            for rel, vector in zip(batch.files, batch.vectors):
                path = str(aligned / rel)
                writer.add(path, person_of(path), vector)
            progress.advance(batch.size)
        if writer.rows == 0:
            shown = "; ".join(f"{printable_name(p)}: {r}" for p, _, r in problems[:3])
            raise DataError(f"None of the {len(problems)} images in {aligned} could be embedded ({shown}), "
                            f"so nothing was written to {out}.")
    problems.sort()
    return RepresentReport(out, writer.rows, time.perf_counter() - started, problems,
                           model=record.name, dimension=record.embedding_dim)

