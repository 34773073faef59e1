"""Who is this? Match faces against a gallery, behind an unknown gate calibrated in false alarms.

Matching (`method`): which enrolled person a face looks most like.
- `mean` (default): each person's mean face (the mean of their faces' embeddings, back on the
  unit sphere); people ranked by the distance to it. One template per person, so people with
  more photos get no more chances; on LFW it beat the closest face (benchmarks/identify_lfw.py).
- `nearest`: a person's distance is that of their closest face.
- `knn`: the k nearest faces vote (ties go to the nearer person).
- `svm`: scikit-learn's linear SVC fitted at load on the gallery's faces (as OpenFace's
  classifier); nothing is pickled, the fit is cheap and made from the gallery itself.

The unknown gate: whatever the method proposes, the answer is a name only when the proposed
person's gate score (`gate_scores`: their distance, less a margin over the other people and
their own spread) is at most the threshold of the operating point. The score and the curve of
thresholds come from the model record (`operating_points["identify"]`, made by
benchmarks/identify_lfw.py --calibrate): calibrated on LFW people disjoint from those it is
measured on, per gallery size (a stranger has more chances to resemble someone in a larger
gallery), as thresholds for a list of false-alarm rates (FAR: the share of strangers that get a
name). `--far` picks a point on that curve, interpolated in log(gallery size) and log(FAR);
`--threshold` overrides it with a raw score.

Where the model ships a stranger cohort (dlib-resnet.v1 does), that curve is only the fallback:
the threshold for `--far` is set for the gallery in use from the cohort's own gate scores against
it (calibration.py), and each answer carries its FAR on this gallery: the share of the cohort's
strangers that scored as low. Where the cohort cannot promise the FAR (too fine a FAR, a person
who draws the strangers in), `notes()` says so in a sentence.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import NothingFound, UsageError

if TYPE_CHECKING:
    from ..executors import Executor
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..progress import Progress
    from ..store.types import Enrolment
    from ..pipeline.photos import PhotoListing

# The matcher and its unknown gate live in matcher.py; re-exported here, where callers found them.
from ..store.registry import shown_location
from .calibration import OperatingPoint, calibration_for
from .matcher import (DEFAULT_FAR, DEFAULT_KNN, METHODS, MIN_CANDIDATES, UNKNOWN, Answer, Candidate,  # noqa: F401
                      Matcher, OperatingCurve, curve_for_model, gate_scores, matcher_for, operating_curve,
                      person_distances, person_rows, person_spreads, person_templates)


# ------------------------------------------------------------------ photos in, answers out

@dataclass
class IdentifiedFace:
    photo: str
    face: int
    box: tuple[int, int, int, int]
    answer: Answer

    def to_dict(self) -> dict:
        a = self.answer
        return {"photo": self.photo, "face": self.face, "box": list(self.box), "name": a.name,
                "best_match": a.person, "distance": round(a.distance, 6), "score": round(a.score, 6),
                "far": None if a.far is None else float(f"{a.far:.3g}"),
                "candidates": [{"name": c.name, "distance": round(c.distance, 6)} for c in a.candidates]}


@dataclass
class Identification:
    gallery: str
    model: str
    method: str
    people: int
    threshold: float
    far: float | None  # the operating point asked for (None with --threshold)
    gate: dict
    faces: list[IdentifiedFace] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # photo -> why it has no face
    photos: int = 0
    far_range: tuple[float, float] | None = None  # the calibrated FARs: estimates are clamped to them
    search: str = "exact"  # "exact", or "index (used|built|rebuilt)": how people were shortlisted
    # The gallery's own operating point (calibration.py); None with --threshold or without a cohort.
    operating_point: "OperatingPoint | None" = None

    def notes(self) -> list[str]:
        """What the user should read once on stderr: where the asked FAR cannot be promised."""
        return self.operating_point.notes() if self.operating_point is not None else []

    def to_dict(self) -> dict:
        named = sum(f.answer.name != UNKNOWN for f in self.faces)
        return {"gallery": self.gallery, "model": self.model, "method": self.method, "people": self.people,
                "distance_to": "mean face" if self.method == "mean" else "closest face",
                "threshold": round(self.threshold, 6), "far": self.far, "gate": self.gate,
                "far_range": list(self.far_range) if self.far_range else None,
                "calibration": self.operating_point.to_dict() if self.operating_point is not None else None,
                "notes": self.notes(),
                "search": self.search, "photos": self.photos, "faces_found": len(self.faces), "named": named,
                "unknown": len(self.faces) - named, "photos_without_face": len(self.problems),
                "faces": [f.to_dict() for f in self.faces], "problems": self.problems}

    def csv_text(self) -> str:
        """`identify --csv`, for spreadsheets: text cells neutralised (spreadsheet_text), the
        candidates as a JSON list (names may hold any separator), a photo's problem in its own column."""
        from ..atomic import json_safe

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["photo", "face", "left", "top", "right", "bottom", "name", "distance", "far", "candidates",
                         "problem"])
        for f in self.faces:
            a = f.answer
            candidates = json.dumps(json_safe([{"name": c.name, "distance": round(c.distance, 4)}
                                               for c in a.candidates]), ensure_ascii=False, allow_nan=False)
            writer.writerow([spreadsheet_text(f.photo), f.face, *f.box, spreadsheet_text(a.name), f"{a.distance:.6f}",
                             "" if a.far is None else f"{a.far:.3g}", spreadsheet_text(candidates), ""])
        for photo, reason in self.problems.items():
            writer.writerow([spreadsheet_text(photo), "", "", "", "", "", "", "", "", "", spreadsheet_text(reason)])
        return out.getvalue()


# What spreadsheets read as the start of a formula (OWASP, "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell of a CSV meant for spreadsheets: a leading ' when it would start a formula,
    so `=HYPERLINK(...)` as a name or file name shows as text and is never evaluated."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def list_photos(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Photos named directly, and every photo under folders, listed as `align` lists (photos.py)."""
    return [path for path, _ in photo_listing(inputs).photos]


def photo_listing(inputs: Sequence[str | os.PathLike]) -> "PhotoListing":
    """The photos to read and the entries that are not read (links to folders are not entered,
    hidden entries and names with control characters are refused: photos.py, align's policy)."""
    from ..pipeline.photos import list_photos as list_inputs

    for item in inputs:
        if not Path(item).exists():
            raise UsageError(f"{Path(item)} does not exist; check the path.")
    listing = list_inputs(inputs)
    if not listing.photos:
        refused = listing.refused
        count = f"{len(refused)} {'entry' if len(refused) == 1 else 'entries'}"
        why = f" ({count} not read, e.g. {refused[0].path}: {refused[0].detail})" if refused else ""
        raise UsageError(f"No photo was found in the inputs{why}; give photos or folders holding photos.")
    return listing


INDEX_CHOICES = ("auto", "always", "never")


def rows_scanned(enrolment, method: str) -> int:
    """How many vectors exact matching compares each query with: the people's mean faces for
    `mean` (with a mean-face gate), every face otherwise."""
    return enrolment.size if method == "mean" else len(enrolment.face_ids)


def wants_index(use_index: str, rows: int) -> bool:
    """Whether to search with the index: `auto` from face_index.INDEX_MIN_FACES rows on."""
    from ..store.face_index import INDEX_MIN_FACES

    if use_index not in INDEX_CHOICES:
        raise UsageError(f"--index must be one of {', '.join(INDEX_CHOICES)}, not {use_index!r}.")
    return use_index == "always" or (use_index == "auto" and rows >= INDEX_MIN_FACES)


def gallery_operating_point(store, far: float | None = None) -> dict | None:
    """`gallery list`'s operating point: where identify's gate stands on this gallery at `far`
    (the model's default) with the default method: threshold, the stranger scores it rests on,
    people who draw strangers in, and the notes identify would print. None without faces; a
    `problem` sentence when it cannot be computed (a damaged cohort file)."""
    from ..errors import FacenetError

    try:
        state, enrolment = store.snapshot()
        if enrolment is None:
            return None
        matcher = matcher_for(enrolment, far=far, state=state)
    except FacenetError as exc:
        return {"problem": str(exc)}
    if matcher.point is None:  # a model without a cohort (a checkpoint): its curve or pair threshold
        return {"far": matcher.far, "threshold": round(matcher.threshold, 6), "source": "model curve"
                if matcher.curve is not None else "model threshold", "notes": []}
    return dict(matcher.point.to_dict(), method=matcher.method, notes=matcher.point.notes())


def _load_gallery(gallery_path):
    """(gallery state, enrolment) read together from a store or a location; DataError for a
    gallery without faces."""
    from ..store.registry import opened_store

    with opened_store(gallery_path) as gallery:
        state, enrolment = gallery.snapshot()
        if enrolment is None:
            gallery.enrolment()  # raises the one-sentence "no faces yet"
    return state, enrolment


def _index_for(gallery_path, state, enrolment):
    """The store's nearest-neighbour index over this snapshot of its faces."""
    from ..store.registry import opened_store

    with opened_store(gallery_path) as gallery:
        return gallery.neighbour_index(state, enrolment)


def identify(gallery_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, method: str | None = None,
             far: float | None = None, threshold: float | None = None, top: int = 3, k: int = DEFAULT_KNN,
             pipeline: "FacePipeline | PipelineOptions | None" = None, executor: "Executor | None" = None,
             workers: int | None = None, use_index: str = "auto", progress: "Progress | None" = None) -> Identification:
    """`facenet identify GALLERY PHOTO|DIR ...`: every face of every photo, named or `unknown`.

    The pipeline, then identify's own step: the faces of every photo are found, aligned and
    embedded by `pipeline` (a built FacePipeline, reused across calls, or the options to build
    one: detector, upsample, device...), with the gallery's own model and flip (a model given
    must be that model) and every face of a photo; `executor`/`workers` say where faces are
    found (default: one local process per CPU). The answers are the same whatever the executor.
    `use_index`: auto (the gallery's search index once exact matching would scan
    face_index.INDEX_MIN_FACES vectors per face), always, or never. `progress`: per photo.
    Photos without a face are in `problems` (check_found says when none held one).
    """
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    listing = photo_listing(inputs)
    photos = [path for path, _ in listing.photos]
    state, enrolment = _load_gallery(gallery_path)
    gm = enrolment.model
    curve = curve_for_model(gm.record)
    matcher = matcher_for(enrolment, method=method, far=far, threshold=threshold, k=k, curve=curve, calibrate=False)
    method = matcher.method
    pipeline = gallery_pipeline(gallery_path, gm, pipeline)
    search = "exact"
    if method != "svm" and wants_index(use_index, rows_scanned(enrolment, method)):
        got = _index_for(gallery_path, state, enrolment)
        matcher.use_index(got.index)
        search = f"index ({got.status})"
    # The gate for this gallery, against the model's stranger cohort, scored as the queries will be.
    matcher.use_calibration(calibration_for(matcher, enrolment, state))
    if matcher.calibration is not None:
        far_range = matcher.calibration.far_range
    else:
        far_range = (min(curve.fars), max(curve.fars)) if curve else None

    result = Identification(shown_location(gallery_path), gm.name, method, enrolment.size, matcher.threshold, matcher.far,
                            matcher.gate, photos=listing.entries, far_range=far_range, search=search,
                            operating_point=matcher.point)
    # reported, so the photos' counts add up to the entries
    for entry, label in zip(listing.refused, listing.refused_names()):
        result.problems[label] = f"{entry.status}: {entry.detail}"
    found = pipeline.iter_photos(photos, workers, embed=True, executor=executor, progress=progress)
    for label, photo in zip(listing.names(), found):  # relative to the folder given
        if photo.problem is not None:
            result.problems[label] = photo.problem
            continue
        for index, (face, answer) in enumerate(zip(photo.faces, matcher.answer(photo.embeddings, top))):
            box = (face.box.left, face.box.top, face.box.right, face.box.bottom)
            result.faces.append(IdentifiedFace(label, index, box, answer))
    return result


def check_found(result: Identification) -> None:
    """NothingFound (exit 3) when no photo held a face: there is no one to identify."""
    if not result.faces:
        raise NothingFound(f"No face was found in any of the {result.photos} photos, so there is no one to "
                           "identify; give photos with faces (or sharper, larger ones).")


def gallery_pipeline(gallery_path, gm, pipeline: "FacePipeline | PipelineOptions | None" = None) -> "FacePipeline":
    """The pipeline that embeds queries for a gallery: its own model and flip, every face of a
    photo. Options are completed so (a --model given must be the gallery's); a built pipeline
    must already be so. UsageError otherwise."""
    from dataclasses import replace

    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..store.types import model_fingerprint

    if isinstance(pipeline, FacePipeline):
        if model_fingerprint(pipeline.record) != gm.fingerprint or bool(pipeline.options.flip) != bool(gm.flip):
            raise UsageError(f"{gallery_path} holds faces of {gm.describe()}, not of the pipeline given.")
        if pipeline.options.faces != "all":
            pipeline = FacePipeline(replace(pipeline.options, faces="all"), pipeline.record, pipeline._weights)
        return pipeline
    options = pipeline or PipelineOptions()
    # Files are checked as each part loads (the embedder its weights, the aligner its landmarks),
    # after the model is known to be the gallery's.
    built = FacePipeline.build(replace(options, model=options.model or gm.ref, flip=gm.flip, faces="all"),
                               verify=False)
    record = built.record
    if model_fingerprint(record) != gm.fingerprint or record.embedding_dim != gm.dim:
        raise UsageError(f"{gallery_path} holds faces of {gm.describe()}; use that model "
                         f"(drop --model or pass --model {gm.ref}).")
    return built


# ------------------------------------------------------------------ search: the most similar faces

@dataclass
class FaceMatch:
    face_id: int
    person: str
    source: str
    distance: float  # squared L2

    def to_dict(self) -> dict:
        return {"face_id": self.face_id, "person": self.person, "source": self.source,
                "distance": round(self.distance, 6)}


@dataclass
class SearchedFace:
    face: int
    box: tuple[int, int, int, int]
    matches: list[FaceMatch]

    def to_dict(self) -> dict:
        return {"face": self.face, "box": list(self.box), "matches": [m.to_dict() for m in self.matches]}


@dataclass
class SearchResult:
    gallery: str
    photo: str
    model: str
    gallery_faces: int
    top: int
    search: str  # "exact", or "index (used|built|rebuilt)"
    index_note: str = ""  # why a saved index was not used, when it was rebuilt
    faces: list[SearchedFace] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"gallery": self.gallery, "photo": self.photo, "model": self.model, "gallery_faces": self.gallery_faces,
                "top": self.top, "search": self.search, "index_note": self.index_note,
                "faces_found": len(self.faces), "faces": [f.to_dict() for f in self.faces]}


def nearest_faces(vectors: np.ndarray, enrolment: "Enrolment", top: int, index=None) -> tuple[np.ndarray, np.ndarray]:
    """(Q, K) face ids and squared L2 distances of each vector's `top` nearest gallery faces, by
    the index when given, else exactly; best first (-1 / inf pad when the gallery is smaller)."""
    if index is not None:
        return refine_by_person(vectors, *index.search(vectors, top), enrolment, top)
    from ..nets.embedder import squared_distances

    d = squared_distances(np.atleast_2d(vectors), enrolment.embeddings)
    k = min(top, d.shape[1])
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, 1), axis=1, kind="stable"), 1)
    ids = np.full((len(d), top), -1, dtype=np.int64)
    dist = np.full((len(d), top), np.inf, dtype=np.float32)
    ids[:, :k] = enrolment.face_ids[order]
    dist[:, :k] = np.take_along_axis(d, order, 1)
    return ids, dist


def refine_by_person(vectors: np.ndarray, ids: np.ndarray, distances: np.ndarray, enrolment, top: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """An index's answer made exact within the person it names first: the face the graph search
    found first is nearly always of the right person (0.999 of "new photo" queries on a million
    faces) but not always that person's nearest face, among the many near-identical photos of one
    person. So every face of that person is scored exactly and merged with the index's other
    hits; recall@1 against exact search then follows the person, not the graph's luck.
    `enrolment` needs embeddings (unit rows), person_index and face_ids."""
    ids, distances = ids.copy(), distances.copy()
    rows_of_person, id_order, sorted_ids = _person_lookup(enrolment)
    for row, vector in enumerate(np.atleast_2d(np.asarray(vectors, dtype=np.float32))):
        first = ids[row, 0]
        if first < 0:
            continue
        at = int(np.searchsorted(sorted_ids, first))
        if at >= len(sorted_ids) or sorted_ids[at] != first:
            continue  # the gallery changed under the index: keep the index's answer
        rows = rows_of_person[int(enrolment.person_index[id_order[at]])]
        # Unit rows: squared L2 = 2 - 2 cos, in float32 as the index computes it (one person's
        # faces can be tens of thousands in a big gallery; float64 copies would cost milliseconds).
        exact = np.maximum(2.0 - 2.0 * (enrolment.embeddings[rows] @ vector), 0.0)
        near = np.argpartition(exact, top - 1)[:top] if len(exact) > top else np.arange(len(exact))
        # only the person's `top` nearest can make the list
        rows = near + rows.start if isinstance(rows, slice) else rows[near]
        exact = exact[near]
        person_ids = enrolment.face_ids[rows]
        others = (ids[row] >= 0) & ~np.isin(ids[row], person_ids)
        merged_ids = np.concatenate([person_ids, ids[row][others]])
        merged_d = np.concatenate([exact.astype(np.float32), distances[row][others]])
        best = np.lexsort((merged_ids, merged_d))[:top]
        ids[row, :len(best)] = merged_ids[best]
        distances[row, :len(best)] = merged_d[best]
    return ids, distances


def _person_lookup(enrolment) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Each person's rows in the enrolment arrays (a slice where they are contiguous, as a
    gallery's are: its faces come ordered by person, so scoring a person copies nothing), and
    face id -> row by binary search; cached on the enrolment, built once per loaded gallery."""
    cached = getattr(enrolment, "_person_lookup", None)
    if cached is None:
        people = enrolment.person_index
        order = np.argsort(people, kind="stable")
        bounds = np.searchsorted(people[order], np.arange(int(people.max()) + 2))
        if np.all(np.diff(people) >= 0):
            rows = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(bounds) - 1)]
        else:
            rows = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        id_order = np.argsort(enrolment.face_ids, kind="stable")
        cached = (rows, id_order, enrolment.face_ids[id_order])
        enrolment._person_lookup = cached
    return cached


def search_gallery(gallery_path: str | os.PathLike, photo: str | os.PathLike, *, top: int = 5,
                   use_index: str = "auto",
                   pipeline: "FacePipeline | PipelineOptions | None" = None) -> SearchResult:
    """`facenet search GALLERY PHOTO --top K`: for every face in the photo, the K most similar
    faces of the gallery (distance, person, source). `pipeline`: as identify's (the gallery's
    model and flip, every face). `use_index`: auto (the gallery's search index from
    face_index.INDEX_MIN_FACES faces on), always, or never (an exact scan). NothingFound when
    the photo holds no face."""
    from ..store.registry import opened_store
    from ..images import read_rgb

    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    path = Path(photo)
    if not path.exists():
        raise UsageError(f"{path} does not exist; check the path.")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give one photo to search with (identify takes folders).")
    state, enrolment = _load_gallery(gallery_path)
    gm = enrolment.model
    run_index = wants_index(use_index, len(enrolment.face_ids))
    pipeline = gallery_pipeline(gallery_path, gm, pipeline)
    found = pipeline.faces(read_rgb(path))
    if not found:
        raise NothingFound(f"No face was found in {path}, so there is nothing to search for; give a photo with a "
                           "face (or a sharper, larger one).")
    vectors = pipeline.embed([f.image for f in found])
    result = SearchResult(shown_location(gallery_path), str(path), gm.name, len(enrolment.face_ids), top, "exact")
    index = None
    if run_index:
        got = _index_for(gallery_path, state, enrolment)
        index, result.search, result.index_note = got.index, f"index ({got.status})", got.reason
    ids, distances = nearest_faces(vectors, enrolment, top, index)
    with opened_store(gallery_path) as gallery:
        faces = gallery.faces_by_id(ids[ids >= 0])
    for number, (face, row_ids, row_d) in enumerate(zip(found, ids, distances)):
        matches = [FaceMatch(int(i), faces[int(i)].person, faces[int(i)].source, float(d))
                   for i, d in zip(row_ids, row_d) if i >= 0 and int(i) in faces]
        box = (face.box.left, face.box.top, face.box.right, face.box.bottom)
        result.faces.append(SearchedFace(number, box, matches))
    return result
