"""Training inputs: the aligned tree as labelled images, teacher targets, validation pairs.

Images are decoded once into one uint8 NHWC tensor when that fits under a memory limit
(LFW's View 1 training people at 96 px are about 260 MB), else decoded per batch.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..align.specs import AlignSpec
from ..formats.aligned import AlignedFolder
from ..models.catalogue import ModelRecord
from ..errors import BadImage, DataError, SpecMismatch, UsageError
from ..images import read_rgb
from ..evaluate.lfw import Pairs, path_key, read_pairs
from ..formats.reps import read_reps

DEFAULT_CACHE_LIMIT = 4 << 30  # bytes of decoded images kept in memory


def realign_hint(spec: AlignSpec) -> str:
    return f"realign it with `facenet align RAW OUT --landmarks {spec.name} --size {spec.size}`"


def aligned_folder(aligned: Path, record: ModelRecord, what: str = "aligned folder") -> AlignedFolder:
    """The aligned folder, refused when missing or aligned for another input than the network's."""
    if not aligned.is_dir():
        raise UsageError(f"The {what} {aligned} does not exist; run `facenet align RAW {aligned}` first.")
    folder = AlignedFolder(aligned)
    folder.check_for(record, hint=realign_hint(record.align))
    return folder


class ImageStore:
    """Aligned images by index, as uint8 NHWC tensors; cached in memory when small enough."""

    def __init__(self, root: Path, files: list[str], size: int, cache_limit: int = DEFAULT_CACHE_LIMIT):
        self.root, self.files, self.size = root, files, size
        self.cache: torch.Tensor | None = None
        if len(files) * size * size * 3 <= cache_limit:
            self.cache = torch.from_numpy(np.stack([self._read(i) for i in range(len(files))]))

    def _read(self, index: int) -> np.ndarray:
        path = self.root / self.files[index]
        try:
            image = read_rgb(path)
        except BadImage as exc:
            raise DataError(f"{path} cannot be read ({exc.reason}); delete it or align the folder again.") from None
        if image.shape[:2] != (self.size, self.size):
            raise SpecMismatch(f"{path} is {image.shape[1]}x{image.shape[0]}, not {self.size}x{self.size}; "
                               "align the folder again.")
        return image

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[torch.as_tensor(indices)]
        return torch.from_numpy(np.stack([self._read(int(i)) for i in indices]))


@dataclass
class TrainingSet:
    images: ImageStore
    labels: torch.Tensor  # person index per image
    people: list[str]
    teacher: torch.Tensor | None  # (N, D) unit targets, centred, row i for image i
    skipped_without_teacher: int = 0


def load_training_set(aligned: str | Path, record: ModelRecord, people_per_batch: int, images_per_person: int,
                      teacher_reps: str | Path | None = None,
                      cache_limit: int = DEFAULT_CACHE_LIMIT) -> TrainingSet:
    """The people of ALIGNED with enough images for a P x K batch (with a teacher: every image
    the teacher covers), checked before any decoding.

    With `teacher_reps`, images without a teacher row are left out (they would get no
    distillation target), and the people are counted again after that.
    """
    aligned = Path(aligned)
    by_person = aligned_folder(aligned, record).people()
    teacher_rows: dict[str, np.ndarray] | None = None
    skipped = 0
    if teacher_reps is not None:
        teacher_rows = read_teacher(teacher_reps)
        before = sum(len(v) for v in by_person.values())
        by_person = {p: [f for f in files if path_key(f) in teacher_rows] for p, files in by_person.items()}
        skipped = before - sum(len(v) for v in by_person.values())
        if skipped == before:
            raise DataError(f"The teacher reps in {teacher_reps} cover no training image of {aligned} (rows are matched "
                            "by <person>/<image name>); represent the same people's images with the teacher.")
    if len(by_person) < 2:
        raise UsageError(f"{aligned} holds {len(by_person)} person folder(s); training needs at least 2 people "
                         "(one <person>/ folder of aligned images each).")
    enough = {p: files for p, files in by_person.items() if len(files) >= images_per_person}
    if len(enough) < max(people_per_batch, 2):
        counts = Counter(len(v) for v in by_person.values())
        most = max(counts)
        raise UsageError(
            f"Only {len(enough)} of {len(by_person)} people have {images_per_person} or more images but a batch needs "
            f"{people_per_batch}; lower --people-per-batch to {max(len(enough), 2)} or --images-per-person "
            f"(the largest person has {most}), or add images.")
    # With a teacher every covered image is useful (as a distillation-only extra), so all are
    # kept; the P x K sampler still draws its batches from the people with K or more images.
    kept = by_person if teacher_rows is not None else enough
    people = sorted(p for p, files in kept.items() if files)
    files = [f for p in people for f in kept[p]]
    labels = torch.tensor([i for i, p in enumerate(people) for _ in kept[p]], dtype=torch.int64)
    teacher = None
    if teacher_rows is not None:
        raw = np.stack([teacher_rows[path_key(f)] for f in files])
        teacher = centred_targets(torch.from_numpy(raw))
    return TrainingSet(ImageStore(aligned, files, record.align.size, cache_limit), labels, people, teacher, skipped)


def read_teacher(folder: str | Path) -> dict[str, np.ndarray]:
    """Teacher embeddings keyed by `<person>/<stem>`, so other roots and extensions match."""
    reps = read_reps(folder)
    rows: dict[str, np.ndarray] = {}
    for path, vector in zip(reps.paths, reps.embeddings):
        rows.setdefault(path_key(path), np.asarray(vector, dtype=np.float32))
    return rows


def centred_targets(teacher: torch.Tensor) -> torch.Tensor:
    """Unit teacher vectors minus their mean, normalised again.

    A teacher's embeddings share a large common direction; copying it is easy and teaches
    nothing, and a student that chases it stalls (measured), so the targets are spread first.
    """
    unit = F.normalize(teacher.float(), dim=1)
    return F.normalize(unit - unit.mean(dim=0, keepdim=True), dim=1)


# ---------------------------------------------------------------- validation pairs


@dataclass
class ValidationSet:
    """The images a pairs evaluation needs, and how its accuracy is computed."""

    images: ImageStore
    keys: list[str]  # `<person>/<stem>` per image, row order of `images`
    test: Pairs
    train: Pairs | None  # threshold pairs (View 1 proper); None = cross-validation over `folds`
    folds: np.ndarray
    protocol: str


def view1_folds(pairs: Pairs, n_folds: int = 10) -> np.ndarray:
    """Ten folds over a View 1 file: each holds a tenth of its matched and of its mismatched pairs.

    A small file gets fewer folds, at most as many as it has pairs of the rarer kind (at least 2),
    so that no fold is empty: an empty fold's accuracy is the mean of nothing (nan)."""
    rarer = min(int(np.count_nonzero(pairs.same)), int(np.count_nonzero(~pairs.same)))
    n_folds = max(2, min(n_folds, rarer))
    folds = np.zeros(len(pairs), dtype=np.int64)
    for same in (True, False):
        rows = np.flatnonzero(pairs.same == same)
        folds[rows] = np.arange(len(rows)) * n_folds // max(len(rows), 1)
    return folds


def load_validation_set(pairs_file: str | Path, aligned: str | Path, record: ModelRecord,
                        train_pairs_file: str | Path | None = None) -> ValidationSet:
    aligned = Path(aligned)
    folder = aligned_folder(aligned, record, "validation folder")
    test = read_pairs(pairs_file)
    train = read_pairs(train_pairs_file) if train_pairs_file is not None else None
    wanted = set()
    for p in (test, train) if train is not None else (test,):
        keys1, keys2 = p.keys()
        wanted |= set(keys1) | set(keys2)
    found = {path_key(rel): rel for rel in folder.images()}
    keys = sorted(k for k in wanted if k in found)
    if not keys:
        raise DataError(f"{aligned} holds none of the images of {test.path.name}; align those LFW images into it.")
    pair_people = {name for p in (test, train) if p is not None for name in p.name1 + p.name2}
    # A person aligned without any face found is a wrong answer, like lfw-roc counts it;
    # a person never aligned means the wrong folder, found now rather than after an epoch.
    aligned_people = {k.split("/", 1)[0] for k in keys} | folder.processed_people()
    absent = sorted(pair_people - aligned_people)
    if absent:
        raise DataError(f"{len(absent)} people of the validation pairs (e.g. {absent[0]}) have no image in {aligned}; "
                        "align all the pairs' LFW images into it.")
    if train is not None:
        folds, protocol = np.zeros(len(test), dtype=np.int64), (
            f"threshold from {train.path.name}, accuracy on {test.path.name}")
    elif test.view == 2:
        folds, protocol = test.fold, f"{test.n_folds}-fold cross-validation on {test.path.name}"
    else:
        folds = view1_folds(test)
        protocol = f"{int(folds.max()) + 1}-fold cross-validation on {test.path.name}"
    return ValidationSet(ImageStore(aligned, [found[k] for k in keys], record.align.size), keys, test, train,
                         folds, protocol)
