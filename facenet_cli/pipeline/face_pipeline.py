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

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import NoFace

if TYPE_CHECKING:
    import numpy as np

    from ..align.aligner import AlignedFace, FaceAligner
    from ..align.specs import AlignSpec
    from ..models.catalogue import ModelRecord
    from ..nets.embedder import Embedder
    from ..align.job import AlignJob

# What an option left unset becomes when neither it nor the model record says otherwise.
# `faces="all"`: a pipeline answers "the faces in this photo"; commands that want one face per
# photo (align, represent) say so. `engine="torch"`: the network every batch job uses
# (compare asks for "auto": dlib's own C++ copy for a handful of faces).
LIBRARY_DEFAULTS: dict[str, Any] = {
    "detector": "hog", "upsample": "auto", "faces": "all", "fallback": "none", "fallback_dir": None,
    "device": "auto", "precision": "fp32", "tta": 0, "flip": False, "batch_size": 32, "workers": None,
    "executor": None, "engine": "torch",
}


@dataclass(frozen=True)
class PipelineOptions:
    """Every setting of the face chain; None means "the model's own, else the library's default"."""

    model: str | None = None  # a catalogue name or a checkpoint path; None: catalogue.DEFAULT_MODEL
    detector: str | None = None
    upsample: int | str | None = None
    faces: str | None = None
    fallback: str | None = None
    fallback_dir: str | None = None
    device: str | None = None
    precision: str | None = None
    tta: int | None = None
    flip: bool | None = None
    batch_size: int | None = None
    workers: int | None = None
    executor: str | None = None  # None/"local" (process pool) or "ray"
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
                    **changes}
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

    def align_job(self, **changes) -> "AlignJob":
        """The options as the align job a worker pool runs (align_tree, represent --photos)."""
        from ..align.job import AlignJob

        o = self.options
        settings = {"spec": self.record.align, "detector": o.detector, "upsample": o.upsample, "faces": o.faces,
                    "fallback": o.fallback, "fallback_dir": o.fallback_dir, **changes}
        return AlignJob(**settings)

    # --- the uses ---------------------------------------------------------------------------

    def faces(self, rgb: "np.ndarray") -> list["AlignedFace"]:
        """The faces of one RGB image per the face policy (box, landmarks, aligned crop each);
        [] when none is found. MultipleFaces under `faces="skip-multi"`."""
        try:
            return self.aligner.align(rgb)
        except NoFace:
            return []

    def embed(self, crops: Sequence["np.ndarray"], raw: bool = False) -> "np.ndarray":
        """(N, D) unit-length embeddings of aligned crops (see Embedder.embed)."""
        return self.embedder.embed(crops, raw=raw)

    def photo(self, path: str | Path) -> "list[AlignedFace] | str":
        """The aligned faces of one photo file, or why it has none (one sentence); the options'
        fallback folder stands in for a photo without a face."""
        from ..recognition.compare import align_photo

        return align_photo(path, self.aligner, self.options.fallback_dir)

    def photos(self, paths: Sequence[str | Path], workers: int | None = None) -> "list[list[AlignedFace] | str]":
        """`photo` of every path, in order; several at a time in forked processes that share the
        loaded models (`workers`, default the options', else one per CPU)."""
        from ..recognition.compare import align_photos

        workers = self.options.workers if workers is None else workers
        return align_photos(list(paths), self.aligner, self.options.fallback_dir, workers)


def make_aligner(spec: "AlignSpec", detector: str = "hog", upsample: int | str = 1, faces: str = "largest",
                 fallback: str = "none", **budgets) -> "FaceAligner":
    """A FaceAligner (detector, landmarks, warp) for an alignment spec: the one place one is made.
    Pipelines call it with their model's spec, the align workers with their job's (`facenet
    align --spec` needs no model). `budgets`: FaceAligner's pixel and upsample budgets."""
    from ..align.aligner import FaceAligner

    return FaceAligner(spec, detector, upsample, faces, fallback, **budgets)


def open_pipeline(options: PipelineOptions | None = None, **changes) -> FacePipeline:
    """`FacePipeline.build(options, **changes)`."""
    return FacePipeline.build(options, **changes)


__all__ = ["LIBRARY_DEFAULTS", "FacePipeline", "PipelineOptions", "make_aligner", "model_defaults",
           "open_pipeline", "resolve_record"]

