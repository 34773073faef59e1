"""LFW face verification: pairs files, distances, OpenFace's 10-fold protocol, ROC, VAL@FAR, EER.

Conventions, fixed here once:

- The distance between two faces is the squared L2 distance of their embeddings.
- A pair is predicted "same person" when its distance is <= the threshold.
- Candidate thresholds are every midpoint between consecutive distinct distances, plus one
  below the smallest and one above the largest, so every way of splitting the pairs is tried.
- Among candidates with the best accuracy, the chosen threshold is the middle of the first
  (lowest) run of consecutive best candidates: deterministic, and away from the edges.
- A pair whose image has no embedding is always a wrong answer: a matched pair is never
  predicted same and a mismatched one always is (distance +inf and -inf respectively), in
  accuracy, ROC, AUC and VAL alike, and the result counts them.
- VAL@FAR (as in FaceNet's paper): on each fold, the threshold is the largest candidate whose
  false accept rate on the other folds is at most the target; VAL and FAR are then measured
  on the fold.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath

import numpy as np

from .errors import DataError, UsageError
from .reps import Reps, read_reps

FAR_TARGET = 1e-3


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


@dataclass
class PairDistances:
    """Squared L2 distance per pair; +inf / -inf mark matched / mismatched pairs missing an embedding."""

    distance: np.ndarray
    same: np.ndarray
    missing: np.ndarray  # bool per pair
    missing_images: list[str]  # keys of the images without an embedding, sorted


def processed_people(reps: Reps) -> set[str]:
    """People whose images went through `facenet align` for these reps, per its report.

    A person with no embedding at all is then a face that was not found (counted as wrong
    answers), not a sign that the reps come from other images.
    """
    aligned = reps.meta.get("aligned")
    report = Path(aligned) / "align-report.csv" if aligned else None
    if report is None or not report.is_file():
        return set()
    with open(report, newline="", encoding="utf-8") as fh:
        return {PurePath(row["input"]).parent.name for row in csv.DictReader(fh) if row.get("input")}


def pair_distances(pairs: Pairs, reps: Reps, on_missing: str = "wrong",
                   processed: set[str] | None = None) -> PairDistances:
    """Distances for every pair. `on_missing`: "wrong" counts pairs missing an embedding as
    wrong answers, "fail" raises DataError on the first one. `processed`: people known to have
    been aligned (see `processed_people`); any other person without an embedding is an error."""
    if on_missing not in ("wrong", "fail"):
        raise UsageError(f"on_missing must be 'wrong' or 'fail', not {on_missing!r}.")
    index: dict[str, int] = {}
    for row, p in enumerate(reps.paths):
        # An image with several faces keeps its first row, the one represent wrote first.
        index.setdefault(path_key(p), row)
    people = {key.split("/", 1)[0] for key in index}
    absent = sorted({n for n in pairs.name1 + pairs.name2} - people - (processed or set()))
    if absent:
        raise DataError(f"{len(absent)} people of {pairs.path.name} (e.g. {absent[0]}) have no embedding at all; "
                        "pass the representation folder made from the LFW images these pairs come from.")
    keys1, keys2 = pairs.keys()
    rows1 = np.array([index.get(k, -1) for k in keys1])
    rows2 = np.array([index.get(k, -1) for k in keys2])
    missing = (rows1 < 0) | (rows2 < 0)
    missing_images = sorted({k for k, r in zip(keys1 + keys2, np.concatenate([rows1, rows2])) if r < 0})
    if missing.any() and on_missing == "fail":
        raise DataError(f"{len(missing_images)} images of {pairs.path.name} (e.g. {missing_images[0]}) have no embedding; "
                        "represent them, or let such pairs count as wrong answers.")
    emb = np.asarray(reps.embeddings, dtype=np.float64)
    diff = emb[np.where(missing, 0, rows1)] - emb[np.where(missing, 0, rows2)]
    distance = np.einsum("ij,ij->i", diff, diff)
    distance[missing & pairs.same] = np.inf
    distance[missing & ~pairs.same] = -np.inf
    return PairDistances(distance=distance, same=pairs.same.copy(), missing=missing, missing_images=missing_images)


# ---------------------------------------------------------------- thresholds and rates


def candidate_thresholds(distance: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct finite distances, plus one below and one above them all."""
    finite = np.unique(distance[np.isfinite(distance)])
    if finite.size == 0:
        return np.array([0.0])
    return np.concatenate([[finite[0] - 1.0], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1.0]])


def accepted_counts(thresholds, distance: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true accepts, false accepts) at each threshold: pairs with distance <= threshold."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp = np.searchsorted(np.sort(distance[same]), thresholds, side="right")
    fp = np.searchsorted(np.sort(distance[~same]), thresholds, side="right")
    return tp, fp


def accuracy_at(threshold: float, distance: np.ndarray, same: np.ndarray) -> float:
    predict_same = distance <= threshold
    return float(np.mean(predict_same == same))


def best_threshold(distance: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the best accuracy: middle of the first run of best candidates."""
    candidates = candidate_thresholds(distance)
    tp, fp = accepted_counts(candidates, distance, same)
    correct = tp + (np.count_nonzero(~same) - fp)
    best = np.flatnonzero(correct == correct.max())
    # The first run of consecutive best candidates ends where the indices stop counting up.
    breaks = np.flatnonzero(np.diff(best) != 1)
    last = best[breaks[0]] if breaks.size else best[-1]
    return float((candidates[best[0]] + candidates[last]) / 2)


def threshold_at_far(distance: np.ndarray, same: np.ndarray, far_target: float = FAR_TARGET) -> float:
    """The largest candidate threshold whose false accept rate is at most `far_target`
    (the smallest candidate when none is)."""
    candidates = candidate_thresholds(distance)
    _, fp = accepted_counts(candidates, distance, same)
    within = np.flatnonzero(fp / max(np.count_nonzero(~same), 1) <= far_target)
    return float(candidates[within[-1]] if within.size else candidates[0])


def rates_at(threshold: float, distance: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(true accept rate VAL, false accept rate FAR) at one threshold."""
    accept = distance <= threshold
    return (float(np.count_nonzero(accept & same) / max(np.count_nonzero(same), 1)),
            float(np.count_nonzero(accept & ~same) / max(np.count_nonzero(~same), 1)))


@dataclass
class Roc:
    """An ROC curve as a path of increasing thresholds (fpr and tpr never decrease along it)."""

    threshold: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray

    @property
    def auc(self) -> float:
        return curve_auc(self.fpr, self.tpr)


def roc_curve(distance: np.ndarray, same: np.ndarray) -> Roc:
    candidates = candidate_thresholds(distance)
    tp, fp = accepted_counts(candidates, distance, same)
    return Roc(threshold=candidates, tpr=tp / max(np.count_nonzero(same), 1), fpr=fp / max(np.count_nonzero(~same), 1))


def tpr_at(fpr_grid: np.ndarray, fpr: np.ndarray, tpr: np.ndarray, from_left: bool = False) -> np.ndarray:
    """A path's TPR at each FPR in `fpr_grid`, linear between its points and 0 left of its start.

    Where the path rises vertically at an FPR, the top of the rise is returned, or its
    bottom (the limit from the left) when `from_left`.
    """
    fpr_grid = np.asarray(fpr_grid, dtype=np.float64)
    j = np.searchsorted(fpr, fpr_grid, side="left" if from_left else "right") - 1
    out = np.zeros_like(fpr_grid)
    inside = j >= 0
    j_in = j[inside]
    nxt = np.minimum(j_in + 1, len(fpr) - 1)
    span = fpr[nxt] - fpr[j_in]
    frac = np.where(span > 0, (fpr_grid[inside] - fpr[j_in]) / np.where(span > 0, span, 1), 0.0)
    out[inside] = tpr[j_in] + frac * (tpr[nxt] - tpr[j_in])
    return out


def mean_roc(rocs: list[Roc]) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the folds' curves, as a path through every FPR where some fold bends:
    each such FPR appears with the mean from the left and the mean at it, so vertical steps
    stay vertical and the mean curve's AUC is the mean of the folds' AUCs."""
    grid = np.unique(np.concatenate([r.fpr for r in rocs] + [[0.0, 1.0]]))
    left = np.mean([tpr_at(grid, r.fpr, r.tpr, from_left=True) for r in rocs], axis=0)
    right = np.mean([tpr_at(grid, r.fpr, r.tpr) for r in rocs], axis=0)
    fpr = np.repeat(grid, 2)
    tpr = np.column_stack([left, right]).ravel()
    keep = np.concatenate([[True], (np.diff(fpr) != 0) | (np.diff(tpr) != 0)])
    return fpr[keep], tpr[keep]


def curve_auc(fpr, tpr) -> float:
    """Area under a curve given as points, sorted by FPR, closed at FPR 0 (TPR 0) and 1 (last TPR)."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    order = np.lexsort((tpr, fpr))
    fpr, tpr = fpr[order], tpr[order]
    if fpr[0] > 0:
        fpr, tpr = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
    if fpr[-1] < 1:
        fpr, tpr = np.concatenate([fpr, [1.0]]), np.concatenate([tpr, [tpr[-1]]])
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where false accepts equal false rejects (FPR = 1 - TPR), interpolated along the curve."""
    gap = (1 - tpr) - fpr  # decreases along the curve
    after = np.flatnonzero(gap <= 0)
    if after.size == 0:
        return float(fpr[-1])
    i = after[0]
    if i == 0:
        return float(fpr[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


# ---------------------------------------------------------------- published curves


@dataclass
class Curve:
    """A published ROC curve, as points in no particular order."""

    label: str
    fpr: np.ndarray
    tpr: np.ndarray

    @property
    def auc(self) -> float:
        return curve_auc(self.fpr, self.tpr)


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
        except (ValueError, KeyError):
            raise DataError(f"{path} is not a published ROC curve in OpenFace's format; remove it from the comparisons folder.") from None
        curves.append(Curve(label=label, fpr=far, tpr=tpr))
    if not curves:
        raise DataError(f"{folder} holds none of the published curves ({', '.join(COMPARISONS)}); pass LFW's comparisons/ folder.")
    return curves


# ---------------------------------------------------------------- the benchmark


@dataclass
class FoldResult:
    """One fold's test: `threshold` chosen on the training pairs, the rest measured on this fold's `pairs`."""

    fold: int
    threshold: float
    accuracy: float
    auc: float
    val_threshold: float
    val: float
    far: float
    pairs: int
    missing_pairs: int


@dataclass
class LfwResult:
    """The benchmark's numbers (means and numpy's ddof=0 std over folds) and its ROC curves."""

    protocol: str
    folds: list[FoldResult]
    accuracy_mean: float
    accuracy_std: float
    auc: float
    eer: float
    val_mean: float
    val_std: float
    far_mean: float
    far_target: float
    pairs: int
    missing_pairs: int
    missing_images: list[str]
    label: str
    fold_rocs: list[Roc] = field(repr=False, default_factory=list)
    mean_fpr: np.ndarray = field(repr=False, default=None)
    mean_tpr: np.ndarray = field(repr=False, default=None)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the curves, as JSON values."""
        curves = ("fold_rocs", "mean_fpr", "mean_tpr")
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in curves}
        out["folds"] = [asdict(r) for r in self.folds]
        return out


def _evaluate_fold(fold: int, train: tuple, test: tuple, far_target: float) -> tuple[FoldResult, Roc]:
    (d_train, s_train), (d_test, s_test, m_test) = train, test
    threshold = best_threshold(d_train, s_train)
    val_threshold = threshold_at_far(d_train, s_train, far_target)
    val, far = rates_at(val_threshold, d_test, s_test)
    roc = roc_curve(d_test, s_test)
    return FoldResult(fold=fold, threshold=threshold, accuracy=accuracy_at(threshold, d_test, s_test), auc=roc.auc,
                      val_threshold=val_threshold, val=val, far=far, pairs=int(len(d_test)),
                      missing_pairs=int(np.count_nonzero(m_test))), roc


def evaluate_distances(test: PairDistances, fold: np.ndarray, train: PairDistances | None = None,
                       far_target: float = FAR_TARGET, label: str = "this model") -> LfwResult:
    """The benchmark on precomputed distances: cross-validation over `fold` when `train` is
    None (View 2), else a threshold chosen on `train` and measured on `test` (View 1)."""
    results, rocs = [], []
    if train is None:
        n_folds = int(fold.max()) + 1
        if n_folds < 2:
            raise UsageError("Cross-validation needs a pairs file with at least two folds; use View 2's pairs.txt "
                             "or give View 1's training pairs.")
        for k in range(n_folds):
            tr, te = fold != k, fold == k
            r, roc = _evaluate_fold(k, (test.distance[tr], test.same[tr]),
                                    (test.distance[te], test.same[te], test.missing[te]), far_target)
            results.append(r)
            rocs.append(roc)
        protocol = f"View 2, {n_folds}-fold cross-validation"
    else:
        r, roc = _evaluate_fold(0, (train.distance, train.same), (test.distance, test.same, test.missing), far_target)
        results.append(r)
        rocs.append(roc)
        protocol = "View 1, threshold from the training pairs"
    mean_fpr, mean_tpr = mean_roc(rocs)
    accuracies = np.array([r.accuracy for r in results])
    vals = np.array([r.val for r in results])
    missing_images = sorted(set(test.missing_images) | set(train.missing_images if train else []))
    return LfwResult(
        protocol=protocol, folds=results,
        accuracy_mean=float(accuracies.mean()), accuracy_std=float(accuracies.std()),
        auc=curve_auc(mean_fpr, mean_tpr), eer=equal_error_rate(mean_fpr, mean_tpr),
        val_mean=float(vals.mean()), val_std=float(vals.std()),
        far_mean=float(np.mean([r.far for r in results])), far_target=far_target,
        pairs=int(len(test.distance)), missing_pairs=int(np.count_nonzero(test.missing)),
        missing_images=missing_images, label=label, fold_rocs=rocs, mean_fpr=mean_fpr, mean_tpr=mean_tpr)


def model_label(meta: dict) -> str:
    """A short legend label from a reps folder's meta.json: the model's name (+ flip)."""
    model = meta.get("model")
    name = model.get("name", "this model") if isinstance(model, dict) else str(model or "this model")
    return name + (" + flip" if meta.get("flip") else "")


def evaluate_lfw(reps, pairs_file, out_dir, comparisons=None, dev_train=None, on_missing: str = "wrong",
                 far_target: float = FAR_TARGET, label: str | None = None) -> LfwResult:
    """Measure a representation folder (or `Reps`) on LFW and write accuracies.txt, roc.csv,
    roc.png, roc.pdf and result.json into `out_dir`.

    With `pairs.txt` (View 2) it runs OpenFace's 10-fold protocol; with View 1 pass
    `pairs_file=pairsDevTest.txt, dev_train=pairsDevTrain.txt`.
    """
    from .plots import plot_roc  # matplotlib only when writing

    if not isinstance(reps, Reps):
        reps = read_reps(reps)
    pairs = read_pairs(pairs_file)
    processed = processed_people(reps)
    train = None
    if dev_train is not None:
        train_pairs = read_pairs(dev_train)
        train = pair_distances(train_pairs, reps, on_missing, processed)
    elif pairs.view == 1:
        raise UsageError(f"{pairs.path.name} is a View 1 file with no folds; give its training pairs "
                         "(pairsDevTrain.txt) too, or use View 2's pairs.txt.")
    test = pair_distances(pairs, reps, on_missing, processed)
    curves = read_comparisons(comparisons) if comparisons is not None else []
    label = label or model_label(reps.meta)
    result = evaluate_distances(test, pairs.fold, train, far_target, label)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create the output folder {out} ({exc.strerror}); choose a writable --out.") from None
    files = {"accuracies": out / "accuracies.txt", "roc_csv": out / "roc.csv", "roc_png": out / "roc.png",
             "roc_pdf": out / "roc.pdf", "result": out / "result.json"}
    write_accuracies(result, files["accuracies"])
    write_roc_csv(result, files["roc_csv"])
    plot_roc(result, curves, [files["roc_png"], files["roc_pdf"]])
    result.files = {k: str(v) for k, v in files.items()}
    files["result"].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


def write_accuracies(result: LfwResult, path: Path) -> None:
    """OpenFace's accuracies.txt: `fold, threshold, accuracy` rows, then `avg, mean +/- std`."""
    lines = ["fold, threshold, accuracy"]
    lines += [f"{r.fold}, {r.threshold:0.4f}, {r.accuracy:0.4f}" for r in result.folds]
    lines += ["", f"avg, {result.accuracy_mean:0.4f} +/- {result.accuracy_std:0.4f}"]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_roc_csv(result: LfwResult, path: Path) -> None:
    """Rows `curve,threshold,fpr,tpr`: each fold's curve (curve = fold number), then `mean`."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["curve", "threshold", "fpr", "tpr"])
        for r, roc in zip(result.folds, result.fold_rocs):
            for t, f, p in zip(roc.threshold, roc.fpr, roc.tpr):
                out.writerow([r.fold, f"{t:.6g}", f"{f:.6g}", f"{p:.6g}"])
        for f, p in zip(result.mean_fpr, result.mean_tpr):
            out.writerow(["mean", "", f"{f:.6g}", f"{p:.6g}"])
