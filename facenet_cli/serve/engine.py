"""The engine behind `facenet serve`: models loaded once, frames and photos in, named faces out.

Every gallery read and write goes through facenet_cli.store.gallery, and every name through
facenet_cli.recognition.identify's Matcher (the same unknown gate as `facenet identify`), so the page and
`facenet identify` agree on the same gallery. Uploaded photos are searched exactly as
`facenet identify` searches them (HOG, adaptive upsampling, every face); live frames on a
downscaled copy (`detect_width`), because detection is most of a frame's cost.
"""
from __future__ import annotations

import hashlib
import io
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import NoFace, UsageError
from ..recognition.identify import UNKNOWN
from .thumbs import prune_thumbs, save_thumb, thumb_path
from .tracking import MIN_CLEAR_FACE_PX, MIN_SHARPNESS, Tracker, sharpness

if TYPE_CHECKING:
    from ..recognition.identify import Matcher

# Limits (bytes, pixels). A 640x480 JPEG from the page is 20-60 KB.
MAX_FRAME_BYTES = 2 * 1024 * 1024
MAX_FRAME_PIXELS = 1920 * 1080
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
# Live frames are searched at this width (faces from about 80 * 640 / 320 = 160 px in a 640 px frame).
DEFAULT_DETECT_WIDTH = 320
# "Add person": frames with exactly one clear face enrolled, at least this far apart in time.
DEFAULT_ENROL_FRAMES = 10
ENROL_INTERVAL_S = 0.15
# How often the gallery file is checked for changes made by another program (`facenet gallery`).
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
class Enrolling:
    name: str
    wanted: int
    added: int = 0
    last: float = 0.0
    skipped: dict = field(default_factory=dict)  # reason -> frames not enrolled

    def to_dict(self) -> dict:
        return {"name": self.name, "added": self.added, "wanted": self.wanted, "done": self.added >= self.wanted,
                "skipped": dict(self.skipped)}


@dataclass
class SocketState:
    """What the server keeps per WebSocket: its tracks, enrolment and answer times."""

    tracker: Tracker = field(default_factory=Tracker)
    enrolling: Enrolling | None = None
    answered: deque = field(default_factory=deque)
    received: int = 0
    dropped: int = 0
    reveal: bool = False  # name the nearest person of faces answered unknown (`/ws?reveal=1`)

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


class Engine:
    """Load the model once; answer frames, photos and gallery requests (thread-safe)."""

    def __init__(self, gallery_path: str | Path, model: str | None = None, device: str = "auto",
                 far: float | None = None, detect_width: int = DEFAULT_DETECT_WIDTH,
                 enrol_frames: int = DEFAULT_ENROL_FRAMES):
        from ..store.gallery import Gallery, resolve_for
        from ..pipeline.face_pipeline import FacePipeline, PipelineOptions

        if detect_width < 80:
            raise UsageError(f"--detect-width must be at least 80 pixels, not {detect_width}.")
        if enrol_frames < 1:
            raise UsageError(f"--enrol-frames must be at least 1, not {enrol_frames}.")
        self.gallery_path = Path(gallery_path)
        with Gallery(self.gallery_path, create=True) as gallery:
            record, self.model_ref, flip = resolve_for(gallery, model, None)
        self.far = far
        self.enrol_frames = enrol_frames
        self.pipeline = FacePipeline.build(PipelineOptions(model=self.model_ref, device=device, flip=flip, batch_size=8,
                                                           detector="hog", upsample="auto", faces="all"),
                                           record=record, verify=False)
        self.embedder = self.pipeline.embedder
        # Photos: searched exactly as `facenet identify` searches them.
        self.photo_aligner = self.pipeline.aligner
        # Frames: one detector pass at upsample 0 on a copy at most detect_width wide.
        self.live_aligner = self.pipeline.aligner_with(upsample=0, pixel_budget=detect_width * detect_width * 3 // 4)
        self._lock = threading.RLock()
        self._view: GalleryView | None = None
        self._signature: tuple | None = None
        self._checked = 0.0
        self._version = 0
        self.view()  # fail now, not at the first frame, if the gallery cannot be read

    # ------------------------------------------------------------ the gallery, as matcher and map

    def _gallery(self):
        """The gallery for reading: until its first face is enrolled there is no file (the gallery
        module makes it at the first commit), and that is an empty gallery, not an error."""
        from ..store.gallery import Gallery

        return Gallery(self.gallery_path, create=not self.gallery_path.exists())

    @property
    def record(self):
        return self.embedder.record

    def _file_signature(self) -> tuple:
        parts = []
        for suffix in ("", "-wal"):
            try:
                info = (self.gallery_path.parent / (self.gallery_path.name + suffix)).stat()
                parts.append((info.st_mtime_ns, info.st_size))
            except OSError:
                parts.append(None)
        return tuple(parts)

    def invalidate(self) -> None:
        with self._lock:
            self._signature = None

    def view(self) -> GalleryView:
        """The current matcher and map; re-read when our writes or another program changed the file."""
        with self._lock:
            now = time.monotonic()
            if self._view is not None and self._signature is not None and now - self._checked < GALLERY_POLL_S:
                return self._view
            self._checked = now
            signature = self._file_signature()
            if self._view is not None and signature == self._signature:
                return self._view
            self._version += 1
            self._view = self._build_view(self._version)
            self._signature = signature
            return self._view

    def _build_view(self, version: int) -> GalleryView:
        from ..recognition.identify import matcher_for

        with self._gallery() as gallery:
            if len(gallery) == 0:
                return GalleryView(version, None)
            enrolment = gallery.enrolment()
        matcher = matcher_for(enrolment, far=self.far)
        vectors = enrolment.embeddings.astype(np.float64)
        mean = vectors.mean(axis=0)
        centred = vectors - mean
        axes = np.zeros((vectors.shape[1], 2))
        if len(vectors) > 1:
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            k = min(2, vt.shape[0])
            axes[:, :k] = vt[:k].T
        xy = centred @ axes
        points = [{"face_id": int(fid), "person": enrolment.names[int(pi)], "x": finite(x, 5), "y": finite(y, 5)}
                  for fid, pi, (x, y) in zip(enrolment.face_ids, enrolment.person_index, xy)]
        return GalleryView(version, matcher, mean, axes, points, list(enrolment.names))

    # ------------------------------------------------------------ faces

    def _faces(self, rgb: np.ndarray, aligner) -> tuple[list, np.ndarray]:
        try:
            found = aligner.align(rgb)
        except NoFace:
            return [], np.zeros((0, self.embedder.dim), dtype=np.float32)
        return found, self.embedder.embed([f.image for f in found])

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
        found, vectors = self._faces(rgb, self.live_aligner)
        view = self.view()
        answers = self._answers(view, vectors)
        clear = [f.box.width >= MIN_CLEAR_FACE_PX and sharpness(f.image) >= MIN_SHARPNESS for f in found]
        tracks = state.tracker.update([tuple(self._box(f)) for f in found], clear)
        enrol = None
        if state.enrolling is not None:
            enrol = self._enrol_from_frame(state, data, found, vectors, clear)
            if enrol.get("added_face"):
                view = self.view()
                answers = self._answers(view, vectors)
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
                "process_ms": round((time.perf_counter() - started) * 1000, 1), "enrol": enrol}

    def start_enrolling(self, state: SocketState, name: str, count: int | None = None) -> dict:
        from ..store.gallery import normalise_name

        person = normalise_name(str(name))
        wanted = self.enrol_frames if count is None else int(count)
        if not 1 <= wanted <= 100:
            raise UsageError(f"Enrol between 1 and 100 frames, not {wanted}.")
        state.enrolling = Enrolling(person, wanted)
        return state.enrolling.to_dict()

    def _enrol_from_frame(self, state: SocketState, data: bytes, found: list, vectors: np.ndarray,
                          clear: list[bool]) -> dict:
        job = state.enrolling
        reason = None
        if len(found) != 1:
            reason = "no face" if not found else "several faces"
        elif not clear[0]:
            reason = "face small or blurred"
        elif time.monotonic() - job.last < ENROL_INTERVAL_S:
            reason = "too soon after the last one"
        result = job.to_dict()
        if reason:
            job.skipped[reason] = job.skipped.get(reason, 0) + 1
            result["skipped"] = dict(job.skipped)
            return result
        sha = hashlib.sha256(data).hexdigest()
        face_id = self._enrol(job.name, vectors[0], found[0].image, sha, f"serve:camera/{sha[:12]}.jpg",
                              tuple(self._box(found[0])))
        if face_id is None:
            job.skipped["same image again"] = job.skipped.get("same image again", 0) + 1
        else:
            job.added += 1
            job.last = time.monotonic()
        result = job.to_dict()
        result["added_face"] = face_id
        if job.added >= job.wanted:
            state.enrolling = None
        return result

    def _enrol(self, name: str, vector: np.ndarray, crop: np.ndarray, sha: str, source: str,
               box: tuple[int, int, int, int]) -> int | None:
        from ..store.gallery import Gallery

        with self._lock, Gallery(self.gallery_path, create=True) as gallery:
            if gallery.model is None:
                gallery.bind(self.record, self.model_ref, self.embedder.flip)
            face_id = gallery.add_face(name, vector, source, sha, box)
            if face_id is not None:
                save_thumb(self.gallery_path, sha, crop)
            gallery.keep_index_current()  # a search index beside the gallery stays current
            self.invalidate()
        return face_id

    # ------------------------------------------------------------ the HTTP API

    def identify_photo(self, data: bytes, reveal: bool = False) -> dict:
        """Every face of a photo: box, name (or unknown), distance, estimated FAR, embedding; the
        nearest people of a face answered unknown (best_match, candidates) only with `reveal`."""
        rgb = decode_image(data, MAX_UPLOAD_PIXELS)
        found, vectors = self._faces(rgb, self.photo_aligner)
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
            try:
                found = self.photo_aligner.align(rgb)
            except NoFace:
                raise UsageError(f"{what} has no face we could find; send a photo with a visible face.") from None
            largest = max(found, key=lambda face: face.box.area)
            chosen.append((largest, self.embedder.embed([largest.image])[0], len(found)))
        distance = float(squared_distances(chosen[0][1][None], chosen[1][1][None])[0, 0])
        return {"model": self.record.name, "squared_l2": finite(distance, 6), "threshold": self.record.threshold,
                "same_person": distance <= self.record.threshold,
                "faces": [{"box": self._box(f), "faces_in_image": n} for f, _, n in chosen]}

    def enrol_photo(self, name: str, data: bytes) -> dict:
        """Enrol the one face of a photo under `name`."""
        from ..store.gallery import normalise_name

        person = normalise_name(name)
        rgb = decode_image(data, MAX_UPLOAD_PIXELS)
        found, vectors = self._faces(rgb, self.photo_aligner)
        if len(found) != 1:
            raise UsageError("The photo has no face we could find; send a photo of that person's face." if not found
                             else f"The photo has {len(found)} faces; send a photo with only {person}'s face.")
        sha = hashlib.sha256(data).hexdigest()
        face_id = self._enrol(person, vectors[0], found[0].image, sha, f"serve:upload/{sha[:12]}.jpg",
                              tuple(self._box(found[0])))
        if face_id is None:
            raise DuplicateImage("This image is in the gallery already.")
        return {"person": person, "face_id": face_id, "box": self._box(found[0])}

    def listing(self) -> dict:
        with self._gallery() as gallery:
            people = gallery.people()
            faces = gallery.faces()
        view = self.view()
        thumbs: dict[str, str] = {}  # person -> their first face with a thumbnail
        face_rows = []
        for face in faces:
            path = thumb_path(self.gallery_path, face.image_sha256)
            url = f"api/gallery/thumbs/{face.image_sha256}.jpg" if path is not None and path.is_file() else None
            if url:
                thumbs.setdefault(face.person, url)
            face_rows.append({"id": face.id, "person": face.person, "thumbnail": url,
                              "source": Path(face.source.replace("\\", "/")).name})
        return {"model": self.record.name, "flip": self.embedder.flip, "gallery_version": view.version,
                "people": [{"name": n, "faces": c, "thumbnail": thumbs.get(n)} for n, c in people],
                "faces": face_rows}

    def thumbnail(self, image_sha256: str) -> bytes | None:
        path = thumb_path(self.gallery_path, image_sha256)
        if path is None or not path.is_file():
            return None
        return path.read_bytes()

    def map(self) -> dict:
        view = self.view()
        return {"gallery_version": view.version, "people": view.people, "points": view.points}

    def _after_removal(self, gallery) -> None:
        gallery.keep_index_current()
        prune_thumbs(self.gallery_path, {f.image_sha256 for f in gallery.faces()})
        self.invalidate()

    def remove_person(self, name: str) -> dict:
        with self._lock, self._gallery() as gallery:
            if name not in {n for n, _ in gallery.people()}:
                raise NotFound(f"No one called {name!r} is in the gallery.")
            removed = gallery.remove_person(name)
            self._after_removal(gallery)
        return {"person": name, "removed_faces": removed}

    def remove_face(self, face_id: int) -> dict:
        with self._lock, self._gallery() as gallery:
            if not gallery.faces_by_id([face_id]):
                raise NotFound(f"No face with id {face_id} is in the gallery.")
            person = gallery.remove_face(face_id)
            self._after_removal(gallery)
        return {"face_id": face_id, "person": person}

    def move_face(self, face_id: int, name: str) -> dict:
        with self._lock, self._gallery() as gallery:
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
