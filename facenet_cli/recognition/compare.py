"""Compare faces across photos: detect, align with the model's spec, embed, squared distances.

Every photo ends with its faces or a problem (unreadable, no face, several faces under
`skip-multi`); the other photos are still compared.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadImage, MultipleFaces, NoFace

if TYPE_CHECKING:
    from ..align.aligner import FaceAligner
    from ..detect import FaceBox
    from ..nets.embedder import Embedder


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
               fallback_dir: str | Path | None = None,
               workers: int | None = None) -> tuple[list[Face], dict[str, str]]:
    """Every face of every photo, embedded; photos without a face or unreadable go to problems.

    `fallback_dir`: a photo without a face is aligned from the same relative path in this
    folder instead (an absolute path: the same file name), as `facenet align --fallback-dir`.
    `workers`: processes aligning photos at the same time (default: one per CPU, at most one per
    photo); the faces and embeddings are the same whatever the number.
    """
    faces: list[Face] = []
    problems: dict[str, str] = {}
    crops, owners = [], []
    names = display_names(paths)
    for path, name, found in zip(paths, names, align_photos(paths, aligner, fallback_dir, workers)):
        if isinstance(found, str):
            problems[name] = found
            continue
        for index, face in enumerate(found):
            label = name if len(found) == 1 else f"{name}#{index}"
            owners.append((label, str(path), face.box, face.fallback))
            crops.append(face.image)
    vectors = embedder.embed(crops)
    for (label, name, box, fallback), vector in zip(owners, vectors):
        faces.append(Face(label, name, box, vector, fallback))
    return faces, problems


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


def align_photos(paths: list[str | Path], aligner: "FaceAligner", fallback_dir: str | Path | None = None,
                 workers: int | None = None) -> list:
    """`align_photo` of every path, in order. With several photos and CPUs, forked processes
    that share the loaded models align every n-th photo while this one aligns its own share:
    detection is most of `facenet compare`'s time and holds the GIL."""
    import multiprocessing

    workers = min(len(paths), _cpus() if workers is None else workers)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [align_photo(p, aligner, fallback_dir) for p in paths]
    from concurrent.futures import ProcessPoolExecutor

    shares = [list(range(i, len(paths), workers)) for i in range(workers)]
    results: list = [None] * len(paths)
    # fork: the children share the loaded detector and landmark model; they run dlib and
    # OpenCV only (never torch), so forking is safe whatever the parent imported.
    pool = ProcessPoolExecutor(max_workers=workers - 1, mp_context=multiprocessing.get_context("fork"),
                               initializer=_adopt_aligner, initargs=(aligner, os.getpid()))
    try:
        futures = [(share, pool.submit(_align_share, [paths[i] for i in share], fallback_dir))
                   for share in shares[1:]]
        for i in shares[0]:
            results[i] = align_photo(paths[i], aligner, fallback_dir)
        for share, future in futures:
            try:
                found = future.result()
            except Exception:  # a child that died or a result that did not travel: align here
                found = [align_photo(paths[i], aligner, fallback_dir) for i in share]
            for i, one in zip(share, found):
                results[i] = one
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_forked_aligner: "FaceAligner | None" = None  # set in a forked child only


def _adopt_aligner(aligner: "FaceAligner", parent_pid: int) -> None:
    import signal

    from ..align.job import die_with_parent

    global _forked_aligner
    die_with_parent(parent_pid)  # no orphan when the parent is killed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _forked_aligner = aligner


def _align_share(paths: list, fallback_dir) -> list:
    return [align_photo(p, _forked_aligner, fallback_dir) for p in paths]


def _from_fallback_dir(path: Path, fallback_dir: str | Path, aligner: "FaceAligner") -> list:
    """The faces of the same photo under `fallback_dir` (a relative path as given, an absolute one by name)."""
    return aligner.align_stand_in(Path(fallback_dir) / (path.name if path.is_absolute() else path))


def display_names(paths: list[str | Path]) -> list[str]:
    """File names when they tell the photos apart, else the paths as given."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare_photos(paths: list[str | Path], aligner: "FaceAligner", embedder: "Embedder",
                   fallback_dir: str | Path | None = None, workers: int | None = None) -> Comparison:
    """Every face of `paths` against every other: squared L2 distances and same/different verdicts
    at the model's threshold. `workers`: see `find_faces`."""
    from ..nets.embedder import squared_distances

    faces, problems = find_faces(paths, aligner, embedder, fallback_dir, workers)
    matrix = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, embedder.dim), np.float32)
    return Comparison(faces, squared_distances(matrix, matrix), embedder.record.threshold,
                      embedder.record.name, problems)
