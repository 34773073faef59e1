"""`facenet gallery add REPS/`: enrol a `represent` output (labels.csv + embeddings) in a gallery
store, person = each face's folder name, without embedding anything again. Embeddings of another
model (or flip setting) than the gallery's are refused; each row's image is found (to key it by
its SHA-256, as photos are) where it can be, else keyed by its embedding."""
from __future__ import annotations

import hashlib
from pathlib import Path, PurePath

import numpy as np

from ..errors import DataError, SpecMismatch, UsageError
from ..formats.aligned import printable_name
from ..models.hub import file_sha256
from ..pipeline.photos import path_problem
from ..store.names import name_problem, nfkc
from ..store.protocol import GalleryStore
from ..store.types import model_fingerprint
from .enrol_outcomes import AddOutcome, SameFaces


def add_reps(gallery: GalleryStore, folder: Path, model, flip, on_start, on_advance) -> list[AddOutcome]:
    """Enrol a `represent` output: person = each face's folder name; refuse another model's reps."""
    from ..models.catalogue import ModelRecord
    from ..formats.reps import person_of, read_reps

    reps = read_reps(folder)
    meta_model = reps.meta.get("model")
    if not isinstance(meta_model, dict):
        raise DataError(f"{folder} has no meta.json naming the model that made it, so its embeddings cannot be "
                        "checked against the gallery's; represent the photos again with `facenet represent`.")
    try:
        record = ModelRecord.from_dict(meta_model)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"The model record in {folder}/meta.json is damaged; represent the photos again.") from None
    reps_flip = bool(reps.meta.get("flip", False))
    if flip is not None and flip != reps_flip:
        raise UsageError(f"{folder} was represented {'with' if reps_flip else 'without'} --flip; drop "
                         f"{'--no-flip' if reps_flip else '--flip'} or represent the photos again.")
    if model is not None:
        from ..pipeline.face_pipeline import resolve_record

        wanted = resolve_record(model)
        if model_fingerprint(wanted) != model_fingerprint(record):
            raise SpecMismatch(f"{folder} holds embeddings of {record.name}, not of {wanted.name}; represent the "
                               f"photos with --model {model} or drop --model.")
    gallery.check_model(record.name, record.align.to_dict(), record.embedding_dim, model_fingerprint(record), reps_flip)
    if reps.embeddings.shape[1] != record.embedding_dim:
        raise DataError(f"{folder} holds {reps.embeddings.shape[1]}-d embeddings but its model {record.name} makes "
                        f"{record.embedding_dim}-d ones; represent the photos again.")
    if gallery.model is None:
        from ..models.catalogue import CATALOGUE

        ref = record.name if record.name in CATALOGUE else (record.weights.path if record.weights and
                                                            record.weights.path else record.name)
        gallery.bind(record, ref, reps_flip)
    if on_start:
        on_start(len(reps))
    outcomes: list[AddOutcome] = []
    pending: list[tuple[AddOutcome, tuple]] = []

    def flush():
        ids = gallery.add_faces([row for _, row in pending])
        for (outcome, _), face_id in zip(pending, ids):
            if face_id is None:
                outcome.status, outcome.detail = "already-in", "this face is in the gallery already"
            else:
                outcome.face_id = face_id
        if on_advance:
            on_advance(len(pending))
        pending.clear()

    seen: set[str] = set()
    recorded = _recorded_shas(reps)
    aligned = reps.meta.get("aligned") if isinstance(reps.meta.get("aligned"), str) else None
    same = SameFaces(gallery)
    for row, (path, vector) in enumerate(zip(reps.paths, reps.embeddings)):
        person = person_of(path)
        problem = name_problem(person) or path_problem(path)
        if problem:
            outcomes.append(AddOutcome(printable_name(path), "bad-name", printable_name(person), detail=problem))
            continue
        if recorded is not None:
            sha, found = recorded[row], True
        else:
            sha, found = _reps_face_sha(folder, path, vector, aligned)
        if sha in seen or gallery.has_image(sha):
            outcomes.append(AddOutcome(path, "already-in", person, detail="this face is in the gallery already"))
            continue
        twin = same.find(vector)
        if twin is not None:
            if found:
                detail = f"its embedding equals that of {twin}: the same face (a crop, copy or export of a photo)"
            else:
                detail = (f"an unverifiable duplicate: its image cannot be found to tell it apart, and its embedding "
                          f"equals that of {twin}")
            outcomes.append(AddOutcome(path, "duplicate", person, detail=detail))
            continue
        seen.add(sha)
        same.note(vector, path)
        outcome = AddOutcome(path, "added", nfkc(person))
        outcomes.append(outcome)
        pending.append((outcome, (person, vector, path, sha, None)))
        if len(pending) >= 500:
            flush()
    if pending:
        flush()
    return outcomes


def _recorded_shas(reps) -> list[str] | None:
    """The image SHA-256 of every row, as `gallery export` records them in meta.json, when they
    are there, one per row, each well formed; else None."""
    import re

    recorded = reps.meta.get("image_sha256")
    if not isinstance(recorded, list) or len(recorded) != len(reps.paths):
        return None
    pattern = re.compile(r"(emb:)?[0-9a-f]{64}")
    if not all(isinstance(sha, str) and pattern.fullmatch(sha) for sha in recorded):
        return None
    return recorded


def _reps_face_sha(folder: Path, path: str, vector: np.ndarray, aligned: str | None = None) -> tuple[str, bool]:
    """(the key of a reps row, whether its image was found). The key is the image's SHA-256
    wherever its file can be found: the path as written when absolute; else its trailing
    `<person>/<image>` (or longer) parts under the folder the embeddings were made from
    (meta.json's `aligned`, recorded absolute by `represent`) or under the reps folder itself
    (`represent --photos` writes OUT/aligned); else the path relative to the current directory.
    Without a file, a digest of the embedding (`emb:`)."""
    written = PurePath(path.replace("\\", "/"))
    parts = written.parts
    candidates: list[Path] = []
    if written.is_absolute():
        candidates.append(Path(written))
    else:
        candidates.append(folder / written)
    tails = [PurePath(*parts[i:]) for i in range(len(parts) - 1) if not PurePath(*parts[i:]).is_absolute()]
    for root in (aligned, folder):
        if root:
            candidates += [Path(root) / tail for tail in tails]
    if not written.is_absolute():
        candidates.append(Path(written))
    for candidate in candidates:
        try:
            if candidate.is_file():
                return file_sha256(candidate), True
        except OSError:
            pass
    return "emb:" + hashlib.sha256(np.asarray(vector, dtype="<f4").tobytes()).hexdigest(), False
