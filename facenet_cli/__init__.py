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
    "AlignSpec": "align_specs", "get_spec": "align_specs", "SPECS": "align_specs",
    "read_rgb": "images",
    "FaceDetector": "detect", "FaceBox": "detect", "register_detector": "detect", "create_detector": "detect",
    "detector_names": "detect", "DetectorStage": "detect",
    "FaceAligner": "align", "LandmarkPredictor": "align",
    "AlignJob": "jobs", "align_tree": "jobs",
    "ModelRecord": "catalogue", "WeightsSource": "catalogue", "list_models": "catalogue",
    "get_record": "catalogue", "CATALOGUE": "catalogue", "DEFAULT_MODEL": "catalogue",
    "resolve_model": "hub", "weights_path": "hub", "cache_dir": "hub",
    "Embedder": "embed", "squared_distances": "embed", "normalise": "embed",
    "represent_tree": "represent", "represent_photos": "represent",
    "compare_photos": "compare",
    "FacePipeline": "pipeline", "PipelineOptions": "pipeline", "open_pipeline": "pipeline",
    "RepsWriter": "reps", "read_reps": "reps", "Reps": "reps",
    "read_pairs": "lfw", "evaluate_lfw": "lfw_report", "evaluate_distances": "verification",
    "tsne_map": "tsne",
    "Gallery": "gallery", "identify": "identification", "search_gallery": "identification",
    "cluster_faces": "cluster", "RayExecutor": "ray_executor",
    "FacenetError": "errors", "BadImage": "errors", "NoFace": "errors", "UsageError": "errors",
    "DataError": "errors", "UnknownModel": "errors", "ChecksumMismatch": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'facenet_cli' has no attribute {name!r}")
