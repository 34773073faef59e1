"""LFW's file formats: pairs files, image keys, distances of pairs against a representation
folder, and the published comparison curves.

The metrics live in verification.py (pure numpy), the written benchmark (accuracies.txt,
roc.csv, result.json, figures) in lfw_report.py.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from ..formats.aligned import AlignedFolder
from ..errors import DataError, UsageError
from ..formats.reps import Reps
from .verification import Curve, PairDistances

# ---------------------------------------------------------------- pairs files


@dataclass
class Pairs:
    """Pairs of LFW images; pair i compares `name1[i]`'s image `idx1[i]` with `name2[i]`'s `idx2[i]`."""

    path: Path
    view: int  # 2: folds of matched then mismatched pairs; 1: one block of them
    name1: list[str]
    idx1: np.ndarray
    name2: list[str]
    idx2: np.ndarray
    same: np.ndarray  # bool
    fold: np.ndarray  # int, 0 for View 1

    def __len__(self) -> int:
        return len(self.same)

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1

    def keys(self) -> tuple[list[str], list[str]]:
        return ([image_key(n, i) for n, i in zip(self.name1, self.idx1)],
                [image_key(n, i) for n, i in zip(self.name2, self.idx2)])


def image_key(name: str, number: int) -> str:
    """The key of LFW image number `number` of person `name`: `Name/Name_0001`."""
    return f"{name}/{name}_{int(number):04d}"


def path_key(path: str) -> str:
    """The key of an image path whatever its root or extension: `/x/Name/Name_0001.png` -> `Name/Name_0001`."""
    p = PurePath(path.replace("\\", "/"))
    return f"{p.parent.name}/{p.stem}"


def read_pairs(path) -> Pairs:
    """Read an LFW pairs file: View 2 (`pairs.txt`, first line `10<TAB>300`) or View 1 (first line `1100`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Pairs file {path} does not exist; pass LFW's pairs.txt, pairsDevTrain.txt or pairsDevTest.txt.")
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        lines = [[]]
    while lines and not lines[-1]:
        lines.pop()
    header = lines[0] if lines else []
    if len(header) == 2 and all(f.isdigit() for f in header) and int(header[0]) > 0 and int(header[1]) > 0:
        view, n_folds, per_fold = 2, int(header[0]), int(header[1])
    elif len(header) == 1 and header[0].isdigit() and int(header[0]) > 0:
        view, n_folds, per_fold = 1, 1, int(header[0])
    else:
        raise DataError(f"{path} is not an LFW pairs file: its first line must be `10<TAB>300` (View 2, pairs.txt) "
                        "or one count such as `1100` (View 1, pairsDevTrain.txt).")
    body = lines[1:]
    expected = 2 * n_folds * per_fold
    if len(body) != expected:
        raise DataError(f"{path} promises {expected} pairs in its first line but holds {len(body)}; "
                        "use the original LFW file.")
    name1, idx1, name2, idx2, same, fold = [], [], [], [], [], []
    for i, fields in enumerate(body):
        line_no = i + 2
        k, offset = divmod(i, 2 * per_fold)
        matched = offset < per_fold
        try:
            if matched and len(fields) == 3:
                a, b = int(fields[1]), int(fields[2])
                n1 = n2 = fields[0]
            elif not matched and len(fields) == 4:
                n1, a, n2, b = fields[0], int(fields[1]), fields[2], int(fields[3])
            else:
                raise ValueError
            if a < 1 or b < 1:
                raise ValueError
        except ValueError:
            kind = "`name<TAB>n1<TAB>n2` (matched)" if matched else "`name1<TAB>n1<TAB>name2<TAB>n2` (mismatched)"
            raise DataError(f"{path} line {line_no} should be {kind} with 1-based image numbers but is "
                            f"{' '.join(fields)[:80]!r}; use the original LFW file.") from None
        name1.append(n1)
        idx1.append(a)
        name2.append(n2)
        idx2.append(b)
        same.append(matched)
        fold.append(k)
    return Pairs(path=path, view=view, name1=name1, idx1=np.asarray(idx1), name2=name2, idx2=np.asarray(idx2),
                 same=np.asarray(same, dtype=bool), fold=np.asarray(fold, dtype=np.int64))


# ---------------------------------------------------------------- distances

# When more than this share of the images a pairs file names have no embedding (and the align
# report does not explain them), the representation folder was made from other images.
MOST_ABSENT = 0.5


def processed_people(reps: Reps) -> set[str]:
    """People whose photos went through `facenet align` for these reps (face found or not), per
    the report of the aligned folder that meta.json names; empty when there is none."""
    aligned = reps.meta.get("aligned")
    if not isinstance(aligned, str) or not aligned:
        return set()
    return AlignedFolder(aligned).processed_people()


def pair_distances(pairs: Pairs, reps: Reps, on_missing: str = "wrong",
                   processed: set[str] | None = None) -> PairDistances:
    """Distances for every pair.

    A pair whose image has no embedding (no face found, or a person with no face at all, as in
    a folder OpenFace or another tool wrote) counts as a wrong answer and is listed, never
    dropped; `on_missing="fail"` raises DataError instead. A folder that lacks most of the
    pairs' images (other than those of `processed` people, known from the align report to have
    been aligned without a face) clearly comes from other images and is refused.
    """
    if on_missing not in ("wrong", "fail"):
        raise UsageError(f"on_missing must be 'wrong' or 'fail', not {on_missing!r}.")
    processed = processed or set()
    index: dict[str, int] = {}
    for row, p in enumerate(reps.paths):
        # An image with several faces keeps its first row, the one represent wrote first.
        index.setdefault(path_key(p), row)
    keys1, keys2 = pairs.keys()
    rows1 = np.array([index.get(k, -1) for k in keys1], dtype=np.int64)
    rows2 = np.array([index.get(k, -1) for k in keys2], dtype=np.int64)
    missing = (rows1 < 0) | (rows2 < 0)
    named = set(keys1) | set(keys2)
    missing_images = sorted(k for k in named if k not in index)
    people_with_faces = {key.split("/", 1)[0] for key in index}
    missing_people = sorted((set(pairs.name1) | set(pairs.name2)) - people_with_faces)
    unexplained = [k for k in missing_images if k.split("/", 1)[0] not in processed]
    if len(unexplained) > MOST_ABSENT * len(named):
        raise DataError(f"{len(unexplained)} of the {len(named)} images of {pairs.path.name} have no embedding "
                        f"(e.g. {unexplained[0]}), so these embeddings come from other images; pass the "
                        "representation folder made from the LFW images these pairs name.")
    if missing.any() and on_missing == "fail":
        raise DataError(f"{len(missing_images)} images of {pairs.path.name} (e.g. {missing_images[0]}) have no embedding; "
                        "represent them, or let such pairs count as wrong answers.")
    emb = np.asarray(reps.embeddings, dtype=np.float64)
    diff = emb[np.where(missing, 0, rows1)] - emb[np.where(missing, 0, rows2)]
    distance = np.einsum("ij,ij->i", diff, diff)
    distance[missing & pairs.same] = np.inf
    distance[missing & ~pairs.same] = -np.inf
    return PairDistances(distance=distance, same=pairs.same.copy(), missing=missing, missing_images=missing_images,
                         missing_people=missing_people)


# ---------------------------------------------------------------- published curves


# File name -> legend label; all hold `TPR FPR` rows except OpenBR's DET curve.
COMPARISONS = {
    "kumar_human_crop.txt": "Human, cropped",
    "BaiduIDLFinal.TPFP": "Baidu",
    "deepface_ensemble.txt": "DeepFace ensemble",
    "openbr.v1.1.0.DET.csv": "OpenBR v1.1.0",
    "eigenfaces-original-roc.txt": "Eigenfaces (img-restrict)",
}


def read_comparisons(folder) -> list[Curve]:
    """The published LFW ROC curves found in `folder` (OpenFace's `comparisons/` files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Comparisons folder {folder} does not exist; pass LFW's comparisons/ folder or leave the option out.")
    curves = []
    for name, label in COMPARISONS.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".csv"):
                with open(path, newline="", encoding="utf-8") as fh:
                    rows = list(csv.DictReader(fh))
                far = np.array([float(r["X"]) for r in rows])
                tpr = 1 - np.array([float(r["Y"]) for r in rows])
            else:
                table = np.loadtxt(path, ndmin=2)
                if table.shape[1] != 2:
                    raise ValueError
                tpr, far = table[:, 0], table[:, 1]
            if far.size == 0:
                raise ValueError
        except (ValueError, KeyError, UnicodeDecodeError, csv.Error):
            raise DataError(f"{path} is not a published ROC curve in OpenFace's format; remove it from the comparisons folder.") from None
        curves.append(Curve(label=label, fpr=far, tpr=tpr))
    if not curves:
        raise DataError(f"{folder} holds none of the published curves ({', '.join(COMPARISONS)}); pass LFW's comparisons/ folder.")
    return curves

