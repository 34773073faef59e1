"""`facenet gallery add` from photos: the use case that enrols faces in a gallery store.

Inputs are photos of one person (`--name NAME IMG...`), a folder per person (`KNOWN/<name>/...`,
listed as `align` lists folders: pipeline/photos.py), or a `represent` output (enrol_reps.py).
Each photo goes through the face pipeline (detect, align, embed; pipeline/face_pipeline.py) and
its face into the store (store/protocol.py) in batches, one transaction each; every input ends in
one outcome (enrol_outcomes.py). The store knows nothing of photos or networks: this module is
where the two meet.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import BadImage, DataError, MultipleFaces, NoFace, UsageError, WriteError
from ..executors import get_executor
from ..formats.aligned import printable_name
from ..models.hub import file_sha256
from ..pipeline.photos import path_problem
from ..store.names import name_problem, nfkc, normalise_name
from ..store.protocol import GalleryStore
from ..store.registry import opened_store
from ..store.types import DEFAULT_TIMEOUT, model_fingerprint
from .enrol_outcomes import AddOutcome, AddReport, SameFaces
from .enrol_reps import add_reps

if TYPE_CHECKING:  # annotations only
    from ..align.aligner import AlignedFace
    from ..executors import Executor
    from ..pipeline.face_pipeline import PipelineOptions
    from ..progress import Progress
    from ..models.catalogue import ModelRecord
    from ..nets.embedder import Embedder
    from ..pipeline.face_pipeline import FacePipeline


def plan_known_folder(folder: Path) -> list[tuple[str, str]]:
    """(person folder name, image path) for `KNOWN/<person>/<image>` (deeper files count for the person too)."""
    return _known_folder(folder)[0]


_LOOSE_PHOTO = "not in a person's folder (KNOWN/<name>/<photo>), so whose it is is not known"


def _known_folder(folder: Path) -> tuple[list[tuple[str, str]], list[AddOutcome]]:
    """The photos of `KNOWN/<person>/...` as (person, path), listed as `align` lists (photos.py:
    links to folders are not entered, so one person's folder cannot lend its photos to another
    or loop), and the outcome of every entry that is not read."""
    from ..pipeline.photos import list_folder

    listing = list_folder(folder)
    items: list[tuple[str, str]] = []
    refused: list[AddOutcome] = []
    for path, rel in listing.photos:
        person, _, rest = rel.partition("/")
        if rest:
            items.append((person, path))
        else:
            refused.append(AddOutcome(path, "skipped", detail=_LOOSE_PHOTO))
    for entry in listing.refused:
        person, _, rest = entry.rel.partition("/")
        refused.append(AddOutcome(entry.path, entry.status, person if rest else "", detail=entry.detail))
    return items, refused


def is_reps_folder(path: Path) -> bool:
    return path.is_dir() and (path / "labels.csv").is_file()


def add_to_gallery(gallery: "GalleryStore | str | os.PathLike", inputs: list[str | os.PathLike], *, name: str | None = None,
                   pipeline: "PipelineOptions | None" = None, progress: "Progress | None" = None,
                   timeout: float = DEFAULT_TIMEOUT, executor: "str | Executor | None" = None,
                   workers: int | None = None) -> AddReport:
    """`facenet gallery add`: enrol photos (`--name NAME IMG...`), a folder per person (`KNOWN/`),
    or a `represent` output (a folder with labels.csv) to `gallery`, a store opened for writing
    or a location (a missing gallery is created).

    `pipeline`: the face-pipeline options; its model and flip left unset are the gallery's own
    (for a new gallery: dlib-resnet.v1 with flip, what the identification operating points were
    calibrated with), its face policy unset is skip-multi. Every input gets one outcome.
    Faces are found and aligned by `executor` (executors/: a name, "local" by default, made with
    `workers` processes, one per CPU by default; or an Executor the caller made and entered),
    embedded and enrolled here; the outcomes are the same whatever the executor.
    """
    from ..pipeline.face_pipeline import PipelineOptions
    from ..progress import progress_or_none

    started = time.perf_counter()
    options = pipeline if pipeline is not None else PipelineOptions()
    faces = options.faces or "skip-multi"
    progress = progress_or_none(progress)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise UsageError("Give a folder with one subfolder per person, a represent output, or --name NAME and photos.")
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist; check the path.")
    reps_inputs = [p for p in paths if is_reps_folder(p)]
    if reps_inputs and (len(reps_inputs) != len(paths) or name is not None):
        raise UsageError("A represent output (a folder with labels.csv) is added on its own, without --name or photos.")
    if faces not in ("skip-multi", "largest", "center", "center-only"):
        raise UsageError("--faces for gallery add must be skip-multi (the default: enrol no face of a photo with "
                         f"several), largest, center or center-only, not {faces}.")
    not_read: list[AddOutcome] = []  # entries of KNOWN/ that are not read (skipped, bad-name...)
    if name is not None:
        person = normalise_name(name)
        items = []
        for path in paths:
            if path.is_dir():
                raise UsageError(f"{path} is a folder; with --name give photos of that person, or drop --name to "
                                 "add a folder with one subfolder per person.")
            items.append((person, str(path)))
    elif not reps_inputs:
        items = []
        for path in paths:
            if not path.is_dir():
                raise UsageError(f"{path} is a photo; say whose it is with --name NAME, or give a folder with one "
                                 "subfolder per person.")
            found, refused = _known_folder(path)
            if not found and all(o.detail == _LOOSE_PHOTO for o in refused):  # e.g. one person's folder given
                raise UsageError(f"{path} has no subfolder of photos; give a folder with one subfolder per person "
                                 "(KNOWN/<name>/<photo>).")
            items += found
            not_read += refused

    with opened_store(gallery, create=True, timeout=timeout) as gallery:
        if gallery.read_only:  # before any photo is read, as a SQLite file refuses at open (a read-only role)
            raise WriteError(f"The gallery {gallery.location} is read-only here (it can be listed, searched and "
                             "exported, not added to); use one you may write.")
        report = AddReport(gallery.location, list(not_read))
        if reps_inputs:
            for folder in reps_inputs:
                report.outcomes += add_reps(gallery, folder, options.model, options.flip, progress.start,
                                            progress.advance)
                report.precision = _reps_precision(folder)
        else:
            report.outcomes += _add_photos(gallery, items, replace(options, faces=faces), progress,
                                           executor=executor, workers=workers, report=report)
        gallery.keep_index_current()
    report.seconds = time.perf_counter() - started
    return report


def resolve_for(gallery: GalleryStore, model: str | None, flip: bool | None) -> tuple["ModelRecord", str, bool]:
    """The model record and flip to embed with: the gallery's, checked against --model/--flip if given."""
    from ..models.catalogue import DEFAULT_MODEL
    from ..pipeline.face_pipeline import resolve_record

    bound = gallery.model
    ref = model or (bound.ref if bound else DEFAULT_MODEL)
    record = resolve_record(ref)
    use_flip = flip if flip is not None else (bound.flip if bound else True)
    gallery.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), use_flip)
    return record, ref, use_flip


def _add_photos(gallery: GalleryStore, items: list[tuple[str, str]], options: "PipelineOptions", progress: "Progress",
                executor=None, workers=None, report: AddReport | None = None) -> list[AddOutcome]:
    """Screen each photo here (names, files, hashes: an image in the gallery already is not read
    again), find and align the faces of the rest through the executor (its workers, in order),
    and embed and enrol them here, in batches, one transaction each (`report.precision`: the
    arithmetic they were embedded in)."""
    record, ref, use_flip = resolve_for(gallery, options.model, options.flip)
    progress.start(len(items))
    from ..pipeline.face_pipeline import FacePipeline

    # verify=False: each part checks its own files as it loads, so adding aligned crops needs no
    # landmark file.
    pipeline = FacePipeline.build(replace(options, model=ref, flip=use_flip), record=record, verify=False)
    engine: dict = {}  # what the batches share once made (the gallery's same-face finder)

    bad_names: dict[str, str] = {}
    results: list[AddOutcome | None] = [None] * len(items)
    waiting: list[tuple[int, _FaceToEnrol]] = []  # aligned, for the network's next batch
    in_flight: list[tuple[list[tuple[int, _FaceToEnrol]], Future]] = []  # one batch at most
    cores = os.cpu_count() or 1
    threads_before = None

    def settle(index: int, outcome: AddOutcome) -> None:
        results[index] = outcome
        progress.advance(1)

    def send_waiting(last: bool = False) -> None:
        """Hand the waiting faces to the network as one batch, in a thread, while the next photos
        are aligned (on the cores the alignment leaves; on all of them for the last)."""
        nonlocal threads_before
        if not waiting:
            return
        embedder = pipeline.embedder
        if threads_before is None:
            import torch

            threads_before = torch.get_num_threads()
        enrol_in_flight()
        batch = list(waiting)
        waiting.clear()
        threads = cores if last else max(1, cores - 1)
        in_flight.append((batch, network.submit(_embed_with_threads, embedder, [f.face.image for _, f in batch],
                                                threads)))

    def enrol_in_flight() -> None:
        """Enrol the batch in flight in one transaction once embedded (here: SQLite connections
        stay in their own thread). A kill loses at most that batch and the one aligning; a rerun
        finds the rest in the gallery already. A face whose embedding equals one in the gallery
        is another file of the same face (an aligned crop of a photo already in): not enrolled."""
        if not in_flight:
            return
        batch, future = in_flight.pop()
        vectors = future.result()
        embedder = pipeline.embedder
        if report is not None:
            report.precision = embedder.precision
        if gallery.model is None:
            gallery.bind(embedder.record, _ref_of(embedder), embedder.flip)
        if "same" not in engine:
            engine["same"] = SameFaces(gallery)
        same: SameFaces = engine["same"]
        enrol: list[tuple[int, _FaceToEnrol]] = []
        rows = []
        for (index, face), vector in zip(batch, vectors):
            twin = same.find(vector)
            if twin is not None:
                settle(index, AddOutcome(face.path, "duplicate", face.person,
                                         detail=f"its embedding equals that of {twin}: the same face (a crop or "
                                                "copy of a photo already in)"))
                continue
            same.note(vector, face.path)
            enrol.append((index, face))
            rows.append((face.person, vector, face.path, face.sha, face.box))
        ids = gallery.add_faces(rows) if rows else []
        for (index, face), face_id in zip(enrol, ids):
            settle(index, face.outcome(face_id))

    jobs: list[tuple[str, str, str]] = []  # (person, path, image SHA-256) to find faces in
    positions: list[int] = []  # each job's input
    for index, (person, path) in enumerate(items):
        screened = _screen_photo(gallery, person, path, bad_names)
        if isinstance(screened, AddOutcome):
            settle(index, screened)
        else:
            jobs.append(screened)
            positions.append(index)
    # The local executor forks its workers at its first item, before the network's thread starts.
    network = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facenet-gallery-network")
    owned = executor is None or isinstance(executor, str)  # a name: made (and closed) here
    runner = get_executor(executor, workers) if owned else executor
    try:
        with runner if owned else nullcontext():
            for position, prepared in runner.map(partial(_align_photo, pipeline), jobs):
                index = positions[position]
                if isinstance(prepared, _FaceToEnrol):
                    pending = {f.sha for _, f in waiting} | {f.sha for batch, _ in in_flight for _, f in batch}
                    if prepared.sha in pending or gallery.has_image(prepared.sha):  # the same image twice
                        prepared = AddOutcome(prepared.path, "already-in", prepared.person,
                                              detail="this image is in the gallery already")
                if isinstance(prepared, AddOutcome):
                    settle(index, prepared)
                    continue
                waiting.append((index, prepared))
                if len(waiting) >= pipeline.options.batch_size:
                    send_waiting()
        send_waiting(last=True)
        enrol_in_flight()
    finally:
        network.shutdown(wait=True, cancel_futures=True)
        if threads_before is not None:
            import torch

            torch.set_num_threads(threads_before)
    return [outcome for outcome in results if outcome is not None]


def _embed_with_threads(embedder: "Embedder", images: list, threads: int) -> np.ndarray:
    import torch

    torch.set_num_threads(threads)  # in this thread: OpenMP thread counts are per calling thread
    return embedder.embed(images)


@dataclass
class _FaceToEnrol:
    """A photo's face, aligned and waiting for the network."""

    path: str
    person: str
    sha: str
    face: "AlignedFace"

    @property
    def box(self) -> tuple[int, int, int, int]:
        b = self.face.box
        return (b.left, b.top, b.right, b.bottom)

    def outcome(self, face_id: int | None) -> AddOutcome:
        if face_id is None:  # another run added the same image meanwhile
            return AddOutcome(self.path, "already-in", self.person, detail="this image is in the gallery already")
        detail = "no face found; the centre of the photo was enrolled (--fallback center)" if self.face.fallback else ""
        return AddOutcome(self.path, "added", self.person, face_id, detail)


def _screen_photo(gallery: GalleryStore, person: str, path: str,
                  bad_names: dict[str, str]) -> "AddOutcome | tuple[str, str, str]":
    """A photo's final outcome when its name, its file or its image (in the gallery already)
    rules it out, else (person as stored, path, image SHA-256)."""
    if person not in bad_names:
        bad_names[person] = name_problem(person) or ""
    if bad_names[person]:
        return AddOutcome(path, "bad-name", person, detail=bad_names[person])
    person = nfkc(person)  # as stored (normalise_name)
    problem = path_problem(path)
    if problem:  # its source would break every CSV it goes into (export, reports)
        return AddOutcome(printable_name(path), "bad-name", person, detail=problem)
    if not Path(path).is_file():  # a pipe or device named like a photo would block the hash forever
        return AddOutcome(path, "unreadable", person, detail="is not a regular file")
    try:
        sha = file_sha256(path)
    except OSError as exc:
        return AddOutcome(path, "unreadable", person, detail=f"cannot be read ({exc.strerror or exc})")
    if gallery.has_image(sha):
        return AddOutcome(path, "already-in", person, detail="this image is in the gallery already")
    return person, path, sha


def _align_photo(pipeline: "FacePipeline", job: tuple[str, str, str]) -> "AddOutcome | _FaceToEnrol":
    """A photo's face, aligned (in an executor's worker), or its outcome when it has none to
    enrol. The aligner is built the first time a photo needs it: an aligned crop needs none."""
    from ..images import read_rgb

    person, path, sha = job
    try:
        rgb = read_rgb(path)
    except BadImage as exc:
        return AddOutcome(path, "unreadable", person, detail=exc.reason)
    crop = _aligned_crop(Path(path), rgb, pipeline.record)
    try:
        found = [crop] if crop is not None else pipeline.aligner.align(rgb)
    except NoFace:
        return AddOutcome(path, "no-face", person, detail="no face found")
    except MultipleFaces as exc:
        return AddOutcome(path, "multiple-faces", person,
                          detail=f"{exc}; none enrolled (use --faces largest or center to enrol one)")
    return _FaceToEnrol(str(path), person, sha, found[0])


def _aligned_crop(path: Path, rgb: np.ndarray, record: "ModelRecord"):
    """The image itself as the face when it is already a crop aligned for this model: it lies (or
    a link to it points) in a `facenet align` folder whose spec is the model's, at the model's size.
    Such crops (`facenet align` output, `facenet cluster --link` folders) are not detected again."""
    from ..align.aligner import AlignedFace
    from ..formats.aligned import SPEC_FILE
    from ..detect import FaceBox

    size = record.align.size
    if rgb.shape[:2] != (size, size):
        return None
    target = path.resolve()
    for root in (target.parent, target.parent.parent):
        if (root / SPEC_FILE).is_file():
            try:
                spec = _folder_spec(str(root), (root / SPEC_FILE).stat().st_mtime_ns)
            except (DataError, OSError):
                return None
            if spec == record.align:
                return AlignedFace(rgb, FaceBox(0, 0, size, size), np.zeros((0, 2), np.float32))
            return None
    return None


@lru_cache(maxsize=64)
def _folder_spec(root: str, spec_mtime_ns: int):
    """An aligned folder's spec, read once per folder (and again only if its file changes)."""
    from ..formats.aligned import AlignedFolder

    return AlignedFolder(root).spec()


def _reps_precision(folder: Path) -> str | None:
    """The precision a represent output's meta.json records (None for one made before it did)."""
    import json

    try:
        found = json.loads((folder / "meta.json").read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _ref_of(embedder: "Embedder") -> str:
    from ..models.catalogue import CATALOGUE

    record = embedder.record
    if record.name in CATALOGUE and model_fingerprint(CATALOGUE[record.name]) == model_fingerprint(record):
        return record.name
    return record.weights.path if record.weights is not None and record.weights.path else record.name
