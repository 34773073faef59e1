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

from ..errors import NothingFound, UsageError

if TYPE_CHECKING:
    from ..executors import Executor
    from ..pipeline.face_pipeline import FacePipeline, PipelineOptions
    from ..progress import Progress
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
    face_index.INDEX_MIN_FACES vectors per face), always, or never. With the index, a store that
    searches in place (PostgreSQL) is asked for each face's shortlist and only the shortlisted
    people's faces are read, once the gallery as it is now has been calibrated (shortlist.py);
    the answers are those of the whole gallery read. `progress`: per photo.
    Photos without a face are in `problems` (check_found says when none held one).
    """
    from ..store.registry import opened_store

    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}.")
    listing = photo_listing(inputs)
    photos = [path for path, _ in listing.photos]
    # Opened once: a store that searches in place is asked again for every face.
    with opened_store(gallery_path) as store:
        matcher, gm, search = _identify_matcher(store, method, far, threshold, k, use_index)
        pipeline = gallery_pipeline(gallery_path, gm, pipeline)
        curve = matcher.curve
        if matcher.calibration is not None:
            far_range = matcher.calibration.far_range
        else:
            far_range = (min(curve.fars), max(curve.fars)) if curve else None

        result = Identification(shown_location(gallery_path), gm.name, matcher.method, matcher.size, matcher.threshold,
                                matcher.far, matcher.gate, photos=listing.entries, far_range=far_range, search=search,
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


def _identify_matcher(store, method, far, threshold, k, use_index):
    """(matcher, the gallery's model, how people are shortlisted). A store that searches in place
    whose gallery state is already calibrated is asked, not read, whenever the index would be used
    (shortlist.py); otherwise the gallery is read whole, matched and calibrated as ever."""
    from .shortlist import in_place_matcher

    wants_index(use_index, 0)  # a wrong --index is refused first, whichever way the gallery is read
    in_place = in_place_matcher(store, method=method, far=far, threshold=threshold, k=k,
                                wants_index=lambda rows: wants_index(use_index, rows))
    if in_place is not None:
        return in_place, store.model, "index (database)"
    state, enrolment = _load_gallery(store)
    matcher = matcher_for(enrolment, method=method, far=far, threshold=threshold, k=k, calibrate=False)
    search = "exact"
    if matcher.method != "svm" and wants_index(use_index, rows_scanned(enrolment, matcher.method)):
        got = _index_for(store, state, enrolment)
        matcher.use_index(got.index)
        search = f"index ({got.status})"
    # The gate for this gallery, against the model's stranger cohort, scored as the queries will be.
    matcher.use_calibration(calibration_for(matcher, enrolment, state))
    return matcher, enrolment.model, search


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


# ------------------------------------------------------------------ search (moved to search.py)

# `facenet search` lives in search.py, which imports this module; its names are still found here,
# where callers (and older scripts) looked for them, without an import cycle.
_MOVED_TO_SEARCH = ("search_gallery", "search_vectors", "nearest_faces", "refine_by_person", "FaceMatch",
                    "SearchedFace", "SearchResult")


def __getattr__(name: str):
    if name in _MOVED_TO_SEARCH:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.search"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
