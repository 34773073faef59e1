"""`facenet serve` over HTTP and WebSocket (Starlette's TestClient), with real LFW faces: the
answers agree with `facenet identify`, stale frames are dropped, a name waits for a stable
face, enrolment from frames lands in the gallery, and the token, limits and bad payloads are
refused with a clear message while other sockets go on."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from facenet_cli.store.sqlite import Gallery
from facenet_cli.recognition.identify import identify
from facenet_cli.images import read_rgb
from facenet_cli.serve.app import CSRF_HEADER, ServeConfig, create_app
from facenet_cli.serve.engine import Engine
from facenet_cli.serve.fakecam import compose_frame, jpeg

BUSH = "George_W_Bush"
POWELL = "Colin_Powell"
STRANGER = "Tony_Blair"
WS = "ws://127.0.0.1:8000/ws"  # TestClient's own default host, testserver, is no address this server serves


def photo(lfw_images, person: str, number: int):
    return lfw_images / person / f"{person}_{number:04d}.jpg"


def serve_client(engine, config: ServeConfig | None = None) -> TestClient:
    """A client that addresses the server as this machine does (Host 127.0.0.1) and sends the
    X-Facenet-CSRF header a script reads from GET /api/csrf."""
    client = TestClient(create_app(engine, config), base_url="http://127.0.0.1:8000")
    client.headers[CSRF_HEADER] = client.get("/api/csrf").text
    return client


def frame_of(lfw_images, person: str, number: int, shift: int = 0, side: int = 400) -> bytes:
    return jpeg(compose_frame([read_rgb(photo(lfw_images, person, number))], side, shift=(shift, shift % 7)))


@pytest.fixture(scope="module")
def engine(lfw_images, tmp_path_factory):
    """One engine (models loaded once) on a gallery of two LFW people, enrolled through the API."""
    gallery = tmp_path_factory.mktemp("serve") / "people.gallery"
    engine = Engine(gallery)
    client = serve_client(engine)
    for person in (BUSH, POWELL):
        for number in (1, 2, 3):
            with open(photo(lfw_images, person, number), "rb") as fh:
                response = client.post(f"/api/gallery/people/{person}/faces", files={"image": ("a.jpg", fh)})
            assert response.status_code == 201, response.text
    return engine


@pytest.fixture
def client(engine):
    with serve_client(engine) as test_client:
        yield test_client


def post_image(client, url, path, field="image"):
    with open(path, "rb") as fh:
        return client.post(url, files={field: (path.name, fh, "image/jpeg")})


def test_identify_endpoint_agrees_with_facenet_identify(client, engine, lfw_images):
    queries = [photo(lfw_images, BUSH, 10), photo(lfw_images, POWELL, 10), photo(lfw_images, STRANGER, 1)]
    expected = identify(engine.gallery_path, [str(p) for p in queries])
    assert [f.answer.name for f in expected.faces] == [BUSH, POWELL, "unknown"]
    for query, want in zip(queries, expected.faces):
        response = post_image(client, "/api/identify", query)
        assert response.status_code == 200, response.text
        faces = response.json()["faces"]
        assert len(faces) == 1
        got = faces[0]
        assert got["name"] == want.answer.name
        # Who a stranger looks most like is told only when asked for.
        if want.answer.name == "unknown":
            assert got["best_match"] is None and got["candidates"] == []
        else:
            assert got["best_match"] == want.answer.person and got["candidates"]
        with open(query, "rb") as fh:
            revealed = client.post("/api/identify?reveal=1", files={"image": (query.name, fh)}).json()["faces"][0]
        assert revealed["best_match"] == want.answer.person and revealed["candidates"]
        assert got["box"] == list(want.box)
        assert got["distance"] == pytest.approx(want.answer.distance, abs=1e-5)
        vector = np.array(got["embedding"])
        assert vector.shape == (128,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)


def test_compare_endpoint(client, examples_dir):
    same = client.post("/api/compare", files={"first": open(examples_dir / "lennon-1.jpg", "rb"),
                                              "second": open(examples_dir / "lennon-2.jpg", "rb")}).json()
    other = client.post("/api/compare", files={"first": open(examples_dir / "lennon-1.jpg", "rb"),
                                               "second": open(examples_dir / "clapton-1.jpg", "rb")}).json()
    assert same["same_person"] is True and other["same_person"] is False
    assert same["squared_l2"] < same["threshold"] < other["squared_l2"]


def test_gallery_list_thumbnails_move_and_remove(engine, lfw_images):
    client = serve_client(engine)
    listing = client.get("/api/gallery").json()
    people = {p["name"]: p for p in listing["people"]}
    assert people[BUSH]["faces"] == 3 and people[POWELL]["faces"] == 3
    thumb = client.get(people[BUSH]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR).shape == (96, 96, 3)
    assert client.get("/api/gallery/thumbs/" + "0" * 64 + ".jpg").status_code == 404
    assert client.get("/api/gallery/thumbs/..%2F..%2Fetc%2Fpasswd.jpg").status_code == 404

    added = post_image(client, "/api/gallery/people/Wrong Person/faces", photo(lfw_images, BUSH, 12))
    assert added.status_code == 201, added.text
    face_id = added.json()["face_id"]
    again = post_image(client, "/api/gallery/people/Wrong Person/faces", photo(lfw_images, BUSH, 12))
    assert again.status_code == 409 and "already" in again.json()["detail"]
    moved = client.post(f"/api/gallery/faces/{face_id}/move", data={"name": BUSH})
    assert moved.json() == {"face_id": face_id, "from": "Wrong Person", "to": BUSH}
    with Gallery(engine.gallery_path) as gallery:  # the gallery file itself, read by its own module
        assert dict(gallery.people())[BUSH] == 4 and "Wrong Person" not in dict(gallery.people())
    assert client.delete(f"/api/gallery/faces/{face_id}").status_code == 200
    assert client.delete(f"/api/gallery/faces/{face_id}").status_code == 404
    with Gallery(engine.gallery_path) as gallery:
        assert dict(gallery.people())[BUSH] == 3

    temp = post_image(client, "/api/gallery/people/Temp/faces", photo(lfw_images, STRANGER, 2))
    assert temp.status_code == 201
    thumb_url = next(p["thumbnail"] for p in client.get("/api/gallery").json()["people"] if p["name"] == "Temp")
    assert client.delete("/api/gallery/people/Temp").json()["removed_faces"] == 1
    assert client.get(thumb_url).status_code == 404  # its thumbnail went with it
    assert client.delete("/api/gallery/people/Temp").status_code == 404


@pytest.mark.parametrize("name, reason", [("unknown", "'unknown'"), ("x..y", "'..'"), ("a%07b", "control")])
def test_bad_names_are_refused_with_the_gallerys_reason(client, lfw_images, name, reason):
    response = post_image(client, f"/api/gallery/people/{name}/faces", photo(lfw_images, BUSH, 30))
    assert response.status_code == 422
    assert reason in response.json()["detail"]


def test_limits_and_bad_payloads(engine, lfw_images, tmp_path):
    client = serve_client(engine, ServeConfig(max_upload_bytes=20_000))
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    assert big.stat().st_size > 20_000
    response = post_image(client, "/api/identify", big)
    assert response.status_code == 413 and "limit of 20,000 bytes" in response.json()["detail"]

    # Without a Content-Length (chunked), the limit is counted as the body arrives.
    body = (b'--XX\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' +
            big.read_bytes() + b"\r\n--XX--\r\n")
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))
    response = client.post("/api/identify", content=chunks, headers={"content-type": "multipart/form-data; boundary=XX"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n" * 10)
    response = post_image(client, "/api/identify", text)
    assert response.status_code == 415 and "not an image" in response.json()["detail"]

    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo(lfw_images, BUSH, 1).read_bytes()[:3000])
    response = post_image(client, "/api/identify", truncated)
    assert response.status_code == 400 and "truncated" in response.json()["detail"]

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert post_image(client, "/api/identify", empty).status_code == 400
    # None of this hurt the server: a real photo is still answered.
    assert post_image(client, "/api/identify", photo(lfw_images, BUSH, 1)).json()["faces"][0]["name"] == BUSH


def test_token_is_required_for_every_request_and_socket(engine):
    client = TestClient(create_app(engine, ServeConfig(token="s3cret")), base_url="http://127.0.0.1:8000")
    assert client.get("/api/gallery").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/docs").status_code == 401
    assert client.get("/api/gallery", headers={"X-Facenet-Token": "wrong"}).status_code == 401
    assert client.get("/api/gallery", headers={"X-Facenet-Token": "s3cret"}).status_code == 200
    assert client.get("/api/gallery", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect(WS) as ws:
            ws.receive_json()
    assert closed.value.code == 1008
    page = client.get("/?token=s3cret")  # the printed URL: the page, and a cookie for its own requests
    assert page.status_code == 200 and "facenet serve" in page.text
    assert client.get("/api/gallery").status_code == 200
    with client.websocket_connect(WS) as ws:
        assert ws.receive_json()["type"] == "hello"
    # The cookie alone is no proof for a change (another site's form would carry it too): the
    # page adds the CSRF value it was served with; a script may send the token in a header instead.
    assert client.delete("/api/gallery/people/Nobody").status_code == 403
    csrf = client.get("/api/csrf").text
    assert f'content="{csrf}"' in page.text
    assert client.delete("/api/gallery/people/Nobody", headers={CSRF_HEADER: csrf}).status_code == 404
    client.cookies.clear()
    assert client.delete("/api/gallery/people/Nobody", headers={"X-Facenet-Token": "s3cret"}).status_code == 404
    assert client.delete("/api/gallery/people/Nobody", headers={CSRF_HEADER: csrf}).status_code == 401


def _answer(ws) -> dict:
    while True:
        message = ws.receive_json()
        if message["type"] == "faces":
            return message


def test_name_shows_once_the_face_is_stable(client, lfw_images):
    with client.websocket_connect(WS) as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["people"] == 2
        labels = []
        for i in range(4):
            ws.send_bytes(frame_of(lfw_images, BUSH, 10, shift=i))
            answer = _answer(ws)
            assert answer["frame_id"] == i + 1 and len(answer["faces"]) == 1
            face = answer["faces"][0]
            assert face["name"] == BUSH and face["clear"] is True
            labels.append(face["label"])
        assert labels == [None, None, BUSH, BUSH]  # stable after three clear frames in a row
        assert answer["latency_ms"] > 0 and answer["fps"] > 0
        # Two faces at once, each with its own track: the stranger is unknown, never Bush.
        both = jpeg(compose_frame([read_rgb(photo(lfw_images, BUSH, 10)),
                                   read_rgb(photo(lfw_images, STRANGER, 1))], 300))
        for _ in range(3):
            ws.send_bytes(both)
            answer = _answer(ws)
        faces = sorted(answer["faces"], key=lambda f: f["box"][0])
        assert [f["label"] for f in faces] == [BUSH, "unknown"]
        assert faces[0]["map"] is not None and faces[1]["map"] is not None


def test_blurred_face_never_gets_a_name(client, lfw_images):
    frame = compose_frame([read_rgb(photo(lfw_images, BUSH, 10))], 400)
    blurred = jpeg(cv2.GaussianBlur(frame, (0, 0), 4))
    with client.websocket_connect(WS) as ws:
        ws.receive_json()
        for _ in range(4):
            ws.send_bytes(blurred)
            answer = _answer(ws)
            assert len(answer["faces"]) == 1
            assert answer["faces"][0]["clear"] is False and answer["faces"][0]["label"] is None


def test_stale_frames_are_dropped_not_queued(client, lfw_images):
    frames = [frame_of(lfw_images, POWELL, 10, shift=i) for i in range(8)]
    with client.websocket_connect(WS) as ws:
        ws.receive_json()
        for data in frames:  # much faster than the server answers
            ws.send_bytes(data)
        answered = []
        while not answered or answered[-1]["frame_id"] < len(frames):
            answered.append(_answer(ws))
    ids = [a["frame_id"] for a in answered]
    assert ids == sorted(ids) and ids[-1] == len(frames)
    assert len(ids) < len(frames)  # the frames that waited behind a newer one were never processed
    assert answered[-1]["dropped"] == len(frames) - len(ids)


def test_two_frames_in_flight_are_both_answered(client, lfw_images):
    """The page keeps two frames in flight: the second waits while the first is processed (the
    server starts it as it answers the first), it does not replace the first."""
    with client.websocket_connect(WS) as ws:
        ws.receive_json()
        for round_ in range(3):
            ws.send_bytes(frame_of(lfw_images, POWELL, 10, shift=2 * round_))
            ws.send_bytes(frame_of(lfw_images, POWELL, 10, shift=2 * round_ + 1))
            answers = [_answer(ws), _answer(ws)]
            assert [a["frame_id"] for a in answers] == [2 * round_ + 1, 2 * round_ + 2]
            assert answers[-1]["dropped"] == 0 and all(len(a["faces"]) == 1 for a in answers)


def test_bad_messages_close_only_their_socket(client, lfw_images):
    good = frame_of(lfw_images, BUSH, 10)
    with client.websocket_connect(WS) as healthy:
        healthy.receive_json()
        for payload, code in ((b"GIF89a but not really an image", 1007), (b"not an image at all", 1007),
                              (b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024), 1009), ("{not json", 1007),
                              ('{"type": "shutdown"}', 1007)):
            with client.websocket_connect(WS) as ws:
                ws.receive_json()
                ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_text(payload)
                with pytest.raises(WebSocketDisconnect) as closed:
                    while True:
                        ws.receive_json()
                assert closed.value.code == code
            healthy.send_bytes(good)
            assert _answer(healthy)["faces"][0]["name"] == BUSH
        # A refused name is an error message; the socket stays open.
        healthy.send_text('{"type": "enrol", "name": "unknown"}')
        assert "refused" in healthy.receive_json()["message"]
        healthy.send_bytes(good)
        assert _answer(healthy)["faces"][0]["name"] == BUSH


def test_enrol_from_frames_persists_and_agrees_with_identify(lfw_images, tmp_path, monkeypatch):
    import facenet_cli.serve.engine as engine_module

    # Enrolment takes at most one frame per ENROL_INTERVAL_S; with that at 0 the frames enrolled
    # (the first three clear ones) no longer depend on how fast this machine answers.
    monkeypatch.setattr(engine_module, "ENROL_INTERVAL_S", 0.0)
    gallery = tmp_path / "live.gallery"
    engine = Engine(gallery, enrol_frames=3)
    client = serve_client(engine)
    two_faces = jpeg(compose_frame([read_rgb(photo(lfw_images, POWELL, 5)),
                                    read_rgb(photo(lfw_images, STRANGER, 1))], 300))
    with client.websocket_connect(WS) as ws:
        assert ws.receive_json()["people"] == 0
        ws.send_text('{"type": "enrol", "name": "Colin"}')
        assert ws.receive_json() == {"type": "enrol", "name": "Colin", "added": 0, "wanted": 3, "done": False,
                                     "skipped": {}, "track": None}
        ws.send_bytes(two_faces)
        assert _answer(ws)["enrol"]["skipped"] == {"several faces": 1}
        sent = []
        for i in range(40):
            data = frame_of(lfw_images, POWELL, 1 + i % 4, shift=i)
            sent.append(data)
            ws.send_bytes(data)
            status = _answer(ws)["enrol"]
            if status["done"]:
                break
        assert status == {**status, "name": "Colin", "added": 3, "wanted": 3, "done": True}
    with Gallery(gallery) as g:
        faces = g.faces()
    assert [f.person for f in faces] == ["Colin"] * 3
    assert {f.image_sha256 for f in faces} <= {hashlib.sha256(d).hexdigest() for d in sent}

    # A restart keeps the gallery; the page and `facenet identify` name the same frame alike.
    query = tmp_path / "query.jpg"
    query.write_bytes(frame_of(lfw_images, POWELL, 10))
    # (identify searches at full resolution and may also box a small false face: take the real one)
    found = identify(gallery, [str(query)]).faces
    expected = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).answer
    restarted = serve_client(Engine(gallery))
    assert [p["name"] for p in restarted.get("/api/gallery").json()["people"]] == ["Colin"]
    with restarted.websocket_connect(WS) as ws:
        assert ws.receive_json()["people"] == 1
        for _ in range(3):
            ws.send_bytes(query.read_bytes())
            faces = _answer(ws)["faces"]
    assert len(faces) == 1
    face = faces[0]
    assert expected.name == "Colin", expected
    assert face["label"] == expected.name
    # Frames are searched on a half-size copy, so the box (and the distance) differ a little.
    assert face["distance"] == pytest.approx(expected.distance, abs=0.03)
    map_points = restarted.get("/api/map").json()["points"]
    assert len(map_points) == 3 and {p["person"] for p in map_points} == {"Colin"}


@pytest.mark.slow  # real processes interrupted or killed
def test_cli_serves_prints_the_url_with_its_token_and_stops_on_ctrl_c(tmp_path, lfw_images):
    """`facenet serve` as a user runs it: the models load once, the printed URL works, the token
    is enforced, a bad gallery path is one sentence, Ctrl-C (SIGINT) stops it."""
    import re
    import signal
    import subprocess
    import sys

    import httpx

    from tests.conftest import ROOT

    folder = tmp_path / "a-folder"
    folder.mkdir()
    refused = subprocess.run([sys.executable, "-m", "facenet_cli", "serve", str(folder)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("Error: ") and "Traceback" not in refused.stderr

    gallery = tmp_path / "cli.gallery"
    server = subprocess.Popen([sys.executable, "-m", "facenet_cli", "serve", str(gallery), "--host", "127.0.0.1",
                               "--port", "0", "--token", "tok3n-abc"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("facenet serve: open http://127.0.0.1:") and line.rstrip().endswith("/?token=tok3n-abc")
        url = line.split("open ", 1)[1].strip()
        base = url.split("?")[0]
        assert httpx.get(base + "api/gallery").status_code == 401
        # The second line (stderr) gives scripts the X-Facenet-CSRF value.
        csrf = re.search(r"X-Facenet-CSRF: (\S+) ", server.stderr.readline()).group(1)
        with httpx.Client() as client:
            assert client.get(url).status_code == 200  # the printed URL opens the page
            with open(photo(lfw_images, BUSH, 1), "rb") as fh:
                refused = client.post(base + f"api/gallery/people/{BUSH}/faces", files={"image": ("a.jpg", fh)})
            assert refused.status_code == 403 and "X-Facenet-CSRF" in refused.json()["detail"]
            with open(photo(lfw_images, BUSH, 1), "rb") as fh:
                added = client.post(base + f"api/gallery/people/{BUSH}/faces", files={"image": ("a.jpg", fh)},
                                    headers={"X-Facenet-CSRF": csrf})
            assert added.status_code == 201, added.text
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    with Gallery(gallery) as g:  # written through the gallery module, kept after the server stopped
        assert g.people() == [(BUSH, 1)]


def test_loopback_and_printed_url():
    import socket

    from facenet_cli.serve import page_url
    from facenet_cli.serve.hosts import is_loopback

    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.5", "::")] == \
        [True, True, True, False, False, False]
    assert page_url("127.0.0.1", 8000, None) == "http://127.0.0.1:8000/"
    assert page_url("0.0.0.0", 8001, "abcdefgh") == f"http://{socket.gethostname()}:8001/?token=abcdefgh"
    assert page_url("::1", 8002, None) == "http://[::1]:8002/"


def test_edits_through_the_server_keep_the_search_index_current(engine, lfw_images):
    """Enrolling, moving and removing faces through the server patch the gallery's search index
    (no stale index left for the next search to rebuild)."""
    from facenet_cli.store.face_index import index_path, read_index, stale_reason

    def index_is_current() -> bool:
        with Gallery(engine.gallery_path) as gallery:
            return stale_reason(read_index(index_path(engine.gallery_path)).header, gallery.state()) is None

    with Gallery(engine.gallery_path) as gallery:
        state, enrolment = gallery.snapshot()
        gallery.neighbour_index(state, enrolment)  # build and save the index the way a reader does
    assert index_is_current()
    client = serve_client(engine)
    added = post_image(client, "/api/gallery/people/Index Check/faces", photo(lfw_images, STRANGER, 3))
    assert added.status_code == 201, added.text
    assert index_is_current()
    face_id = added.json()["face_id"]
    assert client.post(f"/api/gallery/faces/{face_id}/move", data={"name": "Index Checked"}).status_code == 200
    assert index_is_current()
    assert client.delete("/api/gallery/people/Index Checked").status_code == 200
    assert index_is_current()
    index_path(engine.gallery_path).unlink()
