"""Wall time from the shell where a user waits for start-up: `facenet --help` and
`facenet compare a.jpg b.jpg`, against the plain path (PyTorch's network, HOG detector built
from scratch) and against `import torch` alone, interleaved, medians of --repeats.

    python benchmarks/startup.py [--repeats 5] [--quick]

Each command is a fresh process. `facenet compare` runs with a warm weights cache (the cached
HOG detector; a first run builds it); the plain path gets an empty cache each time and loads
the PyTorch network (what `compare` did before engine="auto" and the detector cache).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import DATA, QUICK_HELP, shell_line  # noqa: E402

PLAIN_COMPARE = """
import sys
from facenet_cli.align import FaceAligner
from facenet_cli.compare import compare_photos
from facenet_cli.embed import Embedder
from facenet_cli.hub import resolve_model
embedder = Embedder(resolve_model("dlib-resnet.v1"), device="auto", engine="torch")
aligner = FaceAligner(embedder.record.align, "hog", "auto", "all", "none")
result = compare_photos(sys.argv[1:], aligner, embedder)
print(result.to_dict()["pairs"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    examples = DATA / "examples"
    a, b = str(examples / "lennon-1.jpg"), str(examples / "lennon-2.jpg")
    facenet = str(Path(sys.executable).with_name("facenet"))
    cache = tempfile.mkdtemp(prefix="facenet-startup-")
    commands = {
        "facenet --help": [facenet, "--help"],
        "facenet compare a b": [facenet, "compare", a, b],
        "plain path (torch network, detector built)": [sys.executable, "-c", PLAIN_COMPARE, a, b],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    env = dict(os.environ, FACENET_CACHE=cache)
    subprocess.run(commands["facenet compare a b"], env=env, capture_output=True, check=True)  # fills the cache
    times: dict[str, list[float]] = {label: [] for label in commands}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for label, command in commands.items():
            run_env = env if "plain" not in label else dict(env, FACENET_CACHE=tempfile.mkdtemp(prefix="facenet-empty-"))
            start = time.perf_counter()
            done = subprocess.run(command, env=run_env, capture_output=True, text=True)
            times[label].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{shell_line(command)} failed:\n{done.stderr}")
    load_after = os.getloadavg()
    print(f"wall seconds from the shell, median of {args.repeats} (interleaved); {os.cpu_count()} CPUs; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    plain = statistics.median(times["plain path (torch network, detector built)"])
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:44} {median:6.2f} s  ({plain / median:4.1f}x faster than the plain path)")


if __name__ == "__main__":
    main()
