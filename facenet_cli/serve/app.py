"""The FastAPI app of `facenet serve`: the page, the live WebSocket and the HTTP API.

WebSocket `/ws` protocol (one socket per browser tab):
- client -> server, binary: one JPEG (or PNG) frame. The server keeps only the newest frame per
  socket: a frame that arrives while the previous one waits is replaced (counted in `dropped`),
  never queued, so answers never lag behind the camera. Frames are numbered 1, 2, ... in the
  order received; `frame_id` in an answer is that number.
- client -> server, text: JSON `{"type": "enrol", "name": "Ada", "count": 10}` (the next frames
  with exactly one clear face are enrolled) or `{"type": "cancel"}`.
- server -> client, text: JSON `{"type": "hello", ...}` once, then `{"type": "faces", "frame_id",
  "faces": [{"box", "name" (a person or "unknown"), "label" (the name once the face is stable,
  else null), "distance", "far", "stable", "track", "map"}], "fps", "latency_ms", "dropped",
  "enrol"}` per processed frame, and `{"type": "error", "message"}` for a refused command.
- A frame over the size limit closes that socket with code 1009, a payload that is no image or
  a malformed command with 1007; other sockets and the server go on.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, File, Form, HTTPException, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import FacenetError, UsageError
from .engine import (MAX_FRAME_BYTES, MAX_UPLOAD_BYTES, DuplicateImage, Engine, ImageRefused, NotFound,
                     SocketState, looks_like_image)

STATIC = Path(__file__).with_name("static")
TOKEN_COOKIE = "facenet_token"
TOKEN_HEADER = b"x-facenet-token"
# Status codes for closing a socket (RFC 6455): refused payload, message too big.
CLOSE_BAD_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008


@dataclass
class ServeConfig:
    token: str | None = None  # required on every request and socket when set
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    workers: int = 1  # frames processed at once, over all sockets


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ ASGI guards

class _BodyTooLarge(BaseException):
    """Raised from `receive` past the limit; a BaseException so that no handler in between
    (FastAPI turns an Exception while parsing a form into a 400) swallows it."""


class Guard:
    """Pure ASGI middleware for HTTP and WebSocket alike: the token, then the body size limit.

    The token may come as `?token=`, an `X-Facenet-Token` header, `Authorization: Bearer`, or the
    cookie set when the page was opened with `?token=` (so the page's own requests carry it).
    """

    def __init__(self, app, token: str | None, max_body: int):
        self.app = app
        self.token = token
        self.max_body = max_body

    def _supplied(self, scope) -> tuple[str | None, bool]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], True
        headers = dict(scope.get("headers") or [])
        if TOKEN_HEADER in headers:
            return headers[TOKEN_HEADER].decode("latin-1"), False
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # a malformed cookie header is no token
            return None, False
        return (cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else None), False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from_query = False
        if self.token:
            supplied, from_query = self._supplied(scope)
            if not supplied or not secrets.compare_digest(supplied.encode(), self.token.encode()):
                if scope["type"] == "websocket":
                    await receive()  # the connect message
                    await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": "token required"})
                    return
                return await _send_json(send, 401, {"detail": "This server needs its token: open the URL that "
                                                    "`facenet serve` printed (with ?token=...) or send the "
                                                    "X-Facenet-Token header."})
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_json(send, 413, _too_large(self.max_body))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if from_query:  # the page's own requests then carry the token
                    cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    message = dict(message, headers=list(message.get("headers", [])) +
                                   [(b"set-cookie", cookie.encode("latin-1"))])
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(self.max_body))


def _too_large(limit: int) -> dict:
    return {"detail": f"The upload is over the limit of {limit:,} bytes; send a smaller image."}


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


# ------------------------------------------------------------------ the app

def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The web app around a loaded engine; serve it with uvicorn (see `facenet serve`)."""
    config = config or ServeConfig()
    executor = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="facenet-frames")
    @asynccontextmanager
    async def lifespan(_app):
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="facenet serve", version="1", lifespan=lifespan,
                  description="Live face recognition on a gallery, and the same as plain HTTP for scripts. "
                  "Names come from the gallery behind the unknown gate of `facenet identify`.")
    app.add_middleware(Guard, token=config.token, max_body=config.max_upload_bytes)

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def call(fn, *args):
        """Run an engine call off the event loop; its errors as HTTP errors with one sentence."""
        try:
            return await run(fn, *args)
        except ImageRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except DuplicateImage as exc:
            raise HTTPException(409, str(exc)) from None
        except UsageError as exc:
            raise HTTPException(422, str(exc)) from None
        except FacenetError as exc:
            raise HTTPException(500, str(exc)) from None

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, _too_large(config.max_upload_bytes)["detail"])
        return data

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post("/api/identify", summary="Name every face in a photo")
    async def identify_photo(image: UploadFile = File(..., description="A JPEG or PNG photo.")):
        """Boxes, names (or `unknown`), distances, estimated false-alarm rates and embeddings of every
        face, from the gallery and its unknown gate (the same answers as `facenet identify`)."""
        return await call(engine.identify_photo, await read_upload(image))

    @app.post("/api/compare", summary="Distance between the faces of two photos")
    async def compare(first: UploadFile = File(...), second: UploadFile = File(...)):
        """Squared L2 distance between the largest face of each photo, and the model's same/different verdict."""
        return await call(engine.compare_photos, await read_upload(first), await read_upload(second))

    @app.get("/api/gallery", summary="People and faces in the gallery")
    async def gallery():
        return await call(engine.listing)

    @app.post("/api/gallery/people/{name}/faces", summary="Enrol a photo of a person", status_code=201)
    async def add_face(name: str, image: UploadFile = File(...)):
        """The photo must hold exactly one face; the person is created when new (names follow the
        gallery's rules: no slashes, no '..', no control characters, not 'unknown')."""
        return await call(engine.enrol_photo, name, await read_upload(image))

    @app.delete("/api/gallery/people/{name}", summary="Remove a person and all their faces")
    async def remove_person(name: str):
        return await call(engine.remove_person, name)

    @app.delete("/api/gallery/faces/{face_id}", summary="Remove one face")
    async def remove_face(face_id: int):
        return await call(engine.remove_face, face_id)

    @app.post("/api/gallery/faces/{face_id}/move", summary="Give a face to another person")
    async def move_face(face_id: int, name: str = Form(..., description="The person it belongs to.")):
        return await call(engine.move_face, face_id, name)

    @app.get("/api/gallery/thumbs/{sha}.jpg", include_in_schema=False)
    async def thumbnail(sha: str):
        data = await run(engine.thumbnail, sha)
        if data is None:
            raise HTTPException(404, "No thumbnail for that face.")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/map", summary="The gallery in 2-D (PCA of its embeddings)")
    async def gallery_map():
        return await call(engine.map)

    @app.websocket("/ws")
    async def live(socket: WebSocket):
        await live_socket(socket, engine, config, run)

    return app


async def live_socket(socket: WebSocket, engine: Engine, config: ServeConfig, run) -> None:
    """One browser tab: receive frames into a one-frame slot, answer from a worker thread."""
    await socket.accept()
    state = SocketState()
    slot: list = []  # at most one (frame_id, bytes, received_at): the newest frame
    ready = asyncio.Event()
    send_lock = asyncio.Lock()

    async def send(message: dict) -> None:
        async with send_lock:
            await socket.send_text(json.dumps(message))

    async def close(code: int, reason: str) -> None:
        try:
            await socket.close(code=code, reason=reason[:120])
        except RuntimeError:
            pass  # closed already

    async def pump() -> None:
        while True:
            await ready.wait()
            ready.clear()
            if not slot:
                continue
            frame_id, data, received = slot.pop()
            try:
                answer = await run(engine.process_frame, data, state, frame_id)
            except ImageRefused as exc:
                await close(CLOSE_TOO_BIG if exc.status == 413 else CLOSE_BAD_PAYLOAD, str(exc))
                return
            now = time.perf_counter()
            answer.update(fps=round(state.fps(now), 2), latency_ms=round((now - received) * 1000, 1),
                          dropped=state.dropped)
            await send(answer)

    view = await run(engine.view)  # may rebuild the gallery view: never on the event loop
    await send({"type": "hello", "model": engine.record.name, "people": len(view.people),
                "gallery_version": view.version, "max_frame_bytes": config.max_frame_bytes,
                "enrol_frames": engine.enrol_frames})
    worker = asyncio.create_task(pump())
    try:
        while True:
            try:
                message = await socket.receive()
            except RuntimeError:  # the worker closed the socket (a refused frame)
                break
            if message["type"] == "websocket.disconnect":
                break
            if worker.done():
                break
            data = message.get("bytes")
            if data is not None:
                if len(data) > config.max_frame_bytes:
                    await close(CLOSE_TOO_BIG, f"frame over {config.max_frame_bytes} bytes")
                    break
                if not looks_like_image(data):
                    await close(CLOSE_BAD_PAYLOAD, "a frame must be a JPEG or PNG image")
                    break
                state.received += 1
                if slot:
                    state.dropped += 1
                    slot.clear()
                slot.append((state.received, data, time.perf_counter()))
                ready.set()
                continue
            text = message.get("text") or ""
            if len(text) > 10_000:
                await close(CLOSE_TOO_BIG, "command too long")
                break
            try:
                command = json.loads(text)
                kind = command["type"]
            except (ValueError, KeyError, TypeError):
                await close(CLOSE_BAD_PAYLOAD, 'a command must be JSON like {"type": "enrol", "name": "Ada"}')
                break
            if kind == "enrol":
                try:
                    count = command.get("count")
                    status = engine.start_enrolling(state, str(command.get("name", "")),
                                                    None if count is None else int(count))
                except (UsageError, ValueError, TypeError) as exc:
                    await send({"type": "error", "message": str(exc)})
                else:
                    await send({"type": "enrol", **status})
            elif kind == "cancel":
                state.enrolling = None
                await send({"type": "enrol", "name": None, "added": 0, "wanted": 0, "done": True})
            else:
                await close(CLOSE_BAD_PAYLOAD, f"unknown command type {str(kind)[:40]!r}")
                break
    except WebSocketDisconnect:
        pass
    finally:
        worker.cancel()
