"""`facenet serve` end to end in a real headless Chromium with a fake camera made from LFW photos:
enrol a person from the video, then see their name over their face and `unknown` over a
stranger beside them, read from the page's own drawing state; a screenshot is kept."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
PERSON, STRANGER = "Colin_Powell", "Tony_Blair"
NAME = "Colin Powell"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_camera(lfw_images, tmp_path) -> Path:
    """A looping 10 fps video: 3 s of the person alone, then 3 s of them beside a stranger."""
    from facenet_cli.images import read_rgb
    from facenet_cli.serve.fakecam import compose_frame, write_y4m

    person = [read_rgb(lfw_images / PERSON / f"{PERSON}_{n:04d}.jpg") for n in (1, 2, 3)]
    stranger = read_rgb(lfw_images / STRANGER / f"{STRANGER}_0001.jpg")
    frames = [compose_frame([person[i % 3]], 400, shift=(i % 5, i % 3)) for i in range(30)]
    frames += [compose_frame([person[0], stranger], 300, shift=(i % 3, 0)) for i in range(30)]
    path = tmp_path / "camera.y4m"
    write_y4m(path, frames, fps=10)
    return path


@pytest.fixture
def server(tmp_path):
    """The app on uvicorn in a thread, on a free port of 127.0.0.1; stopped at teardown."""
    import uvicorn

    from facenet_cli.serve.app import ServeConfig, create_app
    from facenet_cli.serve.engine import Engine

    engine = Engine(tmp_path / "people.gallery", enrol_frames=3)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, ServeConfig(port=port)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield engine, f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow  # drives a real chromium
def test_enrol_from_the_camera_then_name_and_unknown_in_the_browser(server, fake_camera, tmp_path, lfw_images):
    if not CHROMIUM.exists():
        pytest.skip("no browser: /usr/bin/chromium is missing (`make browser` installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    from facenet_cli.store.sqlite import Gallery

    engine, url = server
    screenshot = tmp_path / "serve.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={fake_camera}"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(url)
            page.wait_for_function("() => window.facenet && window.facenet.answers >= 3", timeout=60_000)
            assert page.evaluate("() => window.facenet.error") is None

            page.fill("#enrol-name", NAME)
            page.click("#enrol-button")
            page.wait_for_function("() => window.facenet.enrol && window.facenet.enrol.done", timeout=90_000)
            assert page.evaluate("() => window.facenet.enrol.added") == 3
            assert "3 faces enrolled" in page.inner_text("#enrol-status")

            # The gallery list: the person, their count and a thumbnail from the camera.
            page.wait_for_selector(f'#people li[data-person="{NAME}"] img', timeout=30_000)
            assert f"{NAME} (3)" in page.inner_text("#people")

            # Both faces in one frame, as drawn: the person's name over the left face, unknown
            # over the stranger on the right.
            page.wait_for_function(f"""() => {{
                const drawn = window.facenet.overlay;
                const named = drawn.find(f => f.label === {NAME!r});
                const stranger = drawn.find(f => f.label === "unknown");
                return drawn.length === 2 && named && stranger && named.centre[0] < stranger.centre[0];
            }}""", timeout=90_000)
            drawn = page.evaluate("() => window.facenet.overlay")
            items = page.eval_on_selector_all("#faces-in-view li", "els => els.map(e => e.dataset.label)")
            assert sorted(items) == sorted(f["label"] for f in drawn) == sorted([NAME, "unknown"])
            # The canvas really carries the drawing: pixels of the boxes are not transparent.
            painted = page.evaluate("""() => {
                const c = document.getElementById('overlay');
                const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i]) n++;
                return n;
            }""")
            assert painted > 1000
            status = page.inner_text("#status")
            assert "fps" in status and "people" in status
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
    if os.environ.get("FACENET_SCREENSHOT"):  # refresh the README's picture on purpose only
        shutil.copyfile(screenshot, os.environ["FACENET_SCREENSHOT"])

    # Stored in the gallery file, through its own module: a restart keeps it.
    with Gallery(engine.gallery_path) as gallery:
        assert gallery.people() == [(NAME, 3)]
