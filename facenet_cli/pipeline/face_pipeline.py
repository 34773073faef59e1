"""One face pipeline under every command: photo -> faces -> aligned crops -> embeddings.

`PipelineOptions` holds every setting of the chain in one small, frozen, picklable value; a
field left unset (None) takes the model's own setting, then the library's default (as timm's
pretrained config: an option left unset never overrides what the model was calibrated with,
e.g. the flip of its operating points). `FacePipeline.build(options)` resolves `--model` once,
verifies every file the chain will load before anything loads, and builds the aligner and the
embedder the first time they are needed, once; the commands are "pipeline, then their own step".

    from facenet_cli import FacePipeline, PipelineOptions
    pipeline = FacePipeline.build(PipelineOptions(model="dlib-resnet.v1"))
    faces = pipeline.faces(rgb)                       # boxes, landmarks, aligned crops
    vectors = pipeline.embed([f.image for f in faces])

This module imports neither torch, dlib nor numpy until a part of the chain is built.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..detect import DEFAULT_DETECTOR
from ..errors import BadImage, MultipleFaces, NoFace

if TYPE_CHECKING:
    import numpy as np

    from ..align.aligner import AlignedFace, FaceAligner
    from ..align.specs import AlignSpec
    from ..models.catalogue import ModelRecord
    from ..executors import Executor
    from ..nets.embedder import Embedder
    from ..progress import Progress

# What an option left unset becomes when neither it nor the model record says otherwise.
# `faces="all"`: a pipeline answers "the faces in this photo"; commands that want one face per
# photo (align, represent) say so. `engine="torch"`: the network every batch job uses
# (compare asks for "auto": dlib's own C++ copy for a handful of faces). `precision="auto"`: the
# fastest arithmetic that keeps LFW View 2 within 0.1 point of fp32 on this CPU (nets/precision.py;
# fp32 on a GPU), resolved when the embedder is built; `pipeline.embedder.precision` says which.
LIBRARY_DEFAULTS: dict[str, Any] = {
    "detector": DEFAULT_DETECTOR, "upsample": "auto", "min_face": None, "faces": "all", "fallback": "none", "fallback_dir": None,
    "device": "auto", "precision": "auto", "tta": 0, "flip": False, "batch_size": 32, "workers": None,
    "executor": None, "engine": "torch",
}


@dataclass(frozen=True)
class PipelineOptions:
    """Every setting of the face chain; None means "the model's own, else the library's default"."""

    model: str | None = None  # a catalogue name or a checkpoint path; None: catalogue.DEFAULT_MODEL
    detector: str | None = None
    upsample: int | str | None = None
    min_face: int | None = None  # narrowest face to find, photo pixels (None: what the detector reaches)
    faces: str | None = None
    fallback: str | None = None
    fallback_dir: str | None = None
    device: str | None = None
    precision: str | None = None
    tta: int | None = None
    flip: bool | None = None
    batch_size: int | None = None
    workers: int | None = None  # processes that find and align faces (None: the executor's default)
    executor: str | None = None  # an executors/ file: None/"local" (process pool) or "ray"
    engine: str | None = None  # "torch", "dlib" or "auto" (see embed.Embedder)

    def __post_init__(self):
        # CLI enum members and paths become the plain values a pickle or a record carries.
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and hasattr(value, "value"):
                value = value.value
            if isinstance(value, Path):
                value = str(value)
            object.__setattr__(self, item.name, value)
        if self.upsample is not None:
            from ..detect import parse_upsample

            object.__setattr__(self, "upsample", parse_upsample(self.upsample))

    def with_defaults(self, record: "ModelRecord") -> "PipelineOptions":
        """These options with every unset field filled: the model record's setting first (see
        `model_defaults`), then LIBRARY_DEFAULTS. Set fields always win."""
        chosen = {**LIBRARY_DEFAULTS, **model_defaults(record)}
        filled = {name: chosen[name] for name in LIBRARY_DEFAULTS if getattr(self, name) is None}
        if self.model is None:  # the catalogue name it was resolved from (DEFAULT_MODEL when unset)
            filled["model"] = record.name
        return replace(self, **filled)


def model_defaults(record: "ModelRecord") -> dict[str, Any]:
    """The pipeline settings a model record carries: today the flip its operating points were
    calibrated with (`operating_points[use]["flip"]`; the uses agree), so that a gallery or an
    identify run with the defaults meets the thresholds it is judged by."""
    defaults: dict[str, Any] = {}
    for points in (record.operating_points or {}).values():
        if isinstance(points, dict) and isinstance(points.get("flip"), bool):
            defaults["flip"] = points["flip"]
            break
    return defaults


def resolve_record(model: str | None) -> "ModelRecord":
    """The record behind a --model value (catalogue name or checkpoint); the one place the
    commands resolve it."""
    from ..models.catalogue import DEFAULT_MODEL
    from ..models.hub import resolve_model

    return resolve_model(model or DEFAULT_MODEL)


class FacePipeline:
    """A model's face chain: detector and aligner, embedder, each built once, on first use."""

    def __init__(self, options: PipelineOptions, record: "ModelRecord", weights: str | Path | None = None):
        self.options = options  # every field filled (PipelineOptions.with_defaults)
        self.record = record
        self._weights = weights  # a verified weights file already at hand (a Ray actor's driver's)
        self._aligner: "FaceAligner | None" = None
        self._embedder: "Embedder | None" = None
        self._aligners: dict[tuple, "FaceAligner"] = {}

    @classmethod
    def build(cls, options: PipelineOptions | None = None, *, record: "ModelRecord | None" = None,
              verify: bool = True, weights: str | Path | None = None, **changes) -> "FacePipeline":
        """Resolve the model (once: pass `record` when the caller resolved `options.model`
        already, e.g. a gallery's own model) and, with `verify`, check every file the chain
        loads (the network's weights, then the landmark and detector files), so a missing or
        damaged one is one sentence before any work starts. `changes` set options fields."""
        options = replace(options or PipelineOptions(), **changes)
        if record is None:
            record = resolve_record(options.model)
        pipeline = cls(options.with_defaults(record), record, weights)
        if verify:
            pipeline.verify()
        return pipeline

    @classmethod
    def of_embedder(cls, embedder: "Embedder") -> "FacePipeline":
        """The pipeline around an embedder built before (its record and settings), e.g. to send
        it to other processes (a Ray actor pool builds it again from the pipeline's options)."""
        options = PipelineOptions(model=embedder.record.name, device=embedder.requested_device, flip=embedder.flip,
                                  batch_size=embedder.batch_size, precision=embedder.precision, tta=embedder.tta,
                                  engine=embedder.engine)
        pipeline = cls(options.with_defaults(embedder.record), embedder.record)
        pipeline._embedder = embedder
        return pipeline

    def verify(self) -> None:
        """Locate and check every file this pipeline loads (digests are remembered while a file
        is unchanged, so asking again is free)."""
        from ..nets.embedder import resolve_weights
        from ..models.resources import verify_align_models

        resolve_weights(self.record)
        verify_align_models(self.record.align, self.options.detector)

    # --- the parts --------------------------------------------------------------------------

    @property
    def aligner(self) -> "FaceAligner":
        """Detector, landmarks and warp per the options and the model's alignment spec."""
        if self._aligner is None:
            self._aligner = self.aligner_with()
        return self._aligner

    def aligner_with(self, **changes) -> "FaceAligner":
        """An aligner for this model with some detection settings changed (e.g. the server's
        frames: `upsample=0, pixel_budget=...`), built once per distinct setting."""
        o = self.options
        settings = {"detector": o.detector, "upsample": o.upsample, "faces": o.faces, "fallback": o.fallback,
                    "min_face": o.min_face, **changes}
        if "upsample" in changes:
            from ..detect import parse_upsample

            settings["upsample"] = parse_upsample(settings["upsample"])
        key = tuple(sorted(settings.items()))
        if key not in self._aligners:
            self._aligners[key] = make_aligner(self.record.align, **settings)
        return self._aligners[key]

    @property
    def embedder(self) -> "Embedder":
        """The model's network, loaded once (engine "auto": on the first embed call)."""
        if self._embedder is None:
            from ..nets.embedder import Embedder

            o = self.options
            self._embedder = Embedder(self.record, device=str(o.device), flip=bool(o.flip), batch_size=o.batch_size,
                                      precision=o.precision, tta=o.tta, engine=o.engine, weights=self._weights)
        return self._embedder

    def replace(self, **changes) -> "FacePipeline":
        """This pipeline with some options changed (same model record and weights); parts are
        built afresh."""
        return FacePipeline(replace(self.options, **changes), self.record, self._weights)

    def __getstate__(self) -> dict:
        # What travels to another process (a Ray worker): the options, the record and the
        # verified weights file; the loaded parts are built again there, on first use.
        weights = self._weights
        if weights is None and self._embedder is not None:
            found = self._embedder.weights_path()
            weights = str(Path(found).absolute()) if found is not None else None
        return {"options": self.options, "record": self.record, "weights": None if weights is None else str(weights)}

    def __setstate__(self, state: dict) -> None:
        weights = state["weights"]
        # A worker that cannot see the driver's file resolves its own.
        self.__init__(state["options"], state["record"], weights if weights and Path(weights).is_file() else None)

    # --- the uses ---------------------------------------------------------------------------

    def faces(self, rgb: "np.ndarray", **detection) -> list["AlignedFace"]:
        """The faces of one RGB image per the face policy (box, landmarks, aligned crop each);
        [] when none is found. MultipleFaces under `faces="skip-multi"`. `detection`: settings
        changed for this image (see `aligner_with`, e.g. a live frame's `upsample=0`)."""
        aligner = self.aligner_with(**detection) if detection else self.aligner
        try:
            return aligner.align(rgb)
        except NoFace:
            return []

    def embedded_faces(self, rgb: "np.ndarray", **detection) -> tuple[list["AlignedFace"], "np.ndarray"]:
        """`faces(rgb)` and their (N, D) embeddings, as one batch (N = 0: an empty matrix)."""
        found = self.faces(rgb, **detection)
        return found, (self.embed([f.image for f in found]) if found else self._no_vectors())

    def embed(self, crops: Sequence["np.ndarray"], raw: bool = False) -> "np.ndarray":
        """(N, D) unit-length embeddings of aligned crops (see Embedder.embed)."""
        return self.embedder.embed(crops, raw=raw)

    def photo(self, path: str | Path) -> "list[AlignedFace] | str":
        """The aligned faces of one photo file, or why it has none (one sentence); the options'
        fallback folder stands in for a photo without a face."""
        return align_photo(path, self.aligner, self.options.fallback_dir)

    def photos(self, paths: Sequence[str | Path], workers: int | None = None, *, embed: bool = False,
               executor: "Executor | None" = None, progress: "Progress | None" = None) -> list["PhotoFaces"]:
        """`PhotoFaces` of every path, in order (see `iter_photos`)."""
        return list(self.iter_photos(paths, workers, embed=embed, executor=executor, progress=progress))

    def iter_photos(self, paths: Sequence[str | Path], workers: int | None = None, *, embed: bool = False,
                    executor: "Executor | None" = None, progress: "Progress | None" = None) -> Iterator["PhotoFaces"]:
        """The faces of many photo files, in order, each a `PhotoFaces` (with the embeddings of
        its faces when `embed`). Faces are found and aligned by `executor` (executors.Executor;
        default: the options' executor with `workers`, else the options' workers, else one per
        CPU): locally in processes forked from this one, which share the loaded models. The
        crops are embedded here, in batches of the options' batch size, as photos come back.
        `progress` (progress.Progress): started with the number of photos, advanced per photo.
        The answer is the same whatever the executor and the number of workers."""
        from ..executors import get_executor
        from ..progress import progress_or_none

        paths = [str(p) for p in paths]
        progress = progress_or_none(progress)
        progress.start(len(paths))
        owned = executor is None  # an executor given stays the caller's to enter and close
        if owned:
            executor = get_executor(self.options.executor, self.options.workers if workers is None else workers)
        if not paths:
            return
        self.aligner  # loaded here: forked workers share it, and a damaged file is one sentence first
        waiting: list[PhotoFaces] = []
        crops = 0
        # Workers elsewhere (Ray) may have another working directory: absolute paths. Locally the
        # paths stay as given (a relative one finds its stand-in under the fallback folder).
        items = paths if executor.name == "local" else [os.path.abspath(p) for p in paths]
        with executor if owned else nullcontext():
            for index, found in executor.map(self.photo, items):
                one = PhotoFaces(paths[index], [] if isinstance(found, str) else found,
                                 found if isinstance(found, str) else None)
                progress.advance(1)
                if not embed:
                    yield one
                    continue
                waiting.append(one)
                crops += len(one.faces)
                if crops >= self.options.batch_size:
                    yield from self._embedded(waiting)
                    waiting, crops = [], 0
        if waiting:
            yield from self._embedded(waiting)

    def _embedded(self, photos: list["PhotoFaces"]) -> list["PhotoFaces"]:
        """The photos with the embeddings of their faces, computed as one batch."""
        crops = [face.image for photo in photos for face in photo.faces]
        vectors = self.embed(crops) if crops else None
        start = 0
        for photo in photos:
            count = len(photo.faces)
            photo.embeddings = vectors[start:start + count] if vectors is not None else self._no_vectors()
            start += count
        return photos

    def _no_vectors(self) -> "np.ndarray":
        import numpy as np

        return np.zeros((0, self.record.embedding_dim), np.float32)


@dataclass
class PhotoFaces:
    """The faces of one photo file: box, landmarks and aligned crop each (align.aligner.AlignedFace),
    their embeddings when asked for, or why the photo has none (`problem`: one sentence)."""

    path: str
    faces: list["AlignedFace"]
    problem: str | None = None
    embeddings: "np.ndarray | None" = None  # (len(faces), D) unit rows, with embed=True


def align_photo(path: str | Path, aligner: "FaceAligner", fallback_dir: str | Path | None = None):
    """The aligned faces of one photo, or why it has none (a sentence)."""
    try:
        # align_file: align(read_rgb(path)), but a big JPEG's first pass searches a reduced decode.
        return aligner.align_file(path)
    except BadImage as exc:
        return exc.reason
    except MultipleFaces as exc:
        return f"{exc} (--faces skip-multi)"
    except NoFace:
        found = _from_fallback_dir(Path(path), fallback_dir, aligner) if fallback_dir else []
        return found or "no face found"


def _from_fallback_dir(path: Path, fallback_dir: str | Path, aligner: "FaceAligner") -> list:
    """The faces of the same photo under `fallback_dir` (a relative path as given, an absolute one by name)."""
    return aligner.align_stand_in(Path(fallback_dir) / (path.name if path.is_absolute() else path))


def make_aligner(spec: "AlignSpec", detector: str = DEFAULT_DETECTOR, upsample: int | str = 1, faces: str = "largest",
                 fallback: str = "none", **budgets) -> "FaceAligner":
    """A FaceAligner (detector, landmarks, warp) for an alignment spec: the one place one is made.
    Pipelines call it with their model's spec, the align workers with their job's (`facenet
    align --spec` needs no model). `budgets`: FaceAligner's pixel and upsample budgets."""
    from ..align.aligner import FaceAligner

    return FaceAligner(spec, detector, upsample, faces, fallback, **budgets)


def as_pipeline(pipeline: "FacePipeline | PipelineOptions | None" = None, **changes) -> FacePipeline:
    """A use case's pipeline: the one given (built by the caller, maybe shared across calls), or
    one built from options (None: every default); `changes` set options of one being built."""
    if isinstance(pipeline, FacePipeline):
        return pipeline
    return FacePipeline.build(pipeline, **changes)


def open_pipeline(options: PipelineOptions | None = None, **changes) -> FacePipeline:
    """`FacePipeline.build(options, **changes)`."""
    return FacePipeline.build(options, **changes)


__all__ = ["LIBRARY_DEFAULTS", "FacePipeline", "PhotoFaces", "PipelineOptions", "align_photo", "as_pipeline", "make_aligner",
           "model_defaults", "open_pipeline", "resolve_record"]

