"""The FastAPI app of `facenet serve`: the page, the live WebSocket and the HTTP API.

WebSocket `/ws` protocol (one socket per browser tab):
- client -> server, binary: one JPEG (or PNG) frame. The server keeps only the newest frame per
  socket: a frame that arrives while the previous one waits is replaced (counted in `dropped`),
  never queued, so answers never lag behind the camera. Frames are numbered 1, 2, ... in the
  order received; `frame_id` in an answer is that number.
- client -> server, text: JSON `{"type": "enrol", "name": "Ada", "count": 10, "track": 7}` (clear
  frames of the face of track 7, or without `track` of the face alone in view, are enrolled; a
  face the gallery names as someone else is refused: serve/enrolling.py) or `{"type": "cancel"}`.
- server -> client, text: JSON `{"type": "hello", ...}` once, then `{"type": "faces", "frame_id",
  "faces": [{"box", "name" (a person or "unknown"), "label" (the name once the face is stable,
  else null), "distance", "far", "stable", "track", "map"}], "fps", "latency_ms", "dropped",
  "enrol", "threshold", "smallest_face_px"}` per processed frame, and `{"type": "error", "message"}` for a refused command.
- A frame over the size limit closes that socket with code 1009, a payload that is no image or
  a malformed command (see `Command`: JSON checked against a schema) with 1007; other sockets and
  the server go on.
- `/ws?reveal=1` (and `POST /api/identify?reveal=1`) adds `best_match` (and `candidates`) to faces
  answered `unknown`; by default they name no one.

Who may talk to the server (`Guard`): a request's `Host` must name an address the server serves
(or an `--allowed-host`), so a page that rebinds its own DNS name to 127.0.0.1 gets 403; an
`Origin` header, where present, must be the server's own origin, so another site's page gets 403
and its WebSocket is closed (1008); and every POST or DELETE carries the per-process
`X-Facenet-CSRF` header (the page gets it in its HTML, scripts from `GET /api/csrf`) or the
`--token` in a header, because a browser sends a cross-site form POST without either.
"""
from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
import time
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Annotated, Literal, Optional, Union
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from ..errors import FacenetError, UsageError
from .engine import (MAX_FRAME_BYTES, MAX_UPLOAD_BYTES, DuplicateImage, Engine, ImageRefused, NotFound,
                     SocketState, looks_like_image)
from .hosts import HostPolicy

STATIC = Path(__file__).with_name("static")
TOKEN_COOKIE = "facenet_token"
TOKEN_HEADER = b"x-facenet-token"
CSRF_HEADER = "X-Facenet-CSRF"
CSRF_PLACEHOLDER = "__FACENET_CSRF__"  # in static/index.html, replaced by the process's CSRF value
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FACE_ID = 2**63 - 1  # the gallery's ids are SQLite integers
# Status codes for closing a socket (RFC 6455): refused payload, message too big.
CLOSE_BAD_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008
CLOSE_SERVER_ERROR = 1011
# Every HTTP answer: no sniffing, no embedding in another site's page (clickjacking), no loading
# as another site's <img> or <script> (Chromium enforces CORP), no token leaking in a Referer.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"cross-origin-resource-policy", b"same-origin"), (b"referrer-policy", b"no-referrer")]
PAGE_POLICY = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
               "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'; "
               "base-uri 'none'; form-action 'none'; object-src 'none'")


@dataclass
class ServeConfig:
    token: str | None = None  # required on every request and socket when set
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    workers: int = 1  # frames processed at once, over all sockets
    host: str = "127.0.0.1"  # the address bound: the Host names answered follow from it
    port: int | None = None  # the port bound; None (an app not yet bound, as in tests) accepts any port
    allowed_hosts: tuple[str, ...] = ()  # --allowed-host: NAME or NAME:PORT, e.g. a reverse proxy's name
    # Proof of a same-origin request on every POST and DELETE; new per process (a restart
    # invalidates the pages of the previous one, which then reload).
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


# ------------------------------------------------------------------ ASGI guards

class _BodyTooLarge(BaseException):
    """Raised from `receive` past the limit; a BaseException so that no handler in between
    (FastAPI turns an Exception while parsing a form into a 400) swallows it."""


class Guard:
    """Pure ASGI middleware for HTTP and WebSocket alike, in this order: the Host, the token, the
    Origin (and Sec-Fetch-Site for the API), the same-origin proof of a POST or DELETE, then the
    body size limit.

    The token may come as `?token=`, an `X-Facenet-Token` header, `Authorization: Bearer`, or the
    cookie set when the page was opened with `?token=` (so the page's own requests carry it).
    A browser attaches that cookie to a cross-site form too (SameSite counts every port of a host
    as one site), so a POST or DELETE needs the `X-Facenet-CSRF` header, or the token in a header:
    a page of another origin can set neither without a CORS preflight, which this server refuses.
    """

    def __init__(self, app, token: str | None, max_body: int, hosts: HostPolicy | None = None,
                 csrf: str | None = None):
        self.app = app
        self.token = token
        self.max_body = max_body
        self.hosts = hosts or HostPolicy("127.0.0.1", None)
        self.csrf = csrf

    def _supplied(self, scope) -> tuple[str | None, str | None]:
        """The token offered and how: "query", "header", "cookie" (None, None without one)."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], "query"
        headers = dict(scope.get("headers") or [])
        if TOKEN_HEADER in headers:
            return headers[TOKEN_HEADER].decode("latin-1"), "header"
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), "header"
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:  # a malformed cookie header is no token
            return None, None
        return (cookie[TOKEN_COOKIE].value, "cookie") if TOKEN_COOKIE in cookie else (None, None)

    def _refusal(self, scope) -> tuple[int, str] | None:
        """Who sends this request: (status, sentence) to refuse it, None to let it through to the token."""
        headers = scope.get("headers") or []
        hosts = [v.decode("latin-1") for k, v in headers if k == b"host"]
        if len(hosts) != 1 or not self.hosts.allows(hosts[0]):
            return 403, (f"This server answers only requests addressed to {self.hosts.described()}; behind a "
                         "reverse proxy, start it with --allowed-host NAME.")
        origins = [v.decode("latin-1") for k, v in headers if k == b"origin"]
        if origins and (len(origins) > 1 or not self.hosts.allows_origin(origins[0], hosts[0])):
            return 403, "Requests from pages of another web site are refused (the Origin is not this server)."
        # Browsers without an Origin on a cross-site read still say where it comes from.
        site = dict(headers).get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if scope["path"].startswith("/api/") and site in ("cross-site", "same-site"):
            return 403, "Requests from pages of another web site are refused (Sec-Fetch-Site: cross-site)."
        return None

    def _proven(self, scope, token_how: str | None) -> bool:
        """A POST or DELETE from the server's own page or a script, not another site's form."""
        if token_how == "header":
            return True
        offered = [v for k, v in scope.get("headers") or [] if k == CSRF_HEADER.lower().encode()]
        return (self.csrf is not None and len(offered) == 1
                and secrets.compare_digest(offered[0], self.csrf.encode()))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        websocket = scope["type"] == "websocket"

        async def refuse(status: int, sentence: str, reason: str):
            if websocket:
                await receive()  # the connect message
                await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason})
            else:
                await _send_json(send, status, {"detail": sentence})

        refused = self._refusal(scope)
        if refused:
            return await refuse(*refused, reason="refused: Host or Origin is not this server")
        token_how = None
        if self.token:
            supplied, token_how = self._supplied(scope)
            if not supplied or not secrets.compare_digest(supplied.encode(), self.token.encode()):
                return await refuse(401, "This server needs its token: open the URL that `facenet serve` printed "
                                    "(with ?token=...) or send the X-Facenet-Token header.", reason="token required")
        if websocket:
            return await self.app(scope, receive, send)
        if scope["method"] not in SAFE_METHODS and not self._proven(scope, token_how):
            return await refuse(403, f"Changes need the {CSRF_HEADER} header: the page sends it (reload it after a "
                                "restart of the server), scripts read it from GET /api/csrf or send the --token "
                                "in a header.", reason="")
        from_query = token_how == "query"

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
                extra = list(SECURITY_HEADERS)
                if from_query:  # the page's own requests then carry the token
                    cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    extra.append((b"set-cookie", cookie.encode("latin-1")))
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(self.max_body))


def _too_large(limit: int) -> dict:
    return {"detail": f"The upload is over the limit of {limit:,} bytes; send a smaller image."}


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body, allow_nan=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *SECURITY_HEADERS]})
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

    # /docs: a page of our own (static/docs.html) from /openapi.json; FastAPI's loads Swagger UI from a CDN.
    app = FastAPI(title="facenet serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Live face recognition on a gallery, and the same as plain HTTP for scripts. "
                  "Names come from the gallery behind the unknown gate of `facenet identify`.")
    app.add_middleware(Guard, token=config.token, max_body=config.max_upload_bytes,
                       hosts=HostPolicy(config.host, config.port, config.allowed_hosts), csrf=config.csrf)
    # Documents the header in /openapi.json (and so in /docs); Guard does the checking.
    csrf_header = [Depends(APIKeyHeader(name=CSRF_HEADER, auto_error=False,
                                        description="The value of GET /api/csrf (new per server process)."))]

    @app.exception_handler(RequestValidationError)
    async def malformed(_request, exc: RequestValidationError):
        """FastAPI's list of errors as one sentence."""
        first = (exc.errors() or [{}])[0]
        where = " ".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"The {where} is missing or malformed ({first.get('msg', 'invalid')})."},
                            status_code=422)

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

    page_html = (STATIC / "index.html").read_text(encoding="utf-8").replace(CSRF_PLACEHOLDER, html.escape(config.csrf))

    @app.get("/", include_in_schema=False)
    async def page():
        # The CSRF value is in the page itself, never in a cookie: cookies are shared by every
        # port of a host, so another local server's page could read one.
        return Response(page_html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": PAGE_POLICY})

    @app.get("/api/csrf", summary="The X-Facenet-CSRF value that POST and DELETE requests send",
             response_class=PlainTextResponse)
    async def csrf():
        """Plain text, for scripts: `curl -H "X-Facenet-CSRF: $(curl -s http://127.0.0.1:8000/api/csrf)" ...`.
        Pages of other sites cannot read it (no CORS), and forged Host names are refused."""
        return PlainTextResponse(config.csrf, headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    async def api_docs():
        return Response((STATIC / "docs.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})

    @app.post("/api/identify", summary="Name every face in a photo", dependencies=csrf_header)
    async def identify_photo(image: UploadFile = File(..., description="A JPEG or PNG photo."),
                             reveal: bool = Query(False, description="Also name the nearest person (best_match, "
                                                  "candidates) of faces answered unknown.")):
        """Boxes, names (or `unknown`), distances, estimated false-alarm rates and embeddings of every
        face, from the gallery and its unknown gate (the same answers as `facenet identify`)."""
        return await call(engine.identify_photo, await read_upload(image), reveal)

    @app.post("/api/compare", summary="Distance between the faces of two photos", dependencies=csrf_header)
    async def compare(first: UploadFile = File(...), second: UploadFile = File(...)):
        """Squared L2 distance between the largest face of each photo, and the model's same/different verdict."""
        return await call(engine.compare_photos, await read_upload(first), await read_upload(second))

    @app.get("/api/gallery", summary="People and faces in the gallery")
    async def gallery():
        return await call(engine.listing)

    @app.post("/api/gallery/people/{name}/faces", summary="Enrol a photo of a person", status_code=201,
              dependencies=csrf_header)
    async def add_face(name: str, image: UploadFile = File(...)):
        """The photo must hold exactly one face; the person is created when new (names follow the
        gallery's rules: no slashes, no '..', no control characters, not 'unknown')."""
        return await call(engine.enrol_photo, name, await read_upload(image))

    @app.delete("/api/gallery/people/{name}", summary="Remove a person and all their faces",
                dependencies=csrf_header)
    async def remove_person(name: str):
        return await call(engine.remove_person, name)

    @app.delete("/api/gallery/faces/{face_id}", summary="Remove one face", dependencies=csrf_header)
    async def remove_face(face_id: str):
        return await call(engine.remove_face, parse_face_id(face_id))

    @app.post("/api/gallery/people/{name}/rename", summary="Rename a person (or merge them into another)",
              dependencies=csrf_header)
    async def rename_person(name: str, new_name: str = Form(..., description="Their new name; an existing "
                                                             "person's to merge the two.")):
        """Every face of the person at once, in one transaction: recognition never sees them half moved."""
        return await call(engine.rename_person, name, new_name)

    @app.post("/api/gallery/faces/{face_id}/move", summary="Give a face to another person", dependencies=csrf_header)
    async def move_face(face_id: str, name: str = Form(..., description="The person it belongs to.")):
        return await call(engine.move_face, parse_face_id(face_id), name)

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


def parse_face_id(text: str) -> int:
    """A face id from a URL: ASCII digits within SQLite's integer range, else 404 (no such face)."""
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_FACE_ID:
        raise HTTPException(404, "No face has that id; the ids are the numbers GET /api/gallery lists.")
    return int(text)


class EnrolCommand(BaseModel):
    """`{"type": "enrol", "name": "Ada", "count": 10}`: enrol the next clear frames (count optional)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["enrol"]
    name: StrictStr = Field(max_length=1000)
    count: Optional[StrictInt] = Field(None, ge=1, le=100)
    track: Optional[StrictInt] = Field(None, ge=1, le=2**53)  # the face clicked (its `track` in an answer)


class CancelCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["cancel"]


# The one reader of socket commands: pydantic's JSON parser has its own nesting limit (no
# RecursionError), refuses Infinity/NaN and fractions for count, and names that are not strings.
Command = TypeAdapter(Annotated[Union[EnrolCommand, CancelCommand], Field(discriminator="type")])


def _command_problem(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("enrol", "cancel"))
    return f"bad command{' field ' + where if where else ''}: {first.get('msg', 'invalid')}"


async def live_socket(socket: WebSocket, engine: Engine, config: ServeConfig, run) -> None:
    """One browser tab: receive frames into a one-frame slot, answer from a worker thread."""
    await socket.accept()
    reveal = socket.query_params.get("reveal", "").lower() in ("1", "true", "yes")
    state = SocketState(reveal=reveal)
    slot: list = []  # at most one (frame_id, bytes, received_at): the newest frame
    ready = asyncio.Event()
    send_lock = asyncio.Lock()

    async def send(message: dict) -> None:
        async with send_lock:
            await socket.send_text(json.dumps(message, allow_nan=False))

    async def close(code: int, reason: str) -> None:
        # A close reason is at most 123 bytes of UTF-8.
        reason = reason.encode("utf-8")[:120].decode("utf-8", "ignore")
        try:
            await socket.close(code=code, reason=reason)
        except (RuntimeError, OSError):
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
            except FacenetError as exc:  # e.g. the gallery file damaged meanwhile: its sentence
                await close(CLOSE_SERVER_ERROR, str(exc))
                return
            now = time.perf_counter()
            answer.update(fps=round(state.fps(now), 2), latency_ms=round((now - received) * 1000, 1),
                          dropped=state.dropped)
            try:
                await send(answer)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the client went away while its frame was processed

    try:
        view = await run(engine.view)  # may rebuild the gallery view: never on the event loop
    except FacenetError as exc:
        await close(CLOSE_SERVER_ERROR, str(exc))
        return
    try:
        await send({"type": "hello", "model": engine.record.name, "people": len(view.people),
                    "gallery_version": view.version, "max_frame_bytes": config.max_frame_bytes,
                    "enrol_frames": engine.enrol_frames})
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the client left at once
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
                command = Command.validate_json(text)
            except ValidationError as exc:
                await close(CLOSE_BAD_PAYLOAD, _command_problem(exc))
                break
            if isinstance(command, EnrolCommand):
                try:
                    status = engine.start_enrolling(state, command.name, command.count, command.track)
                except UsageError as exc:  # a name the gallery refuses: the socket goes on
                    await send({"type": "error", "message": str(exc)})
                else:
                    await send({"type": "enrol", **status})
            else:
                await send({"type": "enrol", **engine.cancel_enrolling(state)})
    except (WebSocketDisconnect, OSError):
        pass
    finally:
        worker.cancel()
