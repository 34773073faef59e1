"""Compare faces across photos: detect, align with the model's spec, embed, squared distances."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .align import FaceAligner
from .detect import FaceBox
from .embed import Embedder, squared_distances
from .errors import BadImage, NoFace
from .images import read_rgb


@dataclass
class Face:
    label: str  # "img.jpg", or "img.jpg#0", "img.jpg#1" when a photo holds several faces
    path: str
    box: FaceBox
    embedding: np.ndarray


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
            "faces": [{"label": f.label, "path": f.path,
                       "box": [f.box.left, f.box.top, f.box.right, f.box.bottom]} for f in self.faces],
            "pairs": [{"a": a.label, "b": b.label, "squared_l2": round(d, 6), "same_person": same}
                      for a, b, d, same in self.pairs()],
            "problems": self.problems,
        }


def find_faces(paths: list[str | Path], aligner: FaceAligner, embedder: Embedder) -> tuple[list[Face], dict[str, str]]:
    """Every face of every photo, embedded; photos without a face or unreadable go to problems."""
    faces: list[Face] = []
    problems: dict[str, str] = {}
    crops, owners = [], []
    names = display_names(paths)
    for path, name in zip(paths, names):
        try:
            found = aligner.align(read_rgb(path))
        except BadImage as exc:
            problems[name] = exc.reason
            continue
        except NoFace:
            problems[name] = "no face found"
            continue
        for index, face in enumerate(found):
            label = name if len(found) == 1 else f"{name}#{index}"
            owners.append((label, str(path), face.box))
            crops.append(face.image)
    vectors = embedder.embed(crops)
    for (label, name, box), vector in zip(owners, vectors):
        faces.append(Face(label, name, box, vector))
    return faces, problems


def display_names(paths: list[str | Path]) -> list[str]:
    """File names when they tell the photos apart, else the paths as given."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare_photos(paths: list[str | Path], aligner: FaceAligner, embedder: Embedder) -> Comparison:
    faces, problems = find_faces(paths, aligner, embedder)
    matrix = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, embedder.dim), np.float32)
    return Comparison(faces, squared_distances(matrix, matrix), embedder.record.threshold,
                      embedder.record.name, problems)
