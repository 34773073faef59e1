"""Wall time from the shell where a user waits for start-up: `facenet --help` and
`facenet compare a.jpg b.jpg`, against the plain path (PyTorch's network, HOG detector built
from scratch) and against `import torch` alone, interleaved, medians of --repeats.

    python benchmarks/startup.py [--repeats 5] [--quick] [--one-process-too]

Each command is a fresh process. `facenet compare` runs with a warm weights cache (the cached
HOG detector and the stamps of verified model files; a first run makes them); the plain path
gets an empty cache each time and loads the PyTorch network (what `compare` did before
engine="auto" and the detector cache). --one-process-too adds `compare` aligning both photos in
the calling process (workers=1) instead of one process per CPU. CPU seconds (user + system, the command and its children)
are printed beside the wall time: on a shared machine they move less with the load.

Python's bytecode is cached as for an installed package (pip writes the .pyc files when it
installs): the commands run without PYTHONDONTWRITEBYTECODE, so the warm-up run writes the .pyc
files of facenet's own modules (into the usual, git-ignored __pycache__ folders) where an
editable install in an environment that sets it would compile them from source on every call
(0.03-0.06 s per command here). --compile-each-time keeps the variable as it is.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import DATA, QUICK_HELP, shell_line  # noqa: E402

SERIAL_COMPARE = """
import sys
from facenet_cli.cli._app import load_embedder
from facenet_cli.pipeline.face_pipeline import FacePipeline
from facenet_cli.recognition.compare import compare_photos
embedder = load_embedder("dlib-resnet.v1", "auto", engine="auto")
pipeline = FacePipeline.of_embedder(embedder)  # hog, upsample auto, every face, no fallback
print(compare_photos(sys.argv[1:], pipeline, workers=1).to_dict()["pairs"])
"""

PLAIN_COMPARE = """
import sys
from facenet_cli.pipeline.face_pipeline import FacePipeline, PipelineOptions
from facenet_cli.recognition.compare import compare_photos
pipeline = FacePipeline.build(PipelineOptions(model="dlib-resnet.v1", device="auto", engine="torch", flip=False))
result = compare_photos(sys.argv[1:], pipeline)
print(result.to_dict()["pairs"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--compile-each-time", action="store_true",
                        help="leave PYTHONDONTWRITEBYTECODE as it is (no bytecode cache for facenet's own modules)")
    parser.add_argument("--one-process-too", action="store_true",
                        help="also time compare_photos(..., workers=1): both photos aligned in one process")
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
    if args.one_process_too:
        commands["compare a b, one process (library)"] = [sys.executable, "-c", SERIAL_COMPARE, a, b]
    env = dict(os.environ, FACENET_CACHE=cache)
    if not args.compile_each_time:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    for label in ("facenet --help", "facenet compare a b"):  # fill the weights and bytecode caches
        subprocess.run(commands[label], env=env, capture_output=True, check=True)
    times: dict[str, list[float]] = {label: [] for label in commands}
    cpu: dict[str, list[float]] = {label: [] for label in commands}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for label, command in commands.items():
            run_env = env if "plain" not in label else dict(env, FACENET_CACHE=tempfile.mkdtemp(prefix="facenet-empty-"))
            used_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(command, env=run_env, capture_output=True, text=True)
            times[label].append(time.perf_counter() - start)
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[label].append(used.ru_utime - used_before.ru_utime + used.ru_stime - used_before.ru_stime)
            if done.returncode != 0:
                raise SystemExit(f"{shell_line(command)} failed:\n{done.stderr}")
    load_after = os.getloadavg()
    print(f"wall seconds from the shell, median of {args.repeats} (interleaved); {os.cpu_count()} CPUs; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    plain = statistics.median(times["plain path (torch network, detector built)"])
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:44} {median:6.2f} s  ({plain / median:4.1f}x faster than the plain path)  "
              f"CPU {statistics.median(cpu[label]):5.2f} s")


if __name__ == "__main__":
    main()
