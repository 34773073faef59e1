"""Frames per second and latency of `facenet serve` under one and four WebSocket clients, side by side.

    python benchmarks/serve_load.py [--seconds 20] [--detector hog] [--min-face PX] [--side 400] [--quick]

Starts `facenet serve` as its own process on 127.0.0.1 (a gallery of LFW people enrolled through
the HTTP API), then runs, one after the other on the same server:
- 1 client and 4 clients that behave like the page: send 640x480 JPEGs with one face, at most
  two not yet answered, the next as soon as one is answered (two frames in flight: the server
  starts a frame as it answers the one before);
- 1 client that sends 30 frames per second whatever happens (the server keeps only the newest
  frame, so answers stay current and stale frames are dropped, never queued).
Latency is from a frame sent to its answer received (median, 95th percentile); fps is answers
per second per client and for all clients together. `--detector`/`--min-face`: the server's;
`--side`: each LFW photo is scaled to SIDE px in the frame (400: a face of about 150 px; 100: one
of about 34 px, which only mtcnn finds at the default --detect-width). `--quick`: 3 s per row.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK_HELP, ROOT, need_lfw

# Frames sent and not answered, as the page (facenet_cli/serve/static/app.js: MAX_IN_FLIGHT).
IN_FLIGHT = 2
PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Gerhard_Schroeder", "Tony_Blair"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each row runs")
    parser.add_argument("--workers", type=int, default=1, help="`facenet serve --frames-at-once`")
    parser.add_argument("--detector", default=None, help="`facenet serve --detector` (default: serve's)")
    parser.add_argument("--min-face", type=int, default=None, help="`facenet serve --min-face`")
    parser.add_argument("--side", type=int, default=400, help="pixels each LFW photo is scaled to in the frame")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_frames(count: int, side: int = 400) -> list[bytes]:
    """640x480 JPEGs with one face each, LFW photos of the gallery's people scaled to `side` px."""
    from facenet_cli.images import read_rgb
    from facenet_cli.serve.fakecam import compose_frame, jpeg

    lfw = need_lfw()
    frames = []
    for i in range(count):
        person = PEOPLE[i % len(PEOPLE)]
        image = sorted((lfw / person).glob("*.jpg"))[10 + i // len(PEOPLE)]
        frames.append(jpeg(compose_frame([read_rgb(image)], side, shift=(i % 5, i % 3))))
    return frames


def start_server(gallery: Path, port: int, workers: int, detection: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, "-m", "facenet_cli", "serve", str(gallery), "--host", "127.0.0.1",
               "--port", str(port), "--frames-at-once", str(workers), *detection]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = process.stdout.readline()  # "facenet serve: open URL" once the models are loaded
    if "open http" not in line:
        process.kill()
        raise SystemExit(f"facenet serve did not start: {line}{process.stderr.read()}")
    return process


def enrol(url: str) -> int:
    import httpx

    lfw = need_lfw()
    added = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        client.headers["X-Facenet-CSRF"] = client.get("api/csrf").text  # every POST needs it
        for person in PEOPLE:
            for image in sorted((lfw / person).glob("*.jpg"))[:3]:
                with open(image, "rb") as fh:
                    response = client.post(f"api/gallery/people/{person}/faces", files={"image": (image.name, fh)})
                added += response.status_code == 201
    return added


async def closed_loop_client(url: str, frames: list[bytes], seconds: float, offset: int) -> dict:
    """Like the page: IN_FLIGHT frames sent and not answered, the next sent as one is answered."""
    import websockets

    latencies, answers, faces, dropped = [], 0, 0, 0
    async with websockets.connect(url, max_size=None) as ws:
        json.loads(await ws.recv())  # hello
        start = time.perf_counter()
        i = offset
        sent = 0
        pending: dict[int, float] = {}  # frame number (the server's frame_id) -> send time
        while True:
            while len(pending) < IN_FLIGHT and time.perf_counter() - start < seconds:
                sent += 1
                pending[sent] = time.perf_counter()
                await ws.send(frames[i % len(frames)])
                i += 1
            if not pending:
                break
            message = json.loads(await ws.recv())
            if message["type"] != "faces":
                continue
            answered = message["frame_id"]
            latencies.append((time.perf_counter() - pending[answered]) * 1000)
            for number in [n for n in pending if n <= answered]:  # older ones were replaced: dropped
                dropped += number != answered
                del pending[number]
            answers += 1
            faces += len(message["faces"])
        elapsed = time.perf_counter() - start
    return {"answers": answers, "seconds": elapsed, "latencies": latencies, "faces": faces, "dropped": dropped}


async def open_loop_client(url: str, frames: list[bytes], seconds: float, rate: float) -> dict:
    """Sends `rate` frames per second whatever the answers; the server drops the stale ones."""
    import websockets

    latencies, sent_at, answers, faces = [], {}, 0, 0
    dropped = 0
    async with websockets.connect(url, max_size=None) as ws:
        json.loads(await ws.recv())
        start = time.perf_counter()

        async def sender():
            frame_id = 0
            while time.perf_counter() - start < seconds:
                frame_id += 1
                sent_at[frame_id] = time.perf_counter()
                await ws.send(frames[frame_id % len(frames)])
                await asyncio.sleep(max(0.0, start + frame_id / rate - time.perf_counter()))
            return frame_id

        task = asyncio.create_task(sender())
        while not task.done() or answers == 0:
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.5))
            except asyncio.TimeoutError:
                continue
            if message["type"] != "faces":
                continue
            latencies.append((time.perf_counter() - sent_at[message["frame_id"]]) * 1000)
            answers += 1
            faces += len(message["faces"])
            dropped = message["dropped"]
        elapsed = time.perf_counter() - start
        total = await task
    return {"answers": answers, "seconds": elapsed, "latencies": latencies, "faces": faces, "dropped": dropped,
            "sent": total}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_row(ws_url: str, frames: list[bytes], clients: int, seconds: float, rate: float | None,
                  pid: int) -> dict:
    cpu_before = cpu_seconds(pid)
    if rate is None:
        results = await asyncio.gather(*(closed_loop_client(ws_url, frames, seconds, 7 * c) for c in range(clients)))
    else:
        results = [await open_loop_client(ws_url, frames, seconds, rate)]
    cpu = cpu_seconds(pid) - cpu_before
    latencies = [x for r in results for x in r["latencies"]]
    per_client = [r["answers"] / r["seconds"] for r in results]
    return {"clients": clients, "rate": rate, "fps_per_client": statistics.mean(per_client),
            "fps_total": sum(per_client), "median_ms": statistics.median(latencies),
            "p95_ms": percentile(latencies, 0.95), "answers": sum(r["answers"] for r in results),
            "faces_per_answer": sum(r["faces"] for r in results) / max(1, sum(r["answers"] for r in results)),
            "dropped": sum(r["dropped"] for r in results),
            "cpu_ms": cpu * 1000 / max(1, sum(r["answers"] for r in results)),
            "sent": sum(r.get("sent", r["answers"]) for r in results)}


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.seconds = 3.0
    frames = make_frames(10 if args.quick else 30, args.side)
    work = Path(tempfile.mkdtemp(prefix="facenet-serve-bench-"))
    port = free_port()
    detection = (("--detector", args.detector) if args.detector else ()) + \
        (("--min-face", str(args.min_face)) if args.min_face else ())
    server = start_server(work / "people.gallery", port, args.workers, detection)
    try:
        url = f"http://127.0.0.1:{port}/"
        enrolled = enrol(url)
        ws_url = f"ws://127.0.0.1:{port}/ws"
        pid = server.pid
        asyncio.run(run_row(ws_url, frames, 1, 1.0, None, pid))  # warm-up: first frames pay one-time costs
        load_before = os.getloadavg()[0]
        rows = [asyncio.run(run_row(ws_url, frames, 1, args.seconds, None, pid)),
                asyncio.run(run_row(ws_url, frames, 4, args.seconds, None, pid)),
                asyncio.run(run_row(ws_url, frames, 1, args.seconds, 30.0, pid))]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    load = os.getloadavg()
    print(f"$ python benchmarks/serve_load.py {' '.join(sys.argv[1:])}")
    print(f"facenet serve {' '.join(detection) or '(default detector)'}, 640x480 JPEG frames with one face "
          f"(LFW photos at {args.side} px; {len(frames)} distinct, "
          f"{statistics.mean(map(len, frames)) / 1024:.0f} KB), gallery of {enrolled} faces of {len(PEOPLE)} "
          f"people, --frames-at-once {args.workers}, {os.cpu_count()} cores, load average {load_before:.1f} before and "
          f"{load[0]:.1f} after, "
          f"{args.seconds:g} s per row")
    print()
    print("| clients | sending | fps per client | fps in all | latency median | latency p95 | stale frames dropped "
          "| server CPU per frame |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        sending = "two frames in flight (as the page)" if row["rate"] is None else f"{row['rate']:g} fps, open loop"
        dropped = f"{row['dropped']} of {row['sent']}" if row["rate"] else "0"
        print(f"| {row['clients']} | {sending} | {row['fps_per_client']:.1f} | {row['fps_total']:.1f} | "
              f"{row['median_ms']:.0f} ms | {row['p95_ms']:.0f} ms | {dropped} | {row['cpu_ms']:.0f} ms |")
    one = rows[0]
    print()
    print(f"goal for one client: >= 15 fps and < 150 ms median: {one['fps_per_client']:.1f} fps, "
          f"{one['median_ms']:.0f} ms: {'met' if one['fps_per_client'] >= 15 and one['median_ms'] < 150 else 'NOT met'}")
    if any(abs(row["faces_per_answer"] - 1.0) > 0.05 for row in rows):
        print("warning: not every frame's face was found: " +
              ", ".join(f"{row['faces_per_answer']:.2f}" for row in rows))


if __name__ == "__main__":
    main()
