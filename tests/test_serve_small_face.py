"""A face 32 px wide in a 640x480 camera frame, found by `facenet serve --detector mtcnn` in a real
browser: Chromium's fake camera plays a video made from LFW photos (an enrolled person far away,
his face about 32 px wide, beside a near stranger of about 90 px), `facenet serve` runs as its own
process on 127.0.0.1, and the test reads the page's own state and every answer on its WebSocket.

With `--detector hog` (on a 320 px copy) the same face gets no box. The frame rate floor here is
generous (the CI machine may be loaded); benchmarks/serve_small_face.py measures the >= 15 fps
goal of issue 20."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facenet_cli.images import read_rgb
from facenet_cli.serve.fakecam import compose_scene, write_y4m

pytestmark = pytest.mark.slow  # a real chromium and a real server process

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PERSON, STRANGER = "Colin_Powell", "George_W_Bush"
SMALL_SIDE = 94  # Colin_Powell_0005 scaled to 94 px: mtcnn's box on the full frame is 30-33 px
SMALL_LEFT, SMALL_TOP = 470, 190  # then moved by up to 4 and 2 px from frame to frame
CAMERA_FPS = 30
FPS_FLOOR = 5  # far below the benchmark's figures: only a server that stalls or a page that re-sends fails


@pytest.fixture(scope="module")
def camera(lfw_images, tmp_path_factory) -> Path:
    """A looping one-second 30 fps video: the near stranger left, the far person right."""
    small = read_rgb(lfw_images / PERSON / f"{PERSON}_0005.jpg")
    stranger = read_rgb(lfw_images / STRANGER / f"{STRANGER}_0001.jpg")
    frames = [compose_scene([(stranger, 250, 60 + i % 5, 115 + i % 3),
                             (small, SMALL_SIDE, SMALL_LEFT + i % 5, SMALL_TOP + i % 3)]) for i in range(CAMERA_FPS)]
    path = tmp_path_factory.mktemp("camera") / "small-face.y4m"
    write_y4m(path, frames, fps=CAMERA_FPS)
    return path


def in_small_tile(box) -> bool:
    left, top, right, bottom = box
    return (SMALL_LEFT <= (left + right) / 2 <= SMALL_LEFT + SMALL_SIDE + 4
            and SMALL_TOP <= (top + bottom) / 2 <= SMALL_TOP + SMALL_SIDE + 2)


class Server:
    """`facenet serve GALLERY --host 127.0.0.1 --port 0 OPTIONS` as its own process, the person
    enrolled from three full-size photos over the HTTP API."""

    def __init__(self, gallery: Path, options: list[str], lfw_images: Path):
        import httpx

        self.process = subprocess.Popen(
            [sys.executable, "-m", "facenet_cli", "serve", str(gallery), "--host", "127.0.0.1", "--port", "0",
             *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.process.stdout.readline()
        if "open http://127.0.0.1:" not in line:
            self.stop()
            pytest.fail(f"facenet serve did not start: {line}{self.process.stderr.read()}")
        self.url = line.split("open ", 1)[1].strip()
        with httpx.Client(base_url=self.url, timeout=60) as client:
            deadline = time.monotonic() + 30
            while True:  # the URL is printed once the port is bound, a moment before it listens
                try:
                    client.headers["X-Facenet-CSRF"] = client.get("api/csrf").text
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "facenet serve does not answer"
                    time.sleep(0.1)
            for number in (1, 2, 3):
                image = lfw_images / PERSON / f"{PERSON}_{number:04d}.jpg"
                response = client.post(f"api/gallery/people/{PERSON}/faces",
                                       files={"image": (image.name, image.read_bytes())})
                assert response.status_code == 201, response.text

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def serve(tmp_path, lfw_images):
    started = []

    def start(*options: str) -> Server:
        started.append(Server(tmp_path / f"people-{len(started)}.gallery", list(options), lfw_images))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def page_with_camera(camera):
    """A Chromium page whose camera is the video; `answers` collects every answer it receives."""
    if not CHROMIUM.exists():
        pytest.skip("no browser: /usr/bin/chromium is missing (`make browser` installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            answers: list[dict] = []

            def on_socket(socket):
                def on_frame(payload):
                    if isinstance(payload, str) and json.loads(payload).get("type") == "faces":
                        answers.append(json.loads(payload))
                socket.on("framereceived", on_frame)

            page.on("websocket", on_socket)
            yield page, answers
        finally:
            browser.close()


def test_mtcnn_boxes_a_32_px_face_in_the_browser_and_keeps_up(serve, page_with_camera):
    page, answers = page_with_camera
    server = serve("--detector", "mtcnn")  # its default reach; --min-face 32 would drop the 30-31 px boxes
    page.goto(server.url)
    page.wait_for_function("() => window.facenet && window.facenet.answers >= 5", timeout=90_000)
    assert page.evaluate("() => window.facenet.error") is None

    # As drawn: a box over the far person's face, about 32 px wide, and the near stranger's.
    page.wait_for_function(f"""() => window.facenet.overlay.some(f => {{
        const [l, t, r, b] = f.box, x = (l + r) / 2, y = (t + b) / 2;
        return x >= {SMALL_LEFT} && x <= {SMALL_LEFT + SMALL_SIDE + 4} && y >= {SMALL_TOP}
            && y <= {SMALL_TOP + SMALL_SIDE + 2};
    }}) && window.facenet.overlay.some(f => f.box[2] - f.box[0] > 60)""", timeout=30_000)
    drawn = page.evaluate("() => window.facenet.overlay")
    small = [f for f in drawn if in_small_tile(f["box"])]
    assert len(small) == 1, drawn
    assert 26 <= small[0]["box"][2] - small[0]["box"][0] <= 38, small
    # The server names him from 32 px; the page labels only faces seen clearly (60 px and up), so
    # it draws "…" over his box and tells him to come closer.
    assert small[0]["name"] == PERSON and small[0]["text"] == "…"
    page.wait_for_selector("#hint:not([hidden])", timeout=10_000)
    assert "come closer" in page.inner_text("#hint")

    # Found in (nearly) every answer of the next few seconds, not in a lucky one.
    first = len(answers)
    page.wait_for_function(f"() => window.facenet.answers >= {page.evaluate('() => window.facenet.answers') + 20}",
                           timeout=60_000)
    window = answers[first:]
    found = [[f for f in a["faces"] if in_small_tile(f["box"])] for a in window]
    assert len(window) >= 20 and sum(len(f) == 1 for f in found) >= 0.9 * len(window), found
    assert all(f[0]["name"] == PERSON for f in found if f)
    assert all(a["smallest_face_px"] == 40 for a in window)  # mtcnn's 20 px at --detect-width 320

    # The page's own frame rate readout: each new camera frame answered, over its last 2 s.
    fps, status = page.evaluate("() => [window.facenet.fps, document.getElementById('status').textContent]")
    assert fps >= FPS_FLOOR, fps
    assert f"{fps:.1f} fps" in status  # read together: the readout changes with every answer
    sent = page.evaluate("() => window.facenet.sentFrames")
    assert len(sent) == len(set(sent))  # frames per second are new frames, never a frame sent twice
    print(f"page: {fps:.1f} fps; the 32 px face boxed in {sum(map(bool, found))} of {len(window)} answers")


def test_hog_at_serve_defaults_gives_the_same_face_no_box(serve, page_with_camera):
    """The contrast that makes the first test mean something: HOG (serve's default detector) on a
    320 px copy finds faces from about 160 px, so the far person gets no box (nor the near
    stranger, 90 px)."""
    page, answers = page_with_camera
    server = serve("--detector", "hog")
    page.goto(server.url)
    page.wait_for_function("() => window.facenet && window.facenet.answers >= 20", timeout=90_000)
    assert len(answers) >= 15 and all(a["faces"] == [] for a in answers)
    assert page.evaluate("() => window.facenet.overlay") == []
    page.wait_for_selector("#hint:not([hidden])", timeout=10_000)
    assert "160 px" in page.inner_text("#hint")


def test_the_small_face_benchmark_quick(lfw_dir):
    """benchmarks/serve_small_face.py --quick (the same steps and table, 2 s per row): HOG at
    serve's other defaults finds the far face in no answer, mtcnn in (nearly) every one, and names it."""
    import re

    if not CHROMIUM.exists():
        pytest.skip("no browser: /usr/bin/chromium is missing (`make browser` installs Debian's chromium)")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_small_face.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = {r[0]: r[1:] for r in re.findall(
        r"^\| ([^|]+?) \| ([0-9.]+) \| [^|]+ \| (\d+) of (\d+) \| [^|]+ \| (\d+) of (\d+) \| [^|]+ \| (\d+) px \|",
        done.stdout, re.M)}
    assert set(rows) == {"--detector hog", "--detector mtcnn", "--detector mtcnn --min-face 32"}, done.stdout
    fps, found, answers, named, of_found, hint = rows["--detector hog"]
    assert int(found) == 0 < int(answers) and hint == "160" and float(fps) > 0
    fps, found, answers, named, of_found, hint = rows["--detector mtcnn"]
    assert int(found) >= 0.9 * int(answers) > 0 and int(named) == int(of_found) == int(found) and hint == "40"
    assert float(fps) > 0
    assert rows["--detector mtcnn --min-face 32"][-1] == "32"
    assert done.stdout.count("goal (small face found in >= 95 % of answers at >= 15 fps)") == 3
