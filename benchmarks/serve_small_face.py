"""Frames per second of `facenet serve` in a real browser with a small face in view, per detector.

    python benchmarks/serve_small_face.py [--small-side 94] [--seconds 10] [--runs 3] [--quick]
                                          [--config "--detector mtcnn --min-face 32" ...]

The camera is Chromium's fake one playing a 640x480, 30 fps video made from LFW photos: a near
stranger (a face of about 90 px) on the left and an enrolled person far away on the right, whose
face is about 32 px wide at `--small-side 94` (mtcnn's box on the full frame; 116: about 40 px).
For each server configuration (`--config`, repeatable; by default HOG and mtcnn at serve's
other defaults, and mtcnn with --min-face 32) `facenet serve` is started as its own process on
127.0.0.1, the person is enrolled from three full-size photos over the HTTP API, and the page is
opened `--runs` times; each run waits for the first answers, then reads the page's own frames per
second readout (new camera frames answered per second) every half second for `--seconds`, and
reads every answer the page receives on its WebSocket: in how many the small face has a box, and
the name the server gives it. A run's fps is the median of its readouts; the table shows the
median over runs. The browser shares the cores with the server, as on a laptop. On a shared
machine each run first waits (up to `--wait-quiet` s) for other programs to calm down; the last
column says how many cores they still used during each run (figures are quotable where it is ~0).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK_HELP, ROOT, need_lfw

CHROMIUM = Path("/usr/bin/chromium")
PERSON, STRANGER = "Colin_Powell", "George_W_Bush"
SMALL_PHOTO, STRANGER_PHOTO = 5, 1  # LFW image numbers; the person is enrolled from images 1-3
STRANGER_SIDE = 250  # a face of about 90 px
CAMERA_FPS = 30
DEFAULT_CONFIGS = ("--detector hog", "--detector mtcnn", "--detector mtcnn --min-face 32")
GOAL_FPS = 15


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-side", type=int, default=94,
                        help="pixels the far person's LFW photo is scaled to (94: a face of about 32 px)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each run reads the page")
    parser.add_argument("--runs", type=int, default=3, help="page loads per configuration (the median is shown)")
    parser.add_argument("--config", action="append", default=None, metavar="OPTIONS",
                        help="`facenet serve` options of one row, quoted (repeatable; '' is serve's defaults)")
    parser.add_argument("--wait-quiet", type=float, default=120.0, metavar="SECONDS",
                        help="before each run wait up to this long for other programs to use under --quiet-cores "
                        "(their share is shown per row; 0: do not wait)")
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="see --wait-quiet")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def small_tile(side: int, shift: int) -> tuple[int, int, int, int]:
    """Where the far person's photo is in frame `shift`: right of centre, moving a few pixels."""
    return 470 + shift % 5, 190 + shift % 3, side, side


def write_camera(path: Path, small_side: int, frames: int = CAMERA_FPS) -> Path:
    from facenet_cli.images import read_rgb
    from facenet_cli.serve.fakecam import compose_scene, write_y4m

    lfw = need_lfw()
    small = read_rgb(lfw / PERSON / f"{PERSON}_{SMALL_PHOTO:04d}.jpg")
    stranger = read_rgb(lfw / STRANGER / f"{STRANGER}_{STRANGER_PHOTO:04d}.jpg")
    scenes = []
    for i in range(frames):  # a one-second loop; each frame differs a little, as a camera's do
        left, top, side, _ = small_tile(small_side, i)
        scenes.append(compose_scene([(stranger, STRANGER_SIDE, 60 + i % 5, 115 + i % 3), (small, side, left, top)]))
    write_y4m(path, scenes, fps=CAMERA_FPS)
    return path


def start_server(gallery: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "facenet_cli", "serve", str(gallery), "--host", "127.0.0.1", "--port", "0",
               *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = process.stdout.readline()  # "facenet serve: open URL" once the models are loaded
    if "open http" not in line:
        process.kill()
        raise SystemExit(f"facenet serve did not start: {line}{process.stderr.read()}")
    return process, line.split("open ", 1)[1].strip()


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def enrol(url: str) -> int:
    import httpx

    lfw = need_lfw()
    added = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        deadline = time.monotonic() + 30
        while True:  # the URL is printed once the port is bound, a moment before it listens
            try:
                client.headers["X-Facenet-CSRF"] = client.get("api/csrf").text  # every POST needs it
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for number in (1, 2, 3):
            image = lfw / PERSON / f"{PERSON}_{number:04d}.jpg"
            response = client.post(f"api/gallery/people/{PERSON}/faces", files={"image": (image.name, image.read_bytes())})
            added += response.status_code == 201
    return added


def small_face_of(message: dict, small_side: int) -> dict | None:
    """The answer's face inside the far person's tile (wherever it moved), if any."""
    left = min(small_tile(small_side, i)[0] for i in range(5))
    top = min(small_tile(small_side, i)[1] for i in range(3))
    for face in message["faces"]:
        l, t, r, b = face["box"]
        if left <= (l + r) / 2 <= left + small_side + 4 and top <= (t + b) / 2 <= top + small_side + 2:
            return face
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far (/proc/stat), all programs."""
    values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def process_tree(camera: Path | None = None) -> list[int]:
    """This benchmark's processes (itself and every descendant: the server, the browser), or
    with `camera` Chromium's alone (the process started with that camera file and its children)."""
    parents: dict[int, int] = {}
    roots = [] if camera else [os.getpid()]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes() if camera else b""
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if camera and f"--use-file-for-fake-video-capture={camera}".encode() in command:
            roots.append(int(entry.name))
    found = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass  # ended meanwhile
    return total


def others_cores(seconds: float = 1.0) -> float:
    """Cores used by other programs than this benchmark's over the next `seconds`."""
    ours = process_tree()
    busy, mine = busy_seconds(), cpu_of(ours)
    time.sleep(seconds)
    return max(0.0, (busy_seconds() - busy - (cpu_of(ours) - mine)) / seconds)


def wait_for_quiet(limit: float, most_seconds: float) -> float:
    """Wait (up to `most_seconds`) until other programs use under `limit` cores; what they used."""
    deadline = time.monotonic() + most_seconds
    while True:
        used = others_cores()
        if used < limit or time.monotonic() > deadline:
            return used


def measure_page(browser, url: str, seconds: float, small_side: int, server_pid: int, camera: Path) -> dict:
    """One page load: the page's fps readouts and every answer it receives."""
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    answers: list[dict] = []
    recording = [False]

    def on_socket(socket):
        def on_frame(payload):
            if recording[0] and isinstance(payload, str):
                message = json.loads(payload)
                if message.get("type") == "faces":
                    answers.append(message)
        socket.on("framereceived", on_frame)

    page.on("websocket", on_socket)
    try:
        page.goto(url)
        page.wait_for_function("() => window.facenet && window.facenet.answers >= 10", timeout=120_000)
        page.wait_for_timeout(2_000)  # the page's fps window (2 s) filled with steady answers
        recording[0] = True
        readouts = []
        browser_tree, ours = process_tree(camera), process_tree()
        cpu_before, browser_before, busy_before = cpu_seconds(server_pid), cpu_of(browser_tree), busy_seconds()
        ours_before = cpu_of(ours)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            page.wait_for_timeout(500)
            readouts.append(page.evaluate("() => window.facenet.fps"))
        recording[0] = False
        elapsed = time.perf_counter() - started
        cpu, browser_cpu = cpu_seconds(server_pid) - cpu_before, cpu_of(browser_tree) - browser_before
        others = busy_seconds() - busy_before - (cpu_of(ours) - ours_before)
        error = page.evaluate("() => window.facenet.error")
    finally:
        page.close()
    if error:
        raise SystemExit(f"the page reported an error: {error}")
    smalls = [small_face_of(m, small_side) for m in answers]
    found = [f for f in smalls if f is not None]
    return {"fps": statistics.median(readouts), "answers": len(answers), "found": len(found),
            "server_cpu_ms": cpu * 1000 / max(1, len(answers)), "browser_cpu_ms": browser_cpu * 1000 / max(1, len(answers)),
            "other_cores": max(0.0, others / elapsed),
            "widths": [f["box"][2] - f["box"][0] for f in found],
            "named": sum(f["name"] == PERSON for f in found),
            "stranger_found": sum(any(f["box"][2] - f["box"][0] > 60 for f in m["faces"]) for m in answers),
            "smallest_face_px": answers[-1]["smallest_face_px"] if answers else None}


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.seconds, args.runs, args.wait_quiet = 2.0, 1, 0.0
    configs = args.config if args.config is not None else list(DEFAULT_CONFIGS)
    if not CHROMIUM.exists():
        raise SystemExit(f"no browser at {CHROMIUM} (`make browser` installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="facenet-serve-small-"))
    camera = write_camera(work / "camera.y4m", args.small_side)
    rows = []
    load_before = os.getloadavg()[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"])
        try:
            for number, config in enumerate(configs):
                server, url = start_server(work / f"people-{number}.gallery", shlex.split(config))
                try:
                    enrolled = enrol(url)
                    runs = []
                    for _ in range(args.runs):
                        if args.wait_quiet:
                            wait_for_quiet(args.quiet_cores, args.wait_quiet)
                        runs.append(measure_page(browser, url, args.seconds, args.small_side, server.pid, camera))
                finally:
                    stop_server(server)
                rows.append((config, enrolled, runs))
        finally:
            browser.close()
            shutil.rmtree(work, ignore_errors=True)  # the camera file alone is 14 MB
    load_after = os.getloadavg()[0]
    print(f"$ python benchmarks/serve_small_face.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}")
    print(f"Chromium's fake camera: 640x480 at {CAMERA_FPS} fps, {PERSON} (enrolled from 3 photos) far away, his "
          f"LFW photo at {args.small_side} px, beside a stranger near ({STRANGER}, {STRANGER_SIDE} px); "
          f"{os.cpu_count()} cores shared by the browser and the server, load average {load_before:.1f} before "
          f"and {load_after:.1f} after; {args.runs} runs of {args.seconds:g} s per row")
    print()
    print("| facenet serve options | fps (page, median of runs) | fps of each run | small face found "
          "| its box width | named | stranger found | hint: smallest face | CPU per frame: server, browser "
          "| other programs |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for config, enrolled, runs in rows:
        answers = sum(r["answers"] for r in runs)
        found = sum(r["found"] for r in runs)
        widths = [w for r in runs for w in r["widths"]]
        width = f"{statistics.median(widths):.0f} px" if widths else "-"
        each = ", ".join(f"{r['fps']:.1f}" for r in runs)
        others = ", ".join(f"{r['other_cores']:.1f}" for r in runs)
        print(f"| {config or '(defaults)'} | {statistics.median(r['fps'] for r in runs):.1f} | "
              f"{each} | {found} of {answers} | {width} | "
              f"{sum(r['named'] for r in runs)} of {found} | {sum(r['stranger_found'] for r in runs)} of {answers} | "
              f"{runs[-1]['smallest_face_px']} px | {statistics.median(r['server_cpu_ms'] for r in runs):.0f} ms, "
              f"{statistics.median(r['browser_cpu_ms'] for r in runs):.0f} ms | "
              f"{others} cores |")
    print()
    for config, enrolled, runs in rows:
        fps = statistics.median(r["fps"] for r in runs)
        answers = sum(r["answers"] for r in runs)
        found = sum(r["found"] for r in runs)
        met = fps >= GOAL_FPS and answers and found >= 0.95 * answers
        print(f"goal (small face found in >= 95 % of answers at >= {GOAL_FPS} fps), {config or '(defaults)'}: "
              f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
