"""Face verification metrics on pair distances, pure numpy: thresholds, rates, ROC, AUC, EER,
the mean ROC over folds and the cross-validated benchmark.

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

LFW's file formats live in lfw.py, the written report in lfw_report.py, figures in plots.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import UsageError

FAR_TARGET = 1e-3


@dataclass
class PairDistances:
    """Squared L2 distance per pair; +inf / -inf mark matched / mismatched pairs missing an embedding."""

    distance: np.ndarray
    same: np.ndarray
    missing: np.ndarray  # bool per pair
    missing_images: list[str]  # keys of the images without an embedding, sorted
    missing_people: list[str] = field(default_factory=list)  # people of the pairs with no embedding at all


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


@dataclass
class Curve:
    """A published ROC curve, as points in no particular order."""

    label: str
    fpr: np.ndarray
    tpr: np.ndarray

    @property
    def auc(self) -> float:
        return curve_auc(self.fpr, self.tpr)


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
    missing_people: list[str] = field(default_factory=list)
    fold_rocs: list[Roc] = field(repr=False, default_factory=list)
    mean_fpr: np.ndarray = field(repr=False, default=None)
    mean_tpr: np.ndarray = field(repr=False, default=None)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Everything but the curves, as JSON values (what result.json and `--json` hold)."""
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
    missing_people = sorted(set(test.missing_people) | set(train.missing_people if train else []))
    return LfwResult(
        protocol=protocol, folds=results,
        accuracy_mean=float(accuracies.mean()), accuracy_std=float(accuracies.std()),
        auc=curve_auc(mean_fpr, mean_tpr), eer=equal_error_rate(mean_fpr, mean_tpr),
        val_mean=float(vals.mean()), val_std=float(vals.std()),
        far_mean=float(np.mean([r.far for r in results])), far_target=far_target,
        pairs=int(len(test.distance)), missing_pairs=int(np.count_nonzero(test.missing)),
        missing_images=missing_images, missing_people=missing_people, label=label, fold_rocs=rocs, mean_fpr=mean_fpr, mean_tpr=mean_tpr)


