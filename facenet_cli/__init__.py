"""facenet: face recognition in the spirit of FaceNet and OpenFace, on PyTorch.

The public Python API; names are imported on first use so that `import facenet_cli` (and every
CLI call) stays light and torch loads only where a network is needed.

    from facenet_cli import FacePipeline, PipelineOptions, read_rgb
    pipeline = FacePipeline.build(PipelineOptions(model="dlib-resnet.v1"))
    faces = pipeline.faces(read_rgb("photo.jpg"))  # boxes, landmarks, aligned crops
    vectors = pipeline.embed([face.image for face in faces])
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "AlignSpec": "align.specs", "get_spec": "align.specs", "SPECS": "align.specs",
    "read_rgb": "images",
    "FaceDetector": "detect", "FaceBox": "detect", "register_detector": "detect", "create_detector": "detect",
    "detector_names": "detect", "DetectorStage": "detect",
    "FaceAligner": "align.aligner", "LandmarkPredictor": "align.aligner",
    "AlignJob": "align.job", "align_tree": "align.job",
    "ModelRecord": "models.catalogue", "WeightsSource": "models.catalogue", "list_models": "models.catalogue",
    "get_record": "models.catalogue", "CATALOGUE": "models.catalogue", "DEFAULT_MODEL": "models.catalogue",
    "resolve_model": "models.hub", "weights_path": "models.hub", "cache_dir": "models.hub",
    "Embedder": "nets.embedder", "squared_distances": "nets.embedder", "normalise": "nets.embedder",
    "represent_tree": "pipeline.represent", "represent_photos": "pipeline.represent",
    "compare_photos": "recognition.compare",
    "FacePipeline": "pipeline.face_pipeline", "PipelineOptions": "pipeline.face_pipeline", "open_pipeline": "pipeline.face_pipeline",
    "RepsWriter": "formats.reps", "read_reps": "formats.reps", "Reps": "formats.reps",
    "read_pairs": "evaluate.lfw", "evaluate_lfw": "evaluate.report", "evaluate_distances": "evaluate.verification",
    "tsne_map": "evaluate.tsne",
    "Gallery": "store.sqlite", "GalleryStore": "store.protocol", "open_store": "store.registry",
    "register_store": "store.registry", "identify": "recognition.identify", "search_gallery": "recognition.search",
    "search_vectors": "recognition.search", "cluster_faces": "recognition.cluster", "RayExecutor": "executors.ray",
    "Executor": "executors", "get_executor": "executors", "register_executor": "executors",
    "LocalExecutor": "executors.local", "Progress": "progress", "PhotoFaces": "pipeline.face_pipeline",
    "Matcher": "recognition.matcher", "NothingFound": "errors",
    "FacenetError": "errors", "BadImage": "errors", "NoFace": "errors", "UsageError": "errors",
    "DataError": "errors", "UnknownModel": "errors", "ChecksumMismatch": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'facenet_cli' has no attribute {name!r}")
