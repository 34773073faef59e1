"""The engine behind `facenet serve`: models loaded once, frames and photos in, named faces out.

Every gallery read and write goes through one gallery store (facenet_cli/store, opened once for
the server's life; it notices changes by other programs through its generation()), and every name through
facenet_cli.recognition.identify's Matcher (the same unknown gate as `facenet identify`), so the page and
`facenet identify` agree on the same gallery. Uploaded photos are searched exactly as
`facenet identify` searches them (the chosen `--detector` and `--min-face`, adaptive upsampling,
every face); live frames by the same detector at upsample 0 on a downscaled copy (`detect_width`),
because detection is most of a frame's cost.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..recognition.identify import UNKNOWN
from .enrolling import ENROL_INTERVAL_S, Enrolling, choose_face, refuse_other_person
from .thumbs import thumbnail_jpeg
from .tracking import MIN_CLEAR_FACE_PX, MIN_SHARPNESS, Tracker, sharpness

if TYPE_CHECKING:
    from ..recognition.identify import Matcher

# Limits (bytes, pixels). A 640x480 JPEG from the page is 20-60 KB.
MAX_FRAME_BYTES = 2 * 1024 * 1024
MAX_FRAME_PIXELS = 1920 * 1080
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
# Live frames are searched at this width (with HOG, faces from about 80 * 640 / 320 = 160 px in a
# 640 px frame; with mtcnn from about 20 * 640 / 320 = 40 px, measured to find 32 px ones).
DEFAULT_DETECT_WIDTH = 320
# "Add person": clear frames of the one face followed (serve/enrolling.py).
DEFAULT_ENROL_FRAMES = 10
# How often the gallery store is asked whether it changed (its generation(): e.g. `facenet gallery` in
# another program, or another server on the same gallery).
GALLERY_POLL_S = 0.5
FPS_WINDOW_S = 2.0


def finite(value, digits: int) -> float | None:
    """A number for a JSON answer: rounded, and None where it is NaN or infinite (answers are
    strict JSON, which has neither)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


class ImageRefused(Exception):
    """A payload that is not an image we can read, or one too large; `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 415):
        super().__init__(message)
        self.status = status


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def looks_like_image(data: bytes) -> bool:
    """A cheap first check of the leading bytes (JPEG, PNG, GIF, BMP, WebP)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def decode_image(data: bytes, max_pixels: int, what: str = "The upload") -> np.ndarray:
    """Bytes of an image file to RGB uint8 (EXIF applied), through the one image reader;
    refuses non-images (415), empty or corrupt ones (400) and huge ones (413)."""
    from ..errors import BadImage
    from ..images import TooManyPixels, decode_rgb

    if not data:
        raise ImageRefused(f"{what} is empty; send a JPEG or PNG image.", 400)
    if not looks_like_image(data):
        raise ImageRefused(f"{what} is not an image (JPEG, PNG, GIF, BMP or WebP expected).")
    try:
        return decode_rgb(io.BytesIO(data), what, max_pixels)
    except TooManyPixels as exc:
        raise ImageRefused(f"{what} {exc.reason}.", 413) from None
    except BadImage as exc:
        status = 415 if "not an image" in exc.reason else 400
        raise ImageRefused(f"{what} {exc.reason}.", status) from None


@dataclass
class SocketState:
    """What the server keeps per WebSocket: its tracks, enrolment and answer times."""

    tracker: Tracker = field(default_factory=Tracker)
    enrolling: Enrolling | None = None
    answered: deque = field(default_factory=deque)
    received: int = 0
    dropped: int = 0
    reveal: bool = False  # name the nearest person of faces answered unknown (`/ws?reveal=1`)
    in_view: dict = field(default_factory=dict)  # track id -> name answered, in the last frame

    def fps(self, now: float) -> float:
        self.answered.append(now)
        while self.answered and now - self.answered[0] > FPS_WINDOW_S:
            self.answered.popleft()
        if len(self.answered) < 2:
            return 0.0
        return (len(self.answered) - 1) / max(self.answered[-1] - self.answered[0], 1e-9)


@dataclass
class GalleryView:
    """The gallery as the matcher and the map need it, rebuilt when the file changes."""

    version: int
    matcher: "Matcher | None"
    mean: np.ndarray | None = None
    axes: np.ndarray | None = None  # (D, 2) PCA directions
    points: list[dict] = field(default_factory=list)
    people: list[str] = field(default_factory=list)

    def project(self, vectors: np.ndarray) -> np.ndarray | None:
        if self.mean is None or len(vectors) == 0:
            return None
        return (vectors - self.mean) @ self.axes


def map_axes(vectors: np.ndarray, face_ids, people: list[str], previous: GalleryView | None):
    """The map's projection (mean, (D, 2) axes): the previous one while the same people are in
    the gallery (new faces are projected, nothing moves); when people come or go, a new PCA
    turned (orthogonal Procrustes) to where the faces already shown were, so the map does not
    flip or spin on every change."""
    if previous is not None and previous.axes is not None and previous.people == people \
            and previous.axes.shape[0] == vectors.shape[1]:
        return previous.mean, previous.axes
    mean = vectors.mean(axis=0)
    axes = np.zeros((vectors.shape[1], 2))
    if len(vectors) > 1:
        _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
        k = min(2, vt.shape[0])
        axes[:, :k] = vt[:k].T
    if previous is not None and previous.points and previous.axes is not None \
            and previous.axes.shape[0] == vectors.shape[1]:
        shown = {p["face_id"]: (p["x"], p["y"]) for p in previous.points if p["x"] is not None and p["y"] is not None}
        rows = [i for i, fid in enumerate(face_ids) if int(fid) in shown]
        if len(rows) >= 2:
            old = np.array([shown[int(face_ids[i])] for i in rows], dtype=np.float64)
            new = (vectors[rows] - mean) @ axes
            u, _, vt = np.linalg.svd((new - new.mean(axis=0)).T @ (old - old.mean(axis=0)))
            axes = axes @ (u @ vt)
    return mean, axes


class Engine:
    """Load the model once; answer frames, photos and gallery requests (thread-safe)."""

    def __init__(self, gallery_path: str | Path, model: str | None = None, device: str = "auto",
                 far: float | None = None, detect_width: int = DEFAULT_DETECT_WIDTH,
                 enrol_frames: int = DEFAULT_ENROL_FRAMES, detector: str | None = None,
                 min_face: int | None = None):
        from ..recognition.enrol import resolve_for
        from ..store.registry import open_store
        from ..pipeline.face_pipeline import FacePipeline, PipelineOptions

        if detect_width < 80:
            raise UsageError(f"--detect-width must be at least 80 pixels, not {detect_width}.")
        if enrol_frames < 1:
            raise UsageError(f"--enrol-frames must be at least 1, not {enrol_frames}.")
        self.gallery_path = os.fspath(gallery_path)  # a path or a store URL, as typed
        # Until its first face is enrolled a new gallery has no file (the store makes it at the
        # first commit): an empty gallery, not an error.
        self.store = open_store(self.gallery_path, create=True)
        record, self.model_ref, flip = resolve_for(self.store, model, None)
        self.far = far
        self.enrol_frames = enrol_frames
        # detector None: the library's default (LIBRARY_DEFAULTS), as every other command.
        self.pipeline = FacePipeline.build(PipelineOptions(model=self.model_ref, device=device, flip=flip, batch_size=8,
                                                           detector=getattr(detector, "value", detector),
                                                           min_face=min_face, upsample="auto", faces="all"),
                                           record=record, verify=False)
        self.detector = self.pipeline.options.detector
        self.embedder = self.pipeline.embedder
        # Photos: searched exactly as `facenet identify` searches them (the pipeline's own
        # settings). Frames: one detector pass at upsample 0 on a copy at most detect_width wide.
        self.live_detection = {"upsample": 0, "pixel_budget": detect_width * detect_width * 3 // 4}
        self.pipeline.aligner, self.pipeline.aligner_with(**self.live_detection)  # both loaded before any request
        self._lock = threading.RLock()
        self._view: GalleryView | None = None
        self._generation: object = None  # the store's generation() the view was built at
        self._checked = 0.0
        self._version = 0
        self.view()  # fail now, not at the first frame, if the gallery cannot be read

    # ------------------------------------------------------------ the gallery, as matcher and map

    def close(self) -> None:
        self.store.close()

    @property
    def record(self):
        return self.embedder.record

    def invalidate(self) -> None:
        with self._lock:
            self._generation = None

    def view(self) -> GalleryView:
        """The current matcher and map; re-read when our writes or another program changed the
        gallery (its store's generation() moved)."""
        with self._lock:
            now = time.monotonic()
            if self._view is not None and self._generation is not None and now - self._checked < GALLERY_POLL_S:
                return self._view
            self._checked = now
            generation = self.store.generation()
            if self._view is not None and generation == self._generation:
                return self._view
            self._version += 1
            self._view = self._build_view(self._version)
            self._generation = generation
            return self._view

    def _build_view(self, version: int) -> GalleryView:
        from ..recognition.identify import matcher_for

        state, enrolment = self.store.snapshot()
        if enrolment is None:
            return GalleryView(version, None)
        matcher = matcher_for(enrolment, far=self.far, state=state)  # calibration cached by the gallery's state
        vectors = enrolment.embeddings.astype(np.float64)
        mean, axes = map_axes(vectors, enrolment.face_ids, list(enrolment.names), self._view)
        xy = (vectors - mean) @ axes
        points = [{"face_id": int(fid), "person": enrolment.names[int(pi)], "x": finite(x, 5), "y": finite(y, 5)}
                  for fid, pi, (x, y) in zip(enrolment.face_ids, enrolment.person_index, xy)]
        return GalleryView(version, matcher, mean, axes, points, list(enrolment.names))

    def rename_person(self, name: str, new_name: str) -> dict:
        """All of a person's faces to another name at once (merged into that person if they
        exist): no frame answered in between sees the person half moved."""
        from ..store.names import normalise_name

        target = normalise_name(new_name)
        with self._lock:
            if name not in {n for n, _ in self.store.people()}:
                raise NotFound(f"No one called {name!r} is in the gallery.")
            moved = self.store.rename_person(name, target)
            self.store.keep_index_current()
            self.invalidate()
        return {"from": name, "to": target, "faces": moved}

    # ------------------------------------------------------------ faces

    def _faces(self, rgb: np.ndarray, live: bool = False) -> tuple[list, np.ndarray]:
        """The pipeline's faces of a photo, or of a live frame (`live`: the cheaper detection)."""
        return self.pipeline.embedded_faces(rgb, **(self.live_detection if live else {}))

    @staticmethod
    def _box(face) -> list[int]:
        return [face.box.left, face.box.top, face.box.right, face.box.bottom]

    def _answers(self, view: GalleryView, vectors: np.ndarray, top: int = 3) -> list:
        if view.matcher is None or len(vectors) == 0:
            return [None] * len(vectors)
        return view.matcher.answer(vectors, top)

    @staticmethod
    def _answer_dict(answer, reveal: bool = False) -> dict:
        """A face's answer; one answered unknown names no one (best_match None) unless `reveal`:
        who a stranger looks most like is the gallery's to keep, not every client's to read."""
        if answer is None:  # an empty gallery: everyone is a stranger
            return {"name": "unknown", "best_match": None, "distance": None, "score": None, "far": None}
        known = answer.name != UNKNOWN
        return {"name": answer.name, "best_match": answer.person if known or reveal else None,
                "distance": finite(answer.distance, 6), "score": finite(answer.score, 6),
                "far": None if answer.far is None else finite(float(f"{answer.far:.3g}"), 6)}

    def process_frame(self, data: bytes, state: SocketState, frame_id: int) -> dict:
        """One live frame: every face boxed, tracked and (once stable) named; enrolment if asked."""
        started = time.perf_counter()
        rgb = decode_image(data, MAX_FRAME_PIXELS, "A frame")
        found, vectors = self._faces(rgb, live=True)
        view = self.view()
        answers = self._answers(view, vectors)
        clear = [f.box.width >= MIN_CLEAR_FACE_PX and sharpness(f.image) >= MIN_SHARPNESS for f in found]
        state.tracker.max_distance = self.record.threshold  # beyond it: another person, another track
        tracks = state.tracker.update([tuple(self._box(f)) for f in found], clear, list(vectors))
        names = [UNKNOWN if a is None else a.name for a in answers]
        enrol, job = None, state.enrolling
        if job is not None:
            enrol = self._enrol_from_frame(state, job, data, found, vectors, clear, [t.id for t in tracks], names)
            if enrol.get("added_face"):
                view = self.view()
                answers = self._answers(view, vectors)
                names = [UNKNOWN if a is None else a.name for a in answers]
        state.in_view = {t.id: name for t, name in zip(tracks, names)}
        xy = view.project(vectors.astype(np.float64))
        faces = []
        for i, (face, answer, track) in enumerate(zip(found, answers, tracks)):
            item = {"box": self._box(face), "track": track.id, "stable": track.stable, "clear": clear[i]}
            item.update(self._answer_dict(answer, state.reveal))
            item["label"] = item["name"] if track.stable else None
            item["map"] = None if xy is None or not np.isfinite(xy[i]).all() else \
                [finite(xy[i, 0], 5), finite(xy[i, 1], 5)]
            faces.append(item)
        return {"type": "faces", "frame_id": frame_id, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                "faces": faces, "gallery_version": view.version, "people": len(view.people),
                "threshold": None if view.matcher is None else finite(view.matcher.threshold, 6),
                "smallest_face_px": self.smallest_face_px(rgb.shape[1], rgb.shape[0]),
                "process_ms": round((time.perf_counter() - started) * 1000, 1), "enrol": enrol}

    def smallest_face_px(self, width: int, height: int) -> int:
        """About the narrowest face found in a live frame of this size (the page hints "come
        closer" below it): the detector's reach on a copy of at most `--detect-width` (a wider
        --detect-width finds smaller faces, slower), or --min-face."""
        from ..detect import smallest_face_px

        return smallest_face_px(self.detector, height, width, min_face=self.pipeline.options.min_face,
                                **self.live_detection)

    def start_enrolling(self, state: SocketState, name: str, count: int | None = None,
                        track: int | None = None) -> dict:
        """Enrol the face of `track` (a face in view), or without one the face alone in view; a
        face the gallery names as someone else is refused (UsageError)."""
        from ..store.names import normalise_name

        person = normalise_name(str(name))
        wanted = self.enrol_frames if count is None else int(count)
        if not 1 <= wanted <= 100:
            raise UsageError(f"Enrol between 1 and 100 frames, not {wanted}.")
        if track is None and len(state.in_view) == 1:
            track = next(iter(state.in_view))
        if track is not None:
            if track not in state.in_view:
                raise UsageError("That face is no longer in view; click a face that is.")
            refuse_other_person(person, state.in_view[track])
        state.enrolling = Enrolling(person, wanted, track)
        return state.enrolling.to_dict()

    def cancel_enrolling(self, state: SocketState) -> dict:
        """End the enrolment; what it enrolled until then stays (the count says how many)."""
        with self._lock:  # not while a frame of it is being stored: the count given is final
            job, state.enrolling = state.enrolling, None
            if job is None:
                return {"name": None, "added": 0, "wanted": 0, "track": None, "done": True, "skipped": {}}
            job.stopped = "Cancelled."
            return job.to_dict()

    def _enrol_from_frame(self, state: SocketState, job: Enrolling, data: bytes, found: list, vectors: np.ndarray,
                          clear: list[bool], track_ids: list[int], names: list[str]) -> dict:
        alive = job.track is None or state.tracker.alive(job.track)
        i = choose_face(job, track_ids, names, vectors, clear, alive, self.record.threshold, ENROL_INTERVAL_S)
        with self._lock:  # a cancel waits for this frame, or this frame sees the cancel
            return self._enrol_chosen(state, job, data, found, vectors, i)

    def _enrol_chosen(self, state: SocketState, job: Enrolling, data: bytes, found: list, vectors: np.ndarray,
                      i: int | None) -> dict:
        face_id = None
        if i is not None and job.stopped is None:
            sha = hashlib.sha256(data).hexdigest()
            try:
                face_id = self._enrol(job.name, vectors[i], found[i].image, sha, f"serve:camera/{sha[:12]}.jpg",
                                      tuple(self._box(found[i])))
            except DuplicateImage:
                job.skip("the same face is in the gallery already")
            else:
                job.added += 1
                job.last = time.monotonic()
                if job.anchor is None:
                    job.anchor = vectors[i].astype(np.float64)
        result = job.to_dict()
        result["added_face"] = face_id
        if result["done"] and state.enrolling is job:
            state.enrolling = None
        return result

    def _enrol(self, name: str, vector: np.ndarray, crop: np.ndarray, sha: str, source: str,
               box: tuple[int, int, int, int]) -> int:
        """Store one face and its thumbnail; DuplicateImage for an image or a face already in."""
        from ..recognition.enrol_outcomes import SameFaces

        with self._lock:
            gallery = self.store
            if gallery.model is None:
                gallery.bind(self.record, self.model_ref, self.embedder.flip)
            # As `gallery add`: the same face again (a copy of an image in, re-encoded) is not enrolled.
            twin = SameFaces(gallery).find(vector)
            if twin is not None:
                raise DuplicateImage(f"This face is in the gallery already: its embedding equals that of {twin}.")
            face_id = gallery.add_face(name, vector, source, sha, box)
            if face_id is None:
                raise DuplicateImage("This image is in the gallery already.")
            jpeg = thumbnail_jpeg(crop)
            if jpeg is not None:
                gallery.save_thumbnail(sha, jpeg)
            gallery.keep_index_current()  # the store's search index stays current
            self.invalidate()
        return face_id

    # ------------------------------------------------------------ the HTTP API

    def identify_photo(self, data: bytes, reveal: bool = False) -> dict:
        """Every face of a photo: box, name (or unknown), distance, estimated FAR, embedding; the
        nearest people of a face answered unknown (best_match, candidates) only with `reveal`."""
        rgb = decode_image(data, MAX_UPLOAD_PIXELS)
        found, vectors = self._faces(rgb)
        view = self.view()
        answers = self._answers(view, vectors)
        faces = []
        for face, answer, vector in zip(found, answers, vectors):
            item = {"box": self._box(face)}
            item.update(self._answer_dict(answer, reveal))
            item["candidates"] = ([] if answer is None or item["best_match"] is None else
                                  [{"name": c.name, "distance": finite(c.distance, 6)} for c in answer.candidates])
            item["embedding"] = [finite(v, 7) for v in vector]
            faces.append(item)
        matcher = view.matcher
        return {"model": self.record.name, "people": len(view.people), "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]), "threshold": None if matcher is None else finite(matcher.threshold, 6),
                "far": None if matcher is None else matcher.far, "faces": faces}

    def compare_photos(self, first: bytes, second: bytes) -> dict:
        """Squared L2 distance between the largest face of each photo, with the model's verdict."""
        from ..nets.embedder import squared_distances

        chosen = []
        for data, what in ((first, "The first image"), (second, "The second image")):
            rgb = decode_image(data, MAX_UPLOAD_PIXELS, what)
            found = self.pipeline.faces(rgb)
            if not found:
                raise UsageError(f"{what} has no face we could find; send a photo with a visible face.")
            largest = max(found, key=lambda face: face.box.area)
            chosen.append((largest, self.pipeline.embed([largest.image])[0], len(found)))
        distance = float(squared_distances(chosen[0][1][None], chosen[1][1][None])[0, 0])
        return {"model": self.record.name, "squared_l2": finite(distance, 6), "threshold": self.record.threshold,
                "same_person": distance <= self.record.threshold,
                "faces": [{"box": self._box(f), "faces_in_image": n} for f, _, n in chosen]}

    def enrol_photo(self, name: str, data: bytes) -> dict:
        """Enrol the one face of a photo under `name`."""
        from ..store.names import normalise_name

        person = normalise_name(name)
        rgb = decode_image(data, MAX_UPLOAD_PIXELS)
        found, vectors = self._faces(rgb)
        if len(found) != 1:
            raise UsageError("The photo has no face we could find; send a photo of that person's face." if not found
                             else f"The photo has {len(found)} faces; send a photo with only {person}'s face.")
        sha = hashlib.sha256(data).hexdigest()
        face_id = self._enrol(person, vectors[0], found[0].image, sha, f"serve:upload/{sha[:12]}.jpg",
                              tuple(self._box(found[0])))
        return {"person": person, "face_id": face_id, "box": self._box(found[0])}

    def listing(self) -> dict:
        with self._lock:
            people = self.store.people()
            faces = self.store.faces()
            with_thumbnail = self.store.thumbnails()
        view = self.view()
        thumbs: dict[str, str] = {}  # person -> their first face with a thumbnail
        face_rows = []
        for face in faces:
            url = f"api/gallery/thumbs/{face.image_sha256}.jpg" if face.image_sha256 in with_thumbnail else None
            if url:
                thumbs.setdefault(face.person, url)
            face_rows.append({"id": face.id, "person": face.person, "thumbnail": url,
                              "source": Path(face.source.replace("\\", "/")).name})
        return {"model": self.record.name, "flip": self.embedder.flip, "gallery_version": view.version,
                "people": [{"name": n, "faces": c, "thumbnail": thumbs.get(n)} for n, c in people],
                "faces": face_rows}

    def thumbnail(self, image_sha256: str) -> bytes | None:
        return self.store.thumbnail(image_sha256)

    def map(self) -> dict:
        view = self.view()
        return {"gallery_version": view.version, "people": view.people, "points": view.points}

    def _after_removal(self, gallery) -> None:
        gallery.keep_index_current()  # (the store removed the faces' thumbnails with them)
        self.invalidate()

    def remove_person(self, name: str) -> dict:
        with self._lock:
            gallery = self.store
            if name not in {n for n, _ in gallery.people()}:
                raise NotFound(f"No one called {name!r} is in the gallery.")
            removed = gallery.remove_person(name)
            self._after_removal(gallery)
        return {"person": name, "removed_faces": removed}

    def remove_face(self, face_id: int) -> dict:
        with self._lock:
            gallery = self.store
            if not gallery.faces_by_id([face_id]):
                raise NotFound(f"No face with id {face_id} is in the gallery.")
            person = gallery.remove_face(face_id)
            self._after_removal(gallery)
        return {"face_id": face_id, "person": person}

    def move_face(self, face_id: int, name: str) -> dict:
        with self._lock:
            gallery = self.store
            if not gallery.faces_by_id([face_id]):
                raise NotFound(f"No face with id {face_id} is in the gallery.")
            old, new = gallery.move_face(face_id, name)
            gallery.keep_index_current()
            self.invalidate()
        return {"face_id": face_id, "from": old, "to": new}


class NotFound(Exception):
    pass


class DuplicateImage(Exception):
    pass


__all__ = ["Engine", "SocketState", "ImageRefused", "NotFound", "DuplicateImage", "decode_image"]
