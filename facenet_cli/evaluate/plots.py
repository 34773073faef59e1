"""Figures (ROC on LFW, t-SNE maps, training curves) written as PNG and PDF, atomically.

This module draws what it is given; it imports none of the LFW modules.

Figures are drawn on matplotlib's Agg canvas directly rather than through pyplot, so the
library never changes the process's matplotlib backend or keeps figures alive.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..atomic import atomic_open

if TYPE_CHECKING:  # imported for annotations only
    from .verification import Curve, LfwResult


def _save(fig: Figure, paths: Sequence[Path]) -> None:
    """Each figure file whole or not at all; the format comes from the file's extension."""
    FigureCanvasAgg(fig)
    for path in paths:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=150, bbox_inches="tight")


def plot_roc(result: "LfwResult", comparisons: Sequence["Curve"], paths: Sequence[Path]) -> None:
    """The mean ROC curve over folds, each fold in grey, and published curves, labelled with AUCs."""
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    for i, roc in enumerate(result.fold_rocs if len(result.fold_rocs) > 1 else []):
        ax.plot(roc.fpr, roc.tpr, color="grey", alpha=0.5, linewidth=0.8,
                label=f"{result.label} folds" if i == 0 else None)
    for curve in comparisons:
        order = np.argsort(curve.fpr, kind="stable")
        ax.plot(curve.fpr[order], curve.tpr[order], linewidth=1.2, label=f"{curve.label} [AUC={curve.auc:.4f}]")
    ax.plot(result.mean_fpr, result.mean_tpr, color="black", linewidth=2.2,
            label=f"{result.label} [AUC={result.auc:.4f}, acc={result.accuracy_mean:.4f}]")
    ax.plot([0, 1], [0, 1], color="k", linestyle="dashed", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(f"LFW ROC ({result.protocol})")
    ax.grid(True, which="major", alpha=0.4)
    ax.minorticks_on()
    ax.grid(True, which="minor", alpha=0.15)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, paths)


def plot_embedding_2d(points: np.ndarray, people: Sequence[str], paths: Sequence[Path], title: str) -> None:
    """A scatter of 2-D points, one colour per person, with a legend of names and image counts."""
    counts = Counter(people)
    names = sorted(counts, key=lambda n: (-counts[n], n))
    fig = Figure(figsize=(8, 6.5))
    ax = fig.add_subplot()
    colour_map = _colours(len(names))
    people = np.asarray(people)
    for i, name in enumerate(names):
        mine = people == name
        ax.scatter(points[mine, 0], points[mine, 1], s=18, color=colour_map[i],
                   label=f"{name.replace('_', ' ')} ({counts[name]})", edgecolors="none", alpha=0.85)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
              ncol=1 if len(names) <= 25 else 2)
    _save(fig, paths)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def plot_training(history: Sequence, paths: Sequence[Path]) -> None:
    """Loss per epoch (total, triplet, distillation) and, on a second axis, validation accuracy,
    like OpenFace's plot-loss.py. `history` holds rows with those attributes (training.EpochRow)."""
    epochs = [row.epoch for row in history]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(epochs, [row.loss for row in history], color="black", marker=".", label="loss")
    if any(row.distill_loss for row in history):
        ax.plot(epochs, [row.triplet_loss for row in history], color="tab:blue", linestyle="--", label="triplet loss")
        ax.plot(epochs, [row.distill_loss for row in history], color="tab:orange", linestyle="--",
                label="distillation loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean loss per batch")
    ax.grid(True, alpha=0.4)
    handles, labels = ax.get_legend_handles_labels()
    validated = [(row.epoch, row.val_accuracy) for row in history if row.val_accuracy is not None]
    if validated:
        acc_ax = ax.twinx()
        acc_ax.plot(*zip(*validated), color="tab:green", marker="o", label="validation accuracy")
        acc_ax.set_ylabel("validation accuracy")
        more_handles, more_labels = acc_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title("facenet train")
    _save(fig, paths)
