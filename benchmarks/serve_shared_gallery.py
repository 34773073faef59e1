"""Two `facenet serve` processes sharing one PostgreSQL gallery: how long after an enrolment
through one does the other name that person?

    python benchmarks/serve_shared_gallery.py                  # 8 people, one enrolment each
    python benchmarks/serve_shared_gallery.py --quick          # 3 people
    python benchmarks/serve_shared_gallery.py --postgres URL   # a server of yours (default: one started
                                                               # with pgserver in work/serve-shared-gallery/)

Two `facenet serve` processes (stand-ins for two machines) listen on 127.0.0.1 on two ports, both
on `URL?gallery=shared` (emptied first). For each person (real LFW photos): the person's first
photo is enrolled through server A (POST /api/gallery/people/NAME/faces, as the page's enrol
button sends it) while server B is asked, without pause as a live camera would, who is in the
person's second photo (POST /api/identify, one request at a time, from a second thread, started
a second before the enrolment). Figures, median and max over the enrolments:
- named s: A's 201 answer to the end of B's first answer naming the person (it includes that
  last identify request, whose time is given too);
- listed s: the same wait for B's GET /api/gallery to list the person (a second enrolment of the
  person, a third photo; the listing reads the gallery itself, not B's cached view);
- identify ms: one /api/identify request to B (detection and embedding of the photo included).
B looks at the gallery's revision at most every GALLERY_POLL_S (serve/engine.py), so the wait
is that at most, plus a request. Writes work/serve-shared-gallery[-quick]/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LFW_IMAGES, QUICK_HELP, ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
WORK = ROOT / "work"
PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon", "Hugo_Chavez", "Junichiro_Koizumi"]
TOKEN = "bench-shared-gallery"
GIVE_UP_S = 30.0


def photo(person: str, number: int) -> Path:
    return LFW_IMAGES / person / f"{person}_{number:04d}.jpg"


class Server:
    """One `facenet serve` process on 127.0.0.1 (port chosen by the system) and an HTTP client for it."""

    def __init__(self, gallery: str):
        import httpx

        self.process = subprocess.Popen(
            [sys.executable, "-m", "facenet_cli", "serve", gallery, "--host", "127.0.0.1", "--port", "0",
             "--token", TOKEN], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("facenet serve: open "):
            self.stop()
            sys.exit(f"facenet serve did not start: {line.strip() or self.process.stderr.read().strip()}")
        self.base = line.split("open ", 1)[1].strip().split("?")[0]
        found = re.search(r"X-Facenet-CSRF: (\S+) ", self.process.stderr.readline())
        headers = {"X-Facenet-Token": TOKEN, **({"X-Facenet-CSRF": found.group(1)} if found else {})}
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=60)

    def enrol(self, person: str, path: Path) -> None:
        with open(path, "rb") as fh:
            answer = self.client.post(f"api/gallery/people/{person}/faces", files={"image": (path.name, fh)})
        if answer.status_code != 201:
            sys.exit(f"Enrolling {path.name} through {self.base} failed: {answer.status_code} {answer.text}")

    def names(self, path: Path) -> list[str]:
        with open(path, "rb") as fh:
            answer = self.client.post("api/identify", files={"image": (path.name, fh)})
        answer.raise_for_status()
        return [face["name"] for face in answer.json()["faces"]]

    def people(self) -> list[str]:
        return [p["name"] for p in self.client.get("api/gallery").json()["people"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def wait_until(check) -> tuple[float, list[float]]:
    """Seconds until check() is true (asked one request at a time), and each request's seconds."""
    started = time.perf_counter()
    took = []
    while True:
        asked = time.perf_counter()
        done = check()
        took.append(time.perf_counter() - asked)
        if done:
            return time.perf_counter() - started, took
        if time.perf_counter() - started > GIVE_UP_S:
            sys.exit(f"Server B did not see the enrolment within {GIVE_UP_S:.0f} s.")


def named_after_enrolment(first: "Server", second: "Server", person: str) -> tuple[float, list[float]]:
    """Seconds from A's 201 answer to the end of B's first answer naming `person`, and B's request times."""
    answers: list[tuple[float, float, bool]] = []  # (sent, answered, named)
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            sent = time.perf_counter()
            named = person in second.names(photo(person, 2))
            answers.append((sent, time.perf_counter(), named))

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    try:
        time.sleep(1.0)  # B answering steadily, its view checked as often as it ever is
        if any(named for _, _, named in answers):
            sys.exit(f"Server B names {person} before the enrolment: the gallery was not empty.")
        first.enrol(person, photo(person, 1))
        enrolled = time.perf_counter()
        while not any(named for _, _, named in answers):
            if time.perf_counter() - enrolled > GIVE_UP_S or not asker.is_alive():
                sys.exit(f"Server B did not name {person} within {GIVE_UP_S:.0f} s of the enrolment.")
            time.sleep(0.005)
    finally:
        stop.set()
        asker.join(timeout=60)
    first_named = min(answered for _, answered, named in answers if named)
    return first_named - enrolled, [answered - sent for sent, answered, _ in answers]


def start_postgres(folder: Path) -> object:
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR in a container, a fallback is used
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver.get_server(folder, cleanup_mode="stop")


def summary(values: list[float], scale: float = 1.0, digits: int = 2) -> dict:
    return {"median": round(float(np.median(values)) * scale, digits), "max": round(float(max(values)) * scale, digits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--postgres", default=None, help="a libpq URL of a server with pgvector (default: start one "
                        "with pgserver in work/serve-shared-gallery/pgdata)")
    args = parser.parse_args()
    import psycopg

    from facenet_cli.atomic import write_text_atomic
    from facenet_cli.serve.engine import GALLERY_POLL_S

    people = PEOPLE[:3] if args.quick else PEOPLE
    out = WORK / ("serve-shared-gallery-quick" if args.quick else "serve-shared-gallery")
    out.mkdir(parents=True, exist_ok=True)
    postgres = start_postgres(out / "pgdata") if args.postgres is None else None
    url = args.postgres or postgres.get_uri()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("DROP SCHEMA IF EXISTS shared CASCADE")
    gallery = f"{url}{'&' if '?' in url else '?'}gallery=shared"
    load_before = os.getloadavg()
    servers: list[Server] = []
    try:
        servers = [Server(gallery), Server(gallery)]
        first, second = servers
        named, listed, identify_s = [], [], []
        for person in people:
            wait, took = named_after_enrolment(first, second, person)
            named.append(wait)
            identify_s += took
            first.enrol(person, photo(person, 3))
            count = len(first.client.get("api/gallery").json()["people"])
            wait, _ = wait_until(lambda: any(p["name"] == person and p["faces"] == 2
                                             for p in second.client.get("api/gallery").json()["people"]))
            listed.append(wait)
            if len(second.people()) != count:
                sys.exit("Server B lists other people than server A.")
    finally:
        for server in servers:
            server.stop()
        if postgres is not None:
            postgres.cleanup()
    result = {"enrolments": len(people), "gallery_poll_s": GALLERY_POLL_S, "named_s": summary(named),
              "listed_s": summary(listed), "identify_ms": summary(identify_s, 1000, 0),
              "named_each_s": [round(x, 3) for x in named], "listed_each_s": [round(x, 3) for x in listed],
              "load_average": [round(x, 2) for x in load_before] + [round(os.getloadavg()[0], 2)]}
    write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    print(f"\nTwo facenet serve processes on one PostgreSQL gallery, {len(people)} enrolments through A; "
          f"B checks the gallery every {GALLERY_POLL_S} s; load average before/after {result['load_average']}\n")
    print("| B names the person (s) | B lists the person (s) | one identify request to B (ms) |")
    print("|---|---|---|")
    print(f"| median {result['named_s']['median']}, max {result['named_s']['max']} | "
          f"median {result['listed_s']['median']}, max {result['listed_s']['max']} | "
          f"median {result['identify_ms']['median']:.0f}, max {result['identify_ms']['max']:.0f} |")


if __name__ == "__main__":
    main()
