"""`facenet serve` against pages of other sites and malformed input (issue 18).

A forged Host (DNS rebinding) and a foreign Origin get 403 (a WebSocket: 1008); a POST or DELETE
needs the X-Facenet-CSRF header; faces answered unknown name no one unless asked; WebSocket
commands are read by a schema (1007, never a traceback); face ids are ASCII digits in 64-bit
range (404 otherwise); a decompression bomb is 413. Then a real `facenet serve` process: it listens
on loopback only, refuses a forged Host, and in headless Chromium a page on 127.0.0.2 can neither
enrol, move, read the gallery nor open the socket, while the server's own page can."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from facenet_cli.store.sqlite import Gallery
from facenet_cli.images import read_rgb
from facenet_cli.serve.app import CSRF_HEADER, ServeConfig, create_app
from facenet_cli.serve.engine import Engine
from facenet_cli.serve.fakecam import compose_frame, jpeg
from tests.conftest import ROOT

BUSH = "George_W_Bush"
STRANGER = "Tony_Blair"
BASE = "http://127.0.0.1:8000"
WS = "ws://127.0.0.1:8000/ws"
CHROMIUM = Path("/usr/bin/chromium")


def photo(lfw_images, person: str, number: int) -> Path:
    return lfw_images / person / f"{person}_{number:04d}.jpg"


def one_sentence(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.endswith(".") and "\n" not in detail, detail
    return detail


@pytest.fixture(scope="module")
def engine(lfw_images, tmp_path_factory):
    """An engine on a gallery of one person (two faces), enrolled through the API."""
    engine = Engine(tmp_path_factory.mktemp("serve-security") / "people.gallery")
    client = TestClient(create_app(engine), base_url=BASE)
    csrf = client.get("/api/csrf").text
    for number in (1, 2):
        with open(photo(lfw_images, BUSH, number), "rb") as fh:
            response = client.post(f"/api/gallery/people/{BUSH}/faces", files={"image": ("a.jpg", fh)},
                                   headers={CSRF_HEADER: csrf})
        assert response.status_code == 201, response.text
    return engine


def people(engine) -> list:
    with Gallery(engine.gallery_path) as gallery:
        return gallery.people()


def post_face(client, name: str, path: Path, **headers):
    with open(path, "rb") as fh:
        return client.post(f"/api/gallery/people/{name}/faces", files={"image": (path.name, fh, "image/jpeg")},
                           headers=headers)


# ------------------------------------------------------------------ Host and Origin

def test_a_forged_host_is_refused_everywhere(engine):
    """DNS rebinding: a page whose own name resolves to 127.0.0.1 sends its name as Host."""
    client = TestClient(create_app(engine, ServeConfig(port=8000)), base_url="http://attacker.example:8000")
    for path in ("/api/gallery", "/api/map", "/", "/api/csrf",
                 "/api/gallery/thumbs/" + "0" * 64 + ".jpg"):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "--allowed-host" in one_sentence(response)
    assert "access-control-allow-origin" not in client.get("/api/gallery").headers
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("ws://attacker.example:8000/ws") as ws:
            ws.receive_json()
    assert closed.value.code == 1008
    # The right name on the wrong port, several Host headers, or none: refused too.
    own = TestClient(create_app(engine, ServeConfig(port=8000)), base_url=BASE)
    assert own.get("/api/gallery").status_code == 200
    assert own.get("/api/gallery", headers={"Host": "127.0.0.1:9999"}).status_code == 403
    assert own.get("/api/gallery", headers={"Host": "localhost:8000"}).status_code == 200
    assert own.get("/api/gallery", headers={"Host": "[::1]:8000"}).status_code == 200
    assert own.get("/api/gallery", headers={"Host": "127.0.0.1.attacker.example:8000"}).status_code == 403


def test_allowed_host_admits_a_reverse_proxys_name(engine):
    config = ServeConfig(port=8000, allowed_hosts=("faces.example.org",))
    proxied = TestClient(create_app(engine, config), base_url="https://faces.example.org")
    assert proxied.get("/api/gallery").status_code == 200
    csrf = proxied.get("/api/csrf").text
    # A proxy that rewrites Host to the server's own address: the page's origin is still the proxy's.
    rewritten = TestClient(create_app(engine, config), base_url=BASE)
    response = rewritten.delete("/api/gallery/people/Nobody",
                                headers={CSRF_HEADER: csrf, "Origin": "https://faces.example.org"})
    assert response.status_code == 404  # let through to the route: no such person
    assert rewritten.get("/api/gallery", headers={"Host": "other.example.org"}).status_code == 403


@pytest.mark.parametrize("origin", ["http://attacker.example", "http://127.0.0.2:8000", "http://127.0.0.1:9999",
                                    "null", "https://127.0.0.1:8000.attacker.example"])
def test_a_foreign_origin_is_refused(engine, lfw_images, origin):
    client = TestClient(create_app(engine), base_url=BASE)
    csrf = client.get("/api/csrf").text
    before = people(engine)
    # Even with the CSRF value (a stolen one), a page of another origin cannot enrol.
    response = post_face(client, "Mallory", photo(lfw_images, STRANGER, 1), Origin=origin, **{CSRF_HEADER: csrf})
    assert response.status_code == 403 and "another web site" in one_sentence(response)
    assert people(engine) == before
    assert client.get("/api/gallery", headers={"Origin": origin}).status_code == 403
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect(WS, headers={"Origin": origin}) as ws:
            ws.receive_json()
    assert closed.value.code == 1008
    # The server's own origin passes.
    with client.websocket_connect(WS, headers={"Origin": BASE}) as ws:
        assert ws.receive_json()["type"] == "hello"
    assert client.get("/api/gallery", headers={"Origin": BASE}).status_code == 200


def test_cross_site_reads_of_the_api_are_refused(engine):
    """A browser that sends no Origin on a cross-site read still says Sec-Fetch-Site; answers
    carry no CORS permission, and CORP keeps them out of another site's <img> or <script>."""
    client = TestClient(create_app(engine), base_url=BASE)
    for site in ("cross-site", "same-site"):
        assert client.get("/api/gallery", headers={"Sec-Fetch-Site": site}).status_code == 403
    own = client.get("/api/gallery", headers={"Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200
    assert "access-control-allow-origin" not in own.headers
    assert own.headers["cross-origin-resource-policy"] == "same-origin"
    assert own.headers["x-content-type-options"] == "nosniff"
    page = client.get("/", headers={"Sec-Fetch-Site": "cross-site"})  # a link from elsewhere opens the page
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.options("/api/gallery/people/X/faces", headers={
        "Origin": "http://attacker.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-facenet-csrf"}).status_code == 403  # no preflight passes


# ------------------------------------------------------------------ the same-origin proof

def test_changes_need_the_csrf_header(engine, lfw_images):
    """A cross-site form POST (multipart, or urlencoded to move a face) from a browser that sends
    no Origin carries no X-Facenet-CSRF header: refused; with it, the change is made."""
    client = TestClient(create_app(engine), base_url=BASE)
    before = people(engine)
    face_id = client.get("/api/gallery").json()["faces"][0]["id"]
    for headers in ({}, {CSRF_HEADER: "guessed"}, {CSRF_HEADER: ""}):
        refused = post_face(client, "Mallory", photo(lfw_images, STRANGER, 1), **headers)
        assert refused.status_code == 403 and CSRF_HEADER in one_sentence(refused)
        assert client.post(f"/api/gallery/faces/{face_id}/move", data={"name": "Mallory"},
                           headers=headers).status_code == 403
        assert client.delete(f"/api/gallery/faces/{face_id}", headers=headers).status_code == 403
        assert client.delete(f"/api/gallery/people/{BUSH}", headers=headers).status_code == 403
    assert people(engine) == before
    # The page carries the value; scripts read it from GET /api/csrf.
    csrf = client.get("/api/csrf").text
    assert f'<meta name="facenet-csrf" content="{csrf}">' in client.get("/").text
    moved = client.post(f"/api/gallery/faces/{face_id}/move", data={"name": "Moved"}, headers={CSRF_HEADER: csrf})
    assert moved.status_code == 200
    back = client.post(f"/api/gallery/faces/{face_id}/move", data={"name": BUSH}, headers={CSRF_HEADER: csrf})
    assert back.status_code == 200 and people(engine) == before
    # Another process has another value.
    other = TestClient(create_app(engine), base_url=BASE)
    assert other.get("/api/csrf").text != csrf
    assert other.delete("/api/gallery/people/Nobody", headers={CSRF_HEADER: csrf}).status_code == 403


# ------------------------------------------------------------------ best_match of strangers

def test_unknown_faces_name_no_one_unless_asked(engine, lfw_images):
    client = TestClient(create_app(engine), base_url=BASE)
    csrf = client.get("/api/csrf").text
    stranger = photo(lfw_images, STRANGER, 1)
    for url, revealed in (("/api/identify", False), ("/api/identify?reveal=1", True)):
        with open(stranger, "rb") as fh:
            face = client.post(url, files={"image": ("s.jpg", fh)}, headers={CSRF_HEADER: csrf}).json()["faces"][0]
        assert face["name"] == "unknown"
        assert face["best_match"] == (BUSH if revealed else None)
        assert bool(face["candidates"]) is revealed
    frame = jpeg(compose_frame([read_rgb(stranger)], 400))
    for url, revealed in ((WS, False), (WS + "?reveal=1", True)):
        with client.websocket_connect(url) as ws:
            ws.receive_json()
            ws.send_bytes(frame)
            while (message := ws.receive_json())["type"] != "faces":
                pass
        face = message["faces"][0]
        assert face["name"] == "unknown" and face["best_match"] == (BUSH if revealed else None)
        assert BUSH not in json.dumps(message) or revealed


def test_answers_are_strict_json():
    """NaN or infinite numbers become null: a JSON answer never holds NaN or Infinity."""
    from facenet_cli.recognition.identify import Answer, Candidate

    answer = Answer(name="unknown", person="Ada", distance=float("nan"), score=float("inf"), far=float("nan"),
                    candidates=[Candidate("Ada", float("inf"))])
    shown = Engine._answer_dict(answer, reveal=True)
    json.dumps(shown, allow_nan=False)
    assert shown["distance"] is None and shown["score"] is None and shown["far"] is None


def test_far_must_be_a_share(tmp_path):
    for value in ("nan", "inf", "0", "1.5"):
        result = subprocess.run([sys.executable, "-m", "facenet_cli", "serve", str(tmp_path / "g.gallery"),
                                 "--port", "0", "--far", value], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "--far" in result.stderr and "Traceback" not in result.stderr, value


# ------------------------------------------------------------------ malformed socket commands

NESTED = "[" * 5000
BAD_COMMANDS = [
    '{"type": "enrol", "name": {"a": 1}}', '{"type": "enrol", "name": null}', '{"type": "enrol", "name": 7}',
    '{"type": "enrol", "name": "Ada", "count": Infinity}', '{"type": "enrol", "name": "Ada", "count": NaN}',
    '{"type": "enrol", "name": "Ada", "count": 1e400}', '{"type": "enrol", "name": "Ada", "count": 1e12}',
    '{"type": "enrol", "name": "Ada", "count": 99999999999999999999999}',
    '{"type": "enrol", "name": "Ada", "count": 2.5}', '{"type": "enrol", "name": "Ada", "count": true}',
    '{"type": "enrol", "name": "Ada", "count": "5"}', '{"type": "enrol", "name": "Ada", "admin": true}',
    '{"type": "enrol"}', '{"type": ["enrol"]}', "[]", '"enrol"', "null", NESTED, '{"a":' * 1900,
    '{"type": "\u00e9' + "\u00e9" * 200 + '"}',
]


@pytest.mark.parametrize("text", BAD_COMMANDS, ids=range(len(BAD_COMMANDS)))
def test_malformed_commands_close_with_1007(engine, text):
    client = TestClient(create_app(engine), base_url=BASE)
    with client.websocket_connect(WS) as ws:
        ws.receive_json()
        ws.send_text(text)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1007
    assert len(closed.value.reason.encode()) <= 123
    assert people(engine) == [(BUSH, 2)]


def test_well_formed_commands_still_work(engine):
    client = TestClient(create_app(engine), base_url=BASE)
    with client.websocket_connect(WS) as ws:
        ws.receive_json()
        ws.send_text('{"type": "enrol", "name": "Ada", "count": 4}')
        assert ws.receive_json() == {"type": "enrol", "name": "Ada", "added": 0, "wanted": 4, "done": False,
                                     "skipped": {}, "track": None}
        ws.send_text('{"type": "cancel"}')
        assert ws.receive_json()["done"] is True
        ws.send_text('{"type": "enrol", "name": "unknown"}')  # the gallery's own rule: a message, not a close
        assert ws.receive_json()["type"] == "error"


# ------------------------------------------------------------------ face ids

@pytest.mark.parametrize("face_id", ["99999999999999999999999", "9223372036854775808", "\u0661\u0662", "-1", "1e3",
                                     "0x10", "+1", " 1", "\uff11"])
def test_face_ids_beyond_range_or_not_ascii_digits_are_404(engine, face_id):
    client = TestClient(create_app(engine), base_url=BASE)
    csrf = client.get("/api/csrf").text
    for response in (client.delete(f"/api/gallery/faces/{face_id}", headers={CSRF_HEADER: csrf}),
                     client.post(f"/api/gallery/faces/{face_id}/move", data={"name": "X"},
                                 headers={CSRF_HEADER: csrf})):
        assert response.status_code == 404
        assert "id" in one_sentence(response)
    assert people(engine) == [(BUSH, 2)]
    assert client.delete("/api/gallery/faces/9223372036854775807", headers={CSRF_HEADER: csrf}).status_code == 404


# ------------------------------------------------------------------ decompression bomb

def bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side x side pixels: some 50 KB on disk, 400 Mpx decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    rows = zlib.compress(bytes(side * ((side + 7) // 8 + 1)), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_413(engine, tmp_path):
    from facenet_cli.errors import BadImage

    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    client = TestClient(create_app(engine), base_url=BASE)
    csrf = client.get("/api/csrf").text
    with open(bomb, "rb") as fh:
        response = client.post("/api/identify", files={"image": ("bomb.png", fh)}, headers={CSRF_HEADER: csrf})
    assert response.status_code == 413 and "pixels" in one_sentence(response)
    with client.websocket_connect(WS) as ws:  # as a live frame: too big (1009), not a bad payload
        ws.receive_json()
        ws.send_bytes(bomb.read_bytes())
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                ws.receive_json()
    assert closed.value.code == 1009
    # Other commands still see a BadImage with the same sentence (a per-file outcome).
    with pytest.raises(BadImage, match="too large to decode safely"):
        read_rgb(bomb)


# ------------------------------------------------------------------ a real `facenet serve`

@pytest.fixture(scope="module")
def served(lfw_images, tmp_path_factory):
    """`facenet serve` as its own process on 127.0.0.1 (a free port), with one face enrolled the
    way a script does: the CSRF value read from the line it prints at start."""
    import httpx

    folder = tmp_path_factory.mktemp("served")
    log = folder / "stderr.log"
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "facenet_cli", "serve", str(folder / "people.gallery"),
                                    "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("facenet serve: open http://127.0.0.1:"), line + log.read_text()
        base = line.split("open ", 1)[1].strip()
        for _ in range(100):  # the line on stderr follows the URL on stdout
            found = re.search(r"X-Facenet-CSRF: (\S+) ", log.read_text())
            if found:
                break
            time.sleep(0.05)
        csrf = found.group(1)
        with open(photo(lfw_images, BUSH, 1), "rb") as fh:
            added = httpx.post(base + f"api/gallery/people/{BUSH}/faces", files={"image": ("a.jpg", fh)},
                               headers={CSRF_HEADER: csrf}, timeout=60)
        assert added.status_code == 201, added.text
        yield {"base": base, "port": int(base.rsplit(":", 1)[1].strip("/")), "csrf": csrf, "process": process,
               "log": log, "gallery": folder / "people.gallery", "face_id": added.json()["face_id"]}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found


def listening_addresses(pids: set[int]) -> list[str]:
    """Local addresses the processes listen on (TCP): from `ss -ltnp`, else /proc/net/tcp{,6}."""
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        found = []
        for line in out.splitlines():
            owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
            if owners & pids:
                found.append(line.split()[3])
        return found
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                address, port = cols[1].split(":")
                raw = bytes.fromhex(address)
                # /proc writes each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                host = socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, raw)
                found.append(f"{host}:{int(port, 16)}")
    return found


def test_the_server_listens_on_loopback_only(served):
    addresses = listening_addresses(_descendants(served["process"].pid))
    assert f"127.0.0.1:{served['port']}" in addresses, addresses
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        assert host.startswith("127.") or host == "::1", addresses


def _handshake(port: int, host: str, origin: str | None = None) -> int:
    """The HTTP status answering a WebSocket handshake sent by hand (any Host, any Origin)."""
    lines = ["GET /ws HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(conn.recv(4096).split(b" ", 2)[1])


def test_a_forged_host_gets_403_from_the_real_server(served):
    import httpx

    port = served["port"]
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1:{port + 1}"):
        response = httpx.get(served["base"] + "api/gallery", headers={"Host": host})
        assert response.status_code == 403 and "--allowed-host" in one_sentence(response), host
        assert _handshake(port, host) == 403
    assert httpx.get(served["base"] + "api/gallery").status_code == 200
    assert _handshake(port, f"127.0.0.1:{port}") == 101
    assert _handshake(port, f"127.0.0.1:{port}", origin="http://127.0.0.2:8080") == 403
    assert _handshake(port, f"127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}") == 101


def test_malformed_messages_leave_no_traceback_in_the_server_log(served):
    import websockets

    url = served["base"].replace("http", "ws") + "ws"

    async def close_code(text: str) -> int | None:
        async with websockets.connect(url, max_size=None) as ws:
            json.loads(await ws.recv())  # hello
            await ws.send(text)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None

    for text in (NESTED, '{"a":' * 1900, '{"type": "enrol", "name": "Ada", "count": Infinity}',
                 '{"type": "enrol", "name": {"a": 1}}', '{"type": "enrol", "name": null}'):
        assert asyncio.run(close_code(text)) == 1007, text[:40]
    import httpx

    for face_id in ("99999999999999999999999", "\u0661\u0662"):
        assert httpx.delete(served["base"] + f"api/gallery/faces/{face_id}",
                            headers={CSRF_HEADER: served["csrf"]}).status_code == 404
    assert httpx.get(served["base"] + "api/gallery").status_code == 200  # the server goes on
    log = served["log"].read_text().replace(served["csrf"], "")
    assert "Traceback" not in log and "Error" not in log, log


ATTACK_PAGE = """<!doctype html>
<meta charset="utf-8"><title>a page of another site</title>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<form id="enrol" method="POST" enctype="multipart/form-data" target="sink1">
  <input type="file" name="image" id="file">
</form>
<form id="move" method="POST" target="sink2"><input name="name" value="Mallory Moved"></form>
<script>
const params = new URLSearchParams(location.search);
const target = params.get("target");
const result = window.result = {};
function loaded(name) {
  return new Promise((resolve) => {
    document.querySelector(`iframe[name=${name}]`).onload = () => resolve("loaded");
    setTimeout(() => resolve("timeout"), 5000);
  });
}
async function attack() {
  const first = await (await fetch("face1.jpg")).blob();
  const second = await (await fetch("face2.jpg")).blob();
  // 1. A multipart POST through fetch (no-cors: a "simple" request, sent without a preflight).
  const form = new FormData();
  form.append("image", first, "face.jpg");
  try {
    const r = await fetch(target + "api/gallery/people/Mallory/faces", { method: "POST", mode: "no-cors", body: form });
    result.enrolFetch = r.type;
  } catch (e) { result.enrolFetch = "error"; }
  // 2. The same as an auto-submitted form with a file.
  const files = new DataTransfer();
  files.items.add(new File([second], "face.jpg", { type: "image/jpeg" }));
  document.getElementById("file").files = files.files;
  const enrol = document.getElementById("enrol");
  enrol.action = target + "api/gallery/people/Mallory Form/faces";
  const enrolled = loaded("sink1");
  enrol.submit();
  result.enrolForm = await enrolled;
  // 3. Move a face by a form POST.
  const move = document.getElementById("move");
  move.action = target + `api/gallery/faces/${params.get("face")}/move`;
  const moved = loaded("sink2");
  move.submit();
  result.moveForm = await moved;
  // 4. Read the gallery.
  try { result.read = await (await fetch(target + "api/gallery")).text(); } catch (e) { result.read = "error"; }
  try {
    const r = await fetch(target + "api/gallery", { mode: "no-cors" });
    result.readOpaque = r.type + ":" + (await r.text()).length;
  } catch (e) { result.readOpaque = "error"; }
  // 5. Open the socket and ask for an enrolment.
  result.socket = await new Promise((resolve) => {
    const seen = [];
    const ws = new WebSocket(target.replace("http:", "ws:") + "ws");
    ws.onopen = () => { seen.push("open"); ws.send(JSON.stringify({ type: "enrol", name: "Mallory Socket" })); };
    ws.onmessage = (event) => seen.push(event.data);
    ws.onclose = (event) => resolve({ seen, code: event.code });
    setTimeout(() => resolve({ seen, code: "timeout" }), 5000);
  });
  result.done = true;
}
attack();
</script>
"""


@pytest.fixture
def attacker_site(lfw_images, tmp_path):
    """Another web site: a static HTTP server on 127.0.0.2 (another origin than 127.0.0.1)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "attack.html").write_text(ATTACK_PAGE)
    shutil.copyfile(photo(lfw_images, STRANGER, 1), site / "face1.jpg")
    shutil.copyfile(photo(lfw_images, STRANGER, 2), site / "face2.jpg")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    try:
        httpd = ThreadingHTTPServer(("127.0.0.2", 0), partial(Quiet, directory=str(site)))
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.2 ({exc})")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.slow  # drives a real chromium
def test_a_page_of_another_site_cannot_drive_the_server_in_chromium(served, attacker_site, lfw_images):
    if not CHROMIUM.exists():
        pytest.skip("no browser: /usr/bin/chromium is missing (`make browser` installs Debian's chromium)")
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    def gallery_state():
        with Gallery(served["gallery"]) as gallery:
            return gallery.people(), [(f.id, f.person) for f in gallery.faces()]

    before = gallery_state()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        try:
            attacker = browser.new_page()
            attacker.goto(f"{attacker_site}attack.html?target={quote(served['base'])}&face={served['face_id']}")
            attacker.wait_for_function("window.result && window.result.done", timeout=60_000)
            result = attacker.evaluate("window.result")
            assert result["read"] == "error", result  # CORS: no Access-Control-Allow-Origin
            assert result["readOpaque"] in ("opaque:0", "error"), result
            assert "open" not in result["socket"]["seen"] and result["socket"]["code"] != "timeout", result
            assert gallery_state() == before, result  # nothing enrolled, nothing moved

            # The server's own page: it reads the gallery, opens the socket, enrols and moves faces.
            own = browser.new_page()
            console = []
            own.on("console", lambda message: console.append(message.text))
            own.goto(served["base"])
            # (functions, not expression strings: the page's Content-Security-Policy forbids eval)
            own.wait_for_function("() => window.facenet.connected && window.facenet.gallery && "
                                  "window.facenet.answers >= 1", timeout=60_000)
            assert [p["name"] for p in own.evaluate("() => window.facenet.gallery.people")] == [BUSH]
            image = base64.b64encode(photo(lfw_images, STRANGER, 3).read_bytes()).decode()
            done = own.evaluate("""async (b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const form = new FormData();
                form.append("image", new Blob([bytes], { type: "image/jpeg" }), "upload.jpg");
                const added = await api("api/gallery/people/Own%20Page/faces", { method: "POST", body: form });
                const move = new FormData();
                move.append("name", "Own Page Moved");
                const moved = await api(`api/gallery/faces/${added.face_id}/move`, { method: "POST", body: move });
                const listed = await api("api/gallery");
                const removed = await api(`api/gallery/faces/${added.face_id}`, { method: "DELETE" });
                return { added, moved, people: listed.people.map((p) => p.name), removed };
            }""", image)
            assert done["moved"]["to"] == "Own Page Moved" and "Own Page Moved" in done["people"], done
            assert done["removed"]["face_id"] == done["added"]["face_id"]
            own.evaluate("() => socket.send(JSON.stringify({ type: 'enrol', name: 'Own Socket', count: 1 }))")
            own.wait_for_function("() => window.facenet.enrol && window.facenet.enrol.name === 'Own Socket'",
                                  timeout=30_000)
            own.evaluate("() => socket.send(JSON.stringify({ type: 'cancel' }))")
            own.wait_for_function("() => window.facenet.enrol && window.facenet.enrol.done && "
                                  "window.facenet.enrol.stopped === 'Cancelled.'", timeout=30_000)
            # The page's own Content-Security-Policy blocks nothing the page does.
            assert not [m for m in console if "Content Security Policy" in m], console
        finally:
            browser.close()
    assert gallery_state() == before
