"""`facenet cluster`: group faces by person without labels and without being told how many
people there are. The engine (average linkage over a kNN graph, memory N*k, never N^2, and why
at its own calibrated threshold) is linkage.py; this module is the use case around it.

`cluster_faces(SOURCE, OUT)` is the whole job: SOURCE is a `represent` output (labels.csv),
an aligned folder (align-spec.json) or a folder of photos (aligned and embedded first, with
the align and represent jobs); OUT receives clusters.csv, cluster-summary.json, a contact
sheet and, with `link`, one folder of links per cluster.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..atomic import atomic_open, temp_path, write_json_atomic, write_text_atomic
from ..errors import DataError, NothingFound, UsageError, write_error

if TYPE_CHECKING:
    from ..executors import Executor
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..progress import Progress

CLUSTERS_FILE = "clusters.csv"
SUMMARY_FILE = "cluster-summary.json"
SHEET_FILE = "contact-sheet.png"
LINKS_DIR = "links"
UNKNOWN = "unknown"
LINK_MODES = ("symlink", "hardlink")

# The engine (kNN graph, average linkage, pairwise F) lives in linkage.py; re-exported here.
from .linkage import (BLOCK_BYTES, DEFAULT_K, KnnGraph, PairwiseScore, average_linkage,  # noqa: E402,F401
                      block_rows_for, cluster_embeddings, f_curve, knn_graph, label_clusters, pairwise_f)


# ---------------------------------------------------------------------- the threshold

def calibrated_threshold(record: dict | None) -> tuple[float, str]:
    """The clustering threshold of the model that made the embeddings, and where it came from.

    The catalogue's current record wins over the copy frozen into a reps folder's meta.json
    (which may predate the calibration); a checkpoint's own record is used as it is.
    """
    from ..models.catalogue import CATALOGUE

    record = record or {}
    name = record.get("name")
    points = (CATALOGUE[name].operating_points if name in CATALOGUE
              else record.get("operating_points") or {}).get("cluster") or {}
    if "threshold" not in points:
        who = f"model {name}" if name else "these embeddings (no model record in meta.json)"
        raise UsageError(f"There is no calibrated clustering threshold for {who}; pass --max-distance "
                         "(a squared L2 distance, e.g. half the model's pair threshold).")
    return float(points["threshold"]), f"{name} operating point ({points.get('chosen_on', 'calibrated')})"


# ---------------------------------------------------------------------- the job

@dataclass
class Face:
    path: str  # the photo (or crop) the face comes from
    face: int  # its index among that photo's faces
    crop: str  # the aligned crop, for thumbnails and links


@dataclass
class ClusterReport:
    out_dir: Path
    source: str  # "reps", "aligned" or "photos"
    threshold: float
    threshold_source: str
    k: int
    faces: list[Face]
    labels: np.ndarray  # cluster number per face, -1 = unknown
    seconds: float
    cluster_seconds: float  # the kNN graph and the linkage only
    files: dict[str, str] = field(default_factory=dict)
    # Photos input: every file's outcome (aligned, no-face, unreadable...); counts add up to the files.
    photo_outcomes: dict[str, int] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    links_missing: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        known = self.labels[self.labels >= 0]
        return np.bincount(known).tolist() if len(known) else []

    @property
    def unknown(self) -> int:
        return int((self.labels < 0).sum())

    def to_dict(self) -> dict:
        return {
            "source": self.source, "faces": len(self.faces), "clusters": len(self.sizes),
            "sizes": self.sizes, "unknown": self.unknown, "threshold": self.threshold,
            "threshold_source": self.threshold_source, "k": self.k,
            "seconds": round(self.seconds, 3), "cluster_seconds": round(self.cluster_seconds, 3),
            "photos": self.photo_outcomes or None, "no_face": self.no_face,
            "links_missing": self.links_missing, "out": str(self.out_dir), "files": self.files,
        }


def cluster_name(label: int) -> str:
    return UNKNOWN if label < 0 else f"cluster-{label + 1:04d}"


def cluster_faces(source: str | os.PathLike, out: str | os.PathLike, *, max_distance: float | None = None,
                  neighbours: int = DEFAULT_K, link: str | None = None, sheet: bool = True,
                  sheet_rows: int = 20, sheet_columns: int = 12,
                  pipeline: "FacePipeline | PipelineOptions | None" = None, executor: "Executor | None" = None,
                  workers: int | None = None, progress: "Progress | None" = None) -> ClusterReport:
    """Group the faces of SOURCE by person into OUT (clusters.csv, summary, sheet, links).

    SOURCE is a `facenet represent` output (labels.csv), an aligned folder (align-spec.json;
    embedded into OUT/reps) or a folder of photos (every face aligned into OUT/aligned, then
    embedded into OUT/reps). `pipeline`: the FacePipeline (or its options) that finds, aligns and
    embeds them (default: the default model, every face, the model's flip, with which its
    clustering operating point was calibrated); `executor`/`workers`: where photos are aligned
    (default: `workers` local processes, default 1). `max_distance` (squared L2) overrides the
    model's calibrated clustering threshold; `neighbours`: edges kept per face in the kNN graph.
    `link` ("symlink" or "hardlink") also makes OUT/links/<cluster>/ folders of the crops.
    `progress`: one stage per step (Aligning, Embedding, Neighbours, Linking, Contact sheet).
    NothingFound when photos hold no face.
    """
    from ..progress import progress_or_none

    progress = progress_or_none(progress)
    k = neighbours
    threshold = max_distance
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    if link is not None and link not in LINK_MODES:
        raise UsageError(f"--link must be one of {', '.join(LINK_MODES)}, not {link!r}.")
    if k < 1:
        raise UsageError(f"--neighbours must be at least 1, not {k}.")
    if sheet_rows < 1 or sheet_columns < 1:
        raise UsageError("--sheet-rows and --sheet-columns must be at least 1.")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise UsageError(f"--max-distance must be a positive squared distance, not {threshold}.")
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder; give a folder of photos or a `facenet represent` output.")
    # os.walk enters no linked folder (the photo source's policy), so a link loop cannot hang this.
    if not any(not name.startswith(".") for _, _, names in os.walk(source) for name in names):
        raise UsageError(f"{source} holds no files; give a folder of photos or a `facenet represent` output.")
    if link is not None and (out / LINKS_DIR).exists():
        raise UsageError(f"{out / LINKS_DIR} already exists (it may hold folders you renamed); move it away "
                         "or choose another OUT.")

    report_extra: dict = {}
    if (source / "labels.csv").is_file():
        kind, found, embeddings, record = "reps", *_faces_from_reps(source)
    else:
        kind = "photos" if not (source / "align-spec.json").is_file() else "aligned"
        found, embeddings, record = _faces_from_images(source, out, kind, pipeline, executor, workers, progress,
                                                       report_extra)
    if len(found) < 2:
        raise DataError(f"{source} holds only {len(found)} face; clustering needs at least two.")
    if threshold is not None:
        chosen, chosen_from = float(threshold), "--max-distance"
    else:
        chosen, chosen_from = calibrated_threshold(record)

    clustering_started = time.perf_counter()
    progress.stage("Neighbours", len(found))
    graph = knn_graph(embeddings, k=k, max_distance=chosen, on_block=progress.advance)
    progress.stage("Linking", None)
    labels = label_clusters(average_linkage(embeddings, graph, chosen))
    cluster_seconds = time.perf_counter() - clustering_started

    report = ClusterReport(out, kind, chosen, chosen_from, k, found, labels, 0.0, cluster_seconds,
                           photo_outcomes=report_extra.get("outcomes", {}),
                           no_face=report_extra.get("no_face", []))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out) from None
    write_clusters_csv(out / CLUSTERS_FILE, found, labels)
    report.files["clusters"] = str(out / CLUSTERS_FILE)
    if sheet:
        progress.stage("Contact sheet", None)
        write_contact_sheet(out / SHEET_FILE, found, labels, rows=sheet_rows, columns=sheet_columns)
        report.files["contact_sheet"] = str(out / SHEET_FILE)
    if link is not None:
        report.links_missing = link_clusters(out / LINKS_DIR, found, labels, mode=link)
        report.files["links"] = str(out / LINKS_DIR)
    report.files["summary"] = str(out / SUMMARY_FILE)
    report.seconds = time.perf_counter() - started
    write_json_atomic(out / SUMMARY_FILE, report.to_dict())
    return report


def _faces_from_reps(folder: Path) -> tuple[list[Face], np.ndarray, dict]:
    from ..formats.reps import read_reps

    reps = read_reps(folder)
    faces = [Face(path, 0, path) for path in reps.paths]
    return faces, reps.embeddings, reps.meta.get("model") or {}


def _faces_from_images(source: Path, out: Path, kind: str, pipeline, executor, workers, progress, extra: dict):
    """Align (photos only) and embed with the library's own jobs; each face keeps its photo."""
    from ..formats.reps import read_reps
    from ..pipeline.face_pipeline import FacePipeline
    from ..pipeline.represent import represent_tree

    if not isinstance(pipeline, FacePipeline):
        # verify=False: the align job checks the detection files, the embedder its weights.
        pipeline = FacePipeline.build(pipeline, verify=False)
    aligned = source
    crops: dict[str, tuple[str, int]] = {}  # aligned crop (relative) -> (photo, face index)
    if kind == "photos":
        from ..align.job import AlignJob, align_tree

        aligned = out / "aligned"
        progress.stage("Aligning", None)
        report = align_tree(source, aligned, AlignJob.of(pipeline), workers, executor=executor, progress=progress)
        extra["outcomes"] = {s: n for s, n in Counter(o.status for o in report.outcomes).items()}
        # Photos are named by their path relative to SOURCE (align's `input`), never by file name.
        extra["no_face"] = [o.input for o in report.outcomes if not o.outputs]
        for outcome in report.outcomes:
            for index, crop in enumerate(outcome.outputs):
                crops[crop] = (outcome.input, index)
        if not crops:
            raise NothingFound(f"No face was found in any of the {report.total} files under {source} "
                               f"(see {aligned / 'align-report.csv'}); nothing to cluster.")
    reps_dir = out / "reps"
    progress.stage("Embedding", None)
    represent_tree(aligned, reps_dir, pipeline, progress=progress)
    reps = read_reps(reps_dir)
    found, rows = [], []
    for row, path in enumerate(reps.paths):
        rel = Path(path).relative_to(aligned).as_posix()
        if kind == "photos":
            if rel not in crops:  # a crop left in OUT/aligned by an earlier run of other photos
                continue
            photo, index = crops[rel]
            found.append(Face(photo, index, path))
        else:
            found.append(Face(rel, 0, path))  # an aligned SOURCE: the crop relative to it
        rows.append(row)
    return found, reps.embeddings[rows], pipeline.record.to_dict()


# ---------------------------------------------------------------------- outputs

def write_clusters_csv(path: Path, faces: Sequence[Face], labels: np.ndarray) -> None:
    """clusters.csv: path, face, cluster (cluster-0001 is the largest; `unknown` for loners), crop."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "face", "cluster", "crop"])
    for face, label in zip(faces, labels):
        writer.writerow([face.path, face.face, cluster_name(int(label)), face.crop])
    write_text_atomic(path, buf.getvalue())


def read_clusters_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a clusters.csv as dicts (path, face, cluster, crop)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"Cannot read {path} ({exc.strerror}).") from None
    if rows and not {"path", "face", "cluster"} <= set(rows[0]):
        raise DataError(f"{path} is not a clusters.csv (path, face, cluster); rerun `facenet cluster`.")
    return rows


def _link_name(face: Face, taken: set[str]) -> str:
    parts = PurePath(face.crop.replace("\\", "/")).parts[-2:]
    base = "__".join(parts)
    stem, suffix = os.path.splitext(base)
    name, n = base, 1
    while name in taken:
        name, n = f"{stem}-{n}{suffix}", n + 1
    taken.add(name)
    return name


def link_clusters(folder: Path, faces: Sequence[Face], labels: np.ndarray, mode: str = "symlink") -> list[str]:
    """OUT/links/cluster-0001/..., unknown/: a link per face crop. Returns crops not found.

    Built in a temporary folder and renamed into place, so a killed run leaves no half set.
    Rename a folder to the person's name and `facenet gallery add GALLERY OUT/links/` enrols it.
    """
    tmp = temp_path(folder)
    missing: list[str] = []
    taken: dict[int, set[str]] = {}
    try:
        for face, label in zip(faces, labels):
            target = Path(face.crop).resolve()
            if not target.is_file():
                missing.append(face.crop)
                continue
            group = tmp / cluster_name(int(label))
            group.mkdir(parents=True, exist_ok=True)
            dest = group / _link_name(face, taken.setdefault(int(label), set()))
            if mode == "symlink":
                os.symlink(target, dest)
            else:
                os.link(target, dest)
        tmp.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if mode == "hardlink" and getattr(exc, "errno", None) == 18:  # EXDEV
            raise UsageError(f"Cannot hard-link across filesystems into {folder}; use --link symlink.") from None
        raise write_error(exc, folder) from None
    return missing


def write_contact_sheet(path: Path, faces: Sequence[Face], labels: np.ndarray, rows: int = 20,
                        columns: int = 12, thumb: int = 64) -> None:
    """A PNG with one row of thumbnails per cluster, largest first (at most `rows` rows and
    `columns` faces a row), then one row of unknown faces; people would rather look than read."""
    from PIL import Image, ImageDraw

    labels = np.asarray(labels)
    count = int(labels.max() + 1) if (labels >= 0).any() else 0
    shown = list(range(min(rows, count)))
    if (labels < 0).any():
        shown.append(-1)
    label_width, gap = 150, 4
    longest = max([int((labels == label).sum()) for label in shown] or [1])
    width = label_width + min(columns, longest) * (thumb + gap) + gap
    height = max(1, len(shown)) * (thumb + gap) + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    if not shown:
        draw.text((gap, gap), "no faces", fill="black")
    sizes = np.bincount(labels[labels >= 0]) if count else np.zeros(0, dtype=int)
    for row, label in enumerate(shown):
        members = np.flatnonzero(labels == label)
        y = gap + row * (thumb + gap)
        total = int(sizes[label]) if label >= 0 else len(members)
        draw.text((gap, y + thumb // 2 - 12), f"{cluster_name(label)}\n{total} face{'s' * (total != 1)}",
                  fill="black")
        for column, index in enumerate(members[:columns]):
            x = label_width + gap + column * (thumb + gap)
            sheet.paste(_thumbnail(faces[index].crop, thumb), (x, y))
    with atomic_open(path, "wb") as fh:
        sheet.save(fh, format="PNG")


def _thumbnail(path: str, size: int):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, ValueError):
        return Image.new("RGB", (size, size), (200, 200, 200))  # a missing crop: a grey tile
