"""A 2-D t-SNE map of some people's embeddings, as OpenFace's visualize-classifications did.

The embeddings go through PCA to at most 50 dimensions first (t-SNE's usual preprocessing,
which removes noise and makes it faster), then t-SNE to two. The same seed gives the same map.
"""
from __future__ import annotations

import csv
import difflib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_open
from ..errors import DataError, UsageError
from ..formats.reps import Reps, read_reps

PCA_DIMS = 50
EXACT_BELOW = 500


@dataclass
class TsneResult:
    points: np.ndarray  # N x 2
    people: list[str]
    paths: list[str]
    files: dict[str, str] = field(default_factory=dict)


def select_people(reps: Reps, names: Sequence[str] | None = None, top: int | None = None) -> list[str]:
    """The people to map: `names` as given (spaces may stand for underscores), or the `top`
    people with the most faces (ties by name)."""
    counts = Counter(reps.people)
    if bool(names) == bool(top):
        raise UsageError("Choose the people to map with either names or a top count, not both and not neither.")
    if top:
        if top < 1:
            raise UsageError(f"The top count must be at least 1, not {top}.")
        return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
    chosen = list(dict.fromkeys(n.strip().replace(" ", "_") for n in names if n.strip()))
    unknown = [n for n in chosen if n not in counts]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(counts), n=1)
        suggestion = f" (did you mean {hint[0]}?)" if hint else ""
        raise DataError(f"{len(unknown)} of the names have no faces in the representation folder: "
                        f"{', '.join(unknown[:5])}{suggestion}; names are the image folder names, like George_W_Bush.")
    return chosen


def tsne_map(reps, out_dir, names: Sequence[str] | None = None, top: int | None = None, seed: int = 0,
             perplexity: float = 30.0) -> TsneResult:
    """Map the chosen people's faces to 2-D and write tsne.png, tsne.pdf and tsne.csv into `out_dir`
    (each atomically)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from .plots import plot_embedding_2d

    if not isinstance(reps, Reps):
        reps = read_reps(reps)
    chosen = set(select_people(reps, names, top))
    rows = [i for i, person in enumerate(reps.people) if person in chosen]
    if len(rows) < 4:
        raise DataError(f"The chosen people have {len(rows)} faces in all, too few for t-SNE; choose people with at least 4 faces together.")
    x = np.asarray(reps.embeddings[rows], dtype=np.float64)
    dims = min(PCA_DIMS, x.shape[0], x.shape[1])
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    # t-SNE needs a perplexity below the number of points.
    perplexity = min(perplexity, (len(rows) - 1) / 3)
    # Barnes-Hut pays a fixed cost per iteration that dominates below a few hundred points,
    # where the exact gradient is both quicker and exact.
    method = "exact" if len(rows) <= EXACT_BELOW else "barnes_hut"
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method,
                  random_state=seed).fit_transform(x)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"The output {out} is a file; give a folder for the map.")
    people = [reps.people[i] for i in rows]
    paths = [reps.paths[i] for i in rows]
    files = {"png": out / "tsne.png", "pdf": out / "tsne.pdf", "csv": out / "tsne.csv"}
    plot_embedding_2d(points, people, [files["png"], files["pdf"]],
                      title=f"t-SNE of {len(rows)} faces of {len(chosen)} people")
    with atomic_open(files["csv"], "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["person", "path", "x", "y"])
        for person, path, (px, py) in zip(people, paths, points):
            writer.writerow([person, path, f"{px:.6g}", f"{py:.6g}"])
    return TsneResult(points=points, people=people, paths=paths, files={k: str(v) for k, v in files.items()})
