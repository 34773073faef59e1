"""Compare faces across photos: detect, align with the model's spec, embed, squared distances.

Every photo ends with its faces or a problem (unreadable, no face, several faces under
`skip-multi`); the other photos are still compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadImage, MultipleFaces, NoFace
from .images import read_rgb

if TYPE_CHECKING:
    from .align import FaceAligner
    from .detect import FaceBox
    from .embed import Embedder


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


def find_faces(paths: list[str | Path], aligner: "FaceAligner", embedder: "Embedder",
               fallback_dir: str | Path | None = None) -> tuple[list[Face], dict[str, str]]:
    """Every face of every photo, embedded; photos without a face or unreadable go to problems.

    `fallback_dir`: a photo without a face is aligned from the same relative path in this
    folder instead (an absolute path: the same file name), as `facenet align --fallback-dir`.
    """
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
        except MultipleFaces as exc:
            problems[name] = f"{exc} (--faces skip-multi)"
            continue
        except NoFace:
            found = _from_fallback_dir(Path(path), fallback_dir, aligner) if fallback_dir else []
            if not found:
                problems[name] = "no face found"
                continue
        for index, face in enumerate(found):
            label = name if len(found) == 1 else f"{name}#{index}"
            owners.append((label, str(path), face.box, face.fallback))
            crops.append(face.image)
    vectors = embedder.embed(crops)
    for (label, name, box, fallback), vector in zip(owners, vectors):
        faces.append(Face(label, name, box, vector, fallback))
    return faces, problems


def _from_fallback_dir(path: Path, fallback_dir: str | Path, aligner: "FaceAligner") -> list:
    """The faces of the same photo under `fallback_dir` (a relative path as given, an absolute one by name)."""
    return aligner.align_stand_in(Path(fallback_dir) / (path.name if path.is_absolute() else path))


def display_names(paths: list[str | Path]) -> list[str]:
    """File names when they tell the photos apart, else the paths as given."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare_photos(paths: list[str | Path], aligner: "FaceAligner", embedder: "Embedder",
                   fallback_dir: str | Path | None = None) -> Comparison:
    """Every face of `paths` against every other: squared L2 distances and same/different verdicts
    at the model's threshold."""
    from .embed import squared_distances

    faces, problems = find_faces(paths, aligner, embedder, fallback_dir)
    matrix = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, embedder.dim), np.float32)
    return Comparison(faces, squared_distances(matrix, matrix), embedder.record.threshold,
                      embedder.record.name, problems)
