"""Compare faces across photos: detect, align with the model's spec, embed, squared distances.

Every photo ends with its faces or a problem (unreadable, no face, several faces under
`skip-multi`); the other photos are still compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import NothingFound

if TYPE_CHECKING:
    from ..detect import FaceBox
    from ..executors import Executor
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..progress import Progress


@dataclass
class Face:
    label: str  # "img.jpg", or "img.jpg#0", "img.jpg#1" when a photo holds several faces
    path: str
    box: "FaceBox"
    embedding: np.ndarray
    fallback: bool = False  # aligned from --fallback (centre box, whole image) or --fallback-dir


@dataclass
class Comparison:
    faces: list[Face]
    distances: np.ndarray  # (F, F) squared L2 on the unit sphere
    threshold: float
    model: str
    problems: dict[str, str] = field(default_factory=dict)  # photo -> why it has no face

    def pairs(self):
        """Every pair of faces with its distance and verdict, in input order."""
        for i in range(len(self.faces)):
            for j in range(i + 1, len(self.faces)):
                d = float(self.distances[i, j])
                yield self.faces[i], self.faces[j], d, d <= self.threshold

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "threshold": self.threshold,
            "faces": [{"label": f.label, "path": f.path, "fallback": f.fallback,
                       "box": [f.box.left, f.box.top, f.box.right, f.box.bottom]} for f in self.faces],
            "pairs": [{"a": a.label, "b": b.label, "squared_l2": round(d, 6), "same_person": same}
                      for a, b, d, same in self.pairs()],
            "problems": self.problems,
        }


def find_faces(paths: list[str | Path], pipeline: "FacePipeline", *, workers: int | None = None,
               executor: "Executor | None" = None,
               progress: "Progress | None" = None) -> tuple[list[Face], dict[str, str]]:
    """Every face of every photo, embedded (FacePipeline.iter_photos); photos without a face or
    unreadable go to problems. The options' fallback folder stands in for a photo without a face
    (as `facenet align --fallback-dir`). `workers`/`executor`: where faces are found (default:
    one process per CPU); the faces and embeddings are the same whatever the number."""
    faces: list[Face] = []
    problems: dict[str, str] = {}
    names = display_names(paths)
    found = pipeline.iter_photos(paths, workers, embed=True, executor=executor, progress=progress)
    for path, name, photo in zip(paths, names, found):
        if photo.problem is not None:
            problems[name] = photo.problem
            continue
        for index, (face, vector) in enumerate(zip(photo.faces, photo.embeddings)):
            label = name if len(photo.faces) == 1 else f"{name}#{index}"
            faces.append(Face(label, str(path), face.box, vector, face.fallback))
    return faces, problems


def display_names(paths: list[str | Path]) -> list[str]:
    """File names when they tell the photos apart, else the paths as given."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare_photos(paths: list[str | Path], pipeline: "FacePipeline | PipelineOptions | None" = None, *,
                   workers: int | None = None, executor: "Executor | None" = None,
                   progress: "Progress | None" = None) -> Comparison:
    """Every face of `paths` against every other: squared L2 distances and same/different verdicts
    at the model's threshold. `pipeline`: a built FacePipeline or the options to build one (every
    face of a photo: faces "all" unless set); `workers`, `executor`: see `find_faces`. Photos
    without a face are in `problems`; `check_faces` says when too few faces were found."""
    from ..nets.embedder import squared_distances
    from ..pipeline.face_pipeline import as_pipeline

    pipeline = as_pipeline(pipeline)
    faces, problems = find_faces(paths, pipeline, workers=workers, executor=executor, progress=progress)
    matrix = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, pipeline.record.embedding_dim),
                                                                            np.float32)
    record = pipeline.record
    return Comparison(faces, squared_distances(matrix, matrix), record.threshold, record.name, problems)


def check_faces(result: Comparison) -> None:
    """NothingFound (exit 3) when no photo held a face, DataError when only one face was found:
    there is no pair to compare."""
    from ..errors import DataError

    if not result.faces:
        raise NothingFound(f"No face was found in any of the {len(result.problems)} photos, so there is nothing to "
                           "compare; give photos with faces (or sharper, larger ones).")
    if len(result.faces) < 2:
        raise DataError("compare needs at least two faces and found 1; give two or more photos with faces.")
