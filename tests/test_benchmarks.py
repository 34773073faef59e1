"""Every benchmark script runs: its `--quick` mode (the same steps and table on a few dozen real
LFW images) as a subprocess, with the printed figures checked against floors a working pipeline
clears and a broken one does not. The train_lfw_dev sequence is docs/TRAINING.md's, as shown.

Quick figures come from too few images to quote; the floors are set well below what the full
runs measure, and above what a broken step (random embeddings, wrong faces, lost files) gives.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Each runs a benchmark script end to end (~10-40 s each): `make test` runs them, `make test-fast` not.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
LFW_IMAGES = Path(os.environ.get("FACENET_DATA", ROOT.parent / "shared" / "data")) / "lfw" / "deepfunneled"


@pytest.fixture(autouse=True)
def _need_lfw(lfw_dir):
    """The scripts read LFW from ../shared/data (skipped with the fixture's reason without it)."""


def run_quick(script: str, *args, timeout: int = 300) -> str:
    """Run `python benchmarks/SCRIPT.py --quick ARGS` from the repository root; its stdout."""
    command = [sys.executable, str(BENCHMARKS / f"{script}.py"), *map(str, args), "--quick"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, (f"{' '.join(command[1:])} exited {done.returncode}:\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def figure(pattern: str, text: str) -> tuple[float, ...]:
    match = re.search(pattern, text, re.M)
    assert match, f"no line matching {pattern!r} in:\n{text[-3000:]}"
    return tuple(float(g) for g in match.groups())


def test_align_speed_quick():
    out = run_quick("align_speed")
    one, = figure(rf"^\s+1\s+{NUMBER}$", out)
    two, = figure(rf"^\s+2\s+{NUMBER}$", out)
    ratio, = figure(rf"ratio workers 2 / workers 1: {NUMBER}x", out)
    # The rates are printed to 0.1 image/s, the ratio from the unrounded ones.
    assert ratio == pytest.approx(two / one, abs=0.005 + two / one * (0.05 / one + 0.05 / two))
    stages = dict(re.findall(r"(\w+) ([0-9.]+)", out.split("ms per image by stage (workers 1): ")[1].splitlines()[0]))
    assert set(stages) == {"decode", "detect", "landmarks", "warp", "write"}
    assert float(stages["detect"]) > 0
    counts_text, total = re.search(r"counts \(workers 2\): (\{.*\}), total (\d+)", out).groups()
    counts = ast.literal_eval(counts_text)
    assert sum(counts.values()) == int(total) == 24
    assert counts["aligned"] >= 22  # HOG finds nearly every LFW face


def test_embed_speed_quick():
    out = run_quick("embed_speed")
    rows = re.findall(rf"^batch (\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 4]
    for _, ours, theirs, ratio in rows:
        assert float(ratio) == pytest.approx(float(theirs) / float(ours), rel=0.02)
        assert float(ratio) > 2  # our batched port beats dlib's own descriptor call (12x-28x measured)
    network, matmul, ratio = figure(rf"network {NUMBER} GFLOP/s, matmul {NUMBER} GFLOP/s, network/matmul = {NUMBER}", out)
    assert network > 0 and matmul > 0
    assert ratio == pytest.approx(network / matmul, abs=0.02)


def test_end_to_end_quick():
    out = run_quick("end_to_end")
    ours, = figure(rf"^ours \(represent_photos\)\s+{NUMBER}", out)
    theirs, = figure(rf"^theirs \(face_recognition defaults\)\s+{NUMBER}", out)
    ratio, = figure(rf"ratio ours / theirs: {NUMBER}x", out)
    assert ratio == pytest.approx(ours / theirs, abs=0.01)
    both, median_cos, min_cos = figure(rf"agreement on (\d+) faces both embedded .*: cosine median {NUMBER}, min {NUMBER}", out)
    assert both >= 7  # of 8 images
    # Our port of dlib's network on our chips equals dlib's own descriptors of its own chips.
    assert median_cos > 0.99 and min_cos > 0.95


def test_lfw_levers_quick(tmp_path):
    out = run_quick("lfw_levers", "--out", tmp_path)
    rows = re.findall(rf"^(.{{72}}) +(\d+) +(\d+) +{NUMBER} +{NUMBER} +\d+$", out, re.M)
    assert len(rows) == 7, out
    for label, _, _, accuracy, auc in rows:
        assert float(accuracy) >= 0.75, label  # 8 test pairs: at most 2 wrong
    embeddings = dict((label.strip(), (float(a), float(t))) for label, a, _, t in
                      re.findall(rf"^(.{{40}}) +{NUMBER} +{NUMBER} +{NUMBER}$", out, re.M))
    accuracy, threshold = embeddings["unit-normalised (squared L2)"]
    assert accuracy >= 0.75
    assert 0.1 < threshold < 0.3  # the model's own threshold is 0.182
    unit, centred = figure(rf"mean cosine between unrelated faces: unit-normalised {NUMBER}, mean-centred (-?[0-9.]+)", out)
    assert 0.7 < unit < 0.95 and abs(centred) < 0.3


def test_lfw_view2_quick(tmp_path):
    out = run_quick("lfw_view2", "--out", tmp_path)
    images, aligned, fallback, no_face, unreadable, other = figure(
        r"^images: (\d+); aligned (\d+), centre-box fallback (\d+), no face (\d+), unreadable (\d+), other (\d+)", out)
    # With the centre-box fallback every LFW image gets a crop (the View 2 pipeline of README.md and docs/ACCURACY.md).
    assert aligned + fallback == images > 60 and no_face == unreadable == other == 0
    accuracy, std = figure(rf"^facenet \(this run\)\s+{NUMBER} ± {NUMBER}", out)
    assert accuracy >= 0.9  # 40 pairs, 4 per fold
    assert figure(r"pairs with a missing embedding: (\d+)", out) == (0,)
    assert json.loads((tmp_path / "eval" / "result.json").read_text())["pairs"] == 40


def test_train_lfw_dev_readme_sequence_quick(tmp_path):
    """docs/TRAINING.md's order: prepare, teacher, random, triplet, then distill as its last
    line gives it (no --teacher: it must find what the teacher step wrote)."""
    work = tmp_path / "train-dev"
    run_quick("train_lfw_dev", "prepare", "teacher", "random", "triplet", "--work", work, timeout=400)
    out = run_quick("train_lfw_dev", "distill", "--minutes", "25", "--distill-images", "60", "--triplet-weight", "0",
                    "--name", "distill-all", "--work", work, timeout=300)
    table = dict((name, (int(epochs), float(accuracy), float(auc))) for name, epochs, accuracy, auc in
                 re.findall(rf"^(\S+) +(\d+) +\d+ +[0-9-]* +{NUMBER} +{NUMBER}$", out, re.M))
    assert set(table) == {"random", "triplet", "distill-all"}, out
    assert table["random"][0] == 0 and table["triplet"][0] == table["distill-all"][0] == 1
    teacher_rows = (work / "teacher-reps" / "labels.csv").read_text().splitlines()
    assert len(teacher_rows) == len(list((work / "aligned-train").glob("*/*.png"))) == 32
    result = json.loads((work / "lfw-distill-all" / "result.json").read_text())
    assert result["pairs"] == 20 and result["accuracy_mean"] == pytest.approx(table["distill-all"][1], abs=5e-5)


def test_tight_crops_quick(tmp_path):
    out = run_quick("tight_crops", "--out", tmp_path)
    rows = {label.strip(): (int(count), float(found), float(center), float(whole) if whole else None)
            for label, count, found, center, whole in
            re.findall(rf"^(.{{34}}) +(\d+) +{NUMBER}% +{NUMBER} *{NUMBER}?$", out, re.M)}
    reference = rows.pop("original LFW images (reference)")
    mean = rows.pop("tight crops, hard lighting (mean)")
    assert reference[0] == 24 and reference[2] >= 0.9
    assert set(rows) == {"tight crops, plain", "tight crops, dark gamma 2.2", "tight crops, low contrast",
                         "tight crops, side shadow"}
    assert all(count == 24 for count, *_ in rows.values()) and mean[0] == 72
    assert rows["tight crops, plain"][3] >= 0.85
    # Where HOG finds the face both runs are the same; where it does not, the whole crop is the
    # right box and the centre box of an LFW frame is not.
    assert rows["tight crops, side shadow"][1] < 100
    assert mean[3] >= mean[2]
    assert rows["tight crops, side shadow"][3] > rows["tight crops, side shadow"][2]
    missed = {label.strip(): (int(count), float(center), float(whole)) for label, count, center, whole in
              re.findall(rf"^(tight crops, .{{21}}) +(\d+) +{NUMBER} +{NUMBER}$", out, re.M)}
    assert set(missed) == set(rows)
    count, center, whole = missed["tight crops, side shadow"]
    assert count == round(24 * (1 - rows["tight crops, side shadow"][1] / 100))
    assert whole >= 0.5 > center  # on the crops HOG missed, the whole-image box is the one that works


# ---------------------------------------------------------------- scripts of issue 9 (identify, cluster)

def test_cluster_lfw_quick():
    run_quick("cluster_lfw")
    result = json.loads((ROOT / "work" / "cluster-lfw-quick" / "result.json").read_text())
    everyone, disjoint, scale = result["all"], result["disjoint"], result["scale"]
    # Clustering a few real LFW people at the calibrated threshold puts faces with their own.
    assert everyone["f"] >= 0.8 and disjoint["f"] >= 0.8
    assert disjoint["faces"] < everyone["faces"] and disjoint["people"] < everyone["people"]
    assert scale["faces"] == everyone["faces"] * 8  # each face plus 7 perturbed copies
    assert scale["f"] >= 0.8


def test_identify_lfw_quick(tmp_path):
    """In an empty work folder (as in CI): it aligns and embeds its own few test people first."""
    out = run_quick("identify_lfw", "--work", tmp_path)
    assert figure(r"^### test people .*: (\d+) known people \((\d+) faces\), (\d+) queries, (\d+) strangers$", out) == (
        5, 25, 25, 40)
    assert (tmp_path / "identify-lfw-quick" / "reps" / "meta.json").is_file()
    base, ours = figure(rf"^\| closed-set rank-1 \| {NUMBER} \| {NUMBER} \|$", out)
    assert base >= 0.9 and ours >= 0.9
    named_base, named_ours = figure(rf"^\| strangers named at the default operating point \| {NUMBER} .*\| {NUMBER} \(FAR", out)
    assert named_ours < named_base  # the gate turns strangers away that the pair threshold names
    dir_base, dir_ours = figure(rf"^\| DIR at the default operating point \| {NUMBER} \| {NUMBER} \|$", out)
    assert dir_ours >= 0.8


def run_missing_input(script: str, *args) -> str:
    """Run a full (not --quick) mode whose input is absent: exit 1 and one sentence, no traceback."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def test_identify_lfw_without_embeddings_says_how_to_make_them(tmp_path):
    message = run_missing_input("identify_lfw", "--work", tmp_path)
    assert f"facenet align {LFW_IMAGES} {tmp_path}/lfw-all/aligned --faces center-only" in message
    assert f"facenet represent {tmp_path}/lfw-all/aligned {tmp_path}/lfw-all/reps --flip" in message


def test_serve_load_quick():
    out = run_quick("serve_load")
    rows = re.findall(rf"^\| (\d+) \| ([^|]+) \| {NUMBER} \| {NUMBER} \| (\d+) ms \| (\d+) ms \| (\d+)(?: of (\d+))? \| (\d+) ms \|$",
                      out, re.M)
    assert [(int(r[0]), r[1].strip()) for r in rows] == [
        (1, "two frames in flight (as the page)"), (4, "two frames in flight (as the page)"), (1, "30 fps, open loop")], out
    # Every answered frame found its one face (a server answering with no faces would fail here).
    assert "not every frame's face was found" not in out
    for clients, sending, per_client, in_all, median, p95, dropped, sent, cpu in rows:
        # fps in all is per client times clients (each printed to 0.1)
        assert float(in_all) == pytest.approx(float(per_client) * int(clients), abs=0.06 * int(clients) + 0.06)
        assert float(per_client) > 0 and int(median) <= int(p95) and int(cpu) > 0
        if sending.startswith("two frames"):
            assert int(dropped) == 0  # two frames in flight: one processed, one waiting, nothing to drop
        else:
            assert int(dropped) <= int(sent)
            if float(per_client) < 25:  # answering slower than frames come: the server drops stale ones
                assert int(dropped) > 0


# ---------------------------------------------------------------- speed scripts of other issues

def test_lfw_tta_quick(tmp_path):
    """With no aligned LFW (as in CI): it aligns the images its 10 + 10 pairs name itself."""
    out = run_quick("lfw_tta", "--work", tmp_path, "--aligned", tmp_path / "absent")
    passes, accuracy, std, auc = figure(rf"^fp32:flip +(\d+) +{NUMBER} \+- {NUMBER} +{NUMBER} +(?:[0-9.]+|reused)$", out)
    assert passes == 2  # the image and its mirror
    assert accuracy >= 0.9 and auc >= 0.95  # 10 + 10 View 1 test pairs
    images, = figure(rf"^LFW View 1 \(pairsDevTest.txt, (\d+) images\), crops {tmp_path}/view1-quick/aligned;", out)
    assert images == len(list((tmp_path / "view1-quick" / "aligned").glob("*/*.png"))) > 40


def test_lfw_tta_without_aligned_crops_says_how_to_make_them(tmp_path):
    message = run_missing_input("lfw_tta", "--work", tmp_path, "--aligned", tmp_path / "absent")
    assert f"facenet align {LFW_IMAGES} {tmp_path}/absent --faces center-only --detector hog+cnn" in message


def test_startup_quick():
    out = run_quick("startup")
    seconds = {label.strip(): float(s) for label, s in re.findall(rf"^  (.{{44}}) +{NUMBER} s", out, re.M)}
    assert set(seconds) == {"facenet --help", "facenet compare a b", "plain path (torch network, detector built)",
                            "python -c 'import torch'"}, out
    assert seconds["facenet --help"] < seconds["python -c 'import torch'"]  # --help loads no engine
    assert seconds["facenet compare a b"] < seconds["plain path (torch network, detector built)"]


def test_ray_overhead_quick():
    """The Ray executor's outputs equal the local executor's on the same images, and the table and
    the on-paper million-photo estimate are printed from measured per-image costs."""
    out = run_quick("ray_overhead")
    assert re.search(r"same outputs: crops byte-identical True, report identical True, "
                     r"largest embedding difference ([0-9.e+-]+)", out), out[-2000:]
    difference, = figure(r"largest embedding difference ([0-9.]+e[+-][0-9]+)", out)
    assert difference <= 1e-5
    local, ray, ratio = figure(rf"^both\s+{NUMBER}\s+{NUMBER}\s+.*\s+{NUMBER}x$", out)
    # The seconds are printed to 0.1 s: the ratio must lie within what that rounding allows (a
    # fast quick run has ~0.5 s locally, where a relative tolerance would not hold).
    assert (ray - 0.05) / (local + 0.05) - 0.01 <= ratio <= (ray + 0.05) / max(local - 0.05, 1e-9) + 0.01
    one_node, = figure(rf"^\s+1\s+{NUMBER}$", out)
    ten_nodes, = figure(rf"^\s+10\s+{NUMBER}$", out)
    assert 0 < ten_nodes <= one_node


def test_gallery_add_quick():
    out = run_quick("gallery_add")
    batched, = figure(rf"^batched \(--batch-size 32\)\s+{NUMBER}", out)
    single, = figure(rf"^one at a time \(--batch-size 1\)\s+{NUMBER}", out)
    ratio, = figure(rf"ratio batched / one at a time: {NUMBER}x", out)
    assert ratio == pytest.approx(single / batched, abs=0.05)
    common, first, second, diff = figure(rf"same faces enrolled: (\d+) of (\d+) and (\d+); largest embedding "
                                         rf"difference ([0-9.e+-]+)", out)
    assert common == first == second >= 10  # of 12 photos
    assert diff < 1e-5


def test_align_levers_quick():
    out = run_quick("align_levers")
    plain, plain_ratio, plain_faces, plain_other = figure(
        rf"^all five sub-detectors \(plain\)\s+{NUMBER}\s+{NUMBER}x\s+(\d+)\s+(\d+)", out)
    assert plain_ratio == 1.0 and plain_other == 0 and plain_faces >= 10  # of 12 LFW photos
    alone, ratio, faces, other = figure(rf"^frontal sub-detector alone\s+{NUMBER}\s+{NUMBER}x\s+(\d+)\s+(\d+)", out)
    assert ratio == pytest.approx(plain / alone, rel=0.05) and faces >= 8  # the cut-out detector works
    default_ms, default_ratio, default_kb = figure(rf"^OpenCV's default \(align's\)\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}", out)
    assert default_ratio == 1.0 and 10 < default_kb < 80  # a 150x150 colour crop, losslessly compressed


def test_gallery_calibration_quick(tmp_path):
    """Per-gallery calibration on its own few held-out people: strangers named within the FAR's
    sampling error in every row, known faces named."""
    out = run_quick("gallery_calibration", "--work", tmp_path)
    rows = re.findall(rf"^\| (\d+) \| ([^|]+) \| (\d+) \| {NUMBER} (ok|ABOVE) \| 0\.01 \+ {NUMBER} \| {NUMBER} \| "
                      rf"{NUMBER} \|", out, re.M)
    assert len(rows) == 9, out
    for size, composition, draws, named, verdict, error, worst, right in rows:
        assert verdict == "ok" and float(named) <= 0.01 + float(error), (size, composition)
        assert float(right) >= 0.8, (size, composition, right)


def test_gallery_calibration_without_embeddings_says_how_to_make_them(tmp_path):
    message = run_missing_input("gallery_calibration", "--work", tmp_path)
    assert f"facenet represent {tmp_path}/lfw-all/aligned {tmp_path}/lfw-all/reps --flip" in message


# ---------------------------------------------------------------- PostgreSQL galleries (issue 22)

def test_gallery_postgres_quick_then_reuse():
    """Both stores filled and searched; --reuse measures the kept galleries again without refilling."""
    pytest.importorskip("pgserver")
    result_file = ROOT / "work" / "gallery-postgres-quick" / "result.json"
    for args in ((), ("--reuse",)):
        run_quick("gallery_postgres", "--ef-search", "40,100", *args, timeout=600)
        result = json.loads(result_file.read_text())
        assert result["reused"] == bool(args) and result["faces"] == 5000
        stores = [row["store"] for row in result["rows"]]
        assert stores == ["SQLite + faiss", "PostgreSQL + pgvector (ef_search 40)",
                          "PostgreSQL + pgvector (ef_search 100)"]
        for row in result["rows"]:
            assert row["build_s"] > 0 and row["disk_mb"] > 1  # 5,000 faces of 128 floats are 2.4 MB
            for label in ("new photo", "variant"):
                # A store answering wrong faces (lost rows, a wrong index metric) falls far below these.
                assert row[label]["recall@1"] >= 0.9 and row[label]["person_recall@1"] >= 0.9, (row["store"], label)


def test_serve_shared_gallery_quick():
    """Two `facenet serve` processes on one PostgreSQL gallery: each enrolment through one is named by the other."""
    pytest.importorskip("pgserver")
    out = run_quick("serve_shared_gallery", timeout=600)
    assert re.search(rf"^\| median {NUMBER}, max {NUMBER} \| median {NUMBER}, max {NUMBER} \| ", out, re.M), out
    result = json.loads((ROOT / "work" / "serve-shared-gallery-quick" / "result.json").read_text())
    assert result["enrolments"] == len(result["named_each_s"]) == len(result["listed_each_s"]) == 3
    # Generous (a loaded CI machine): the issue asks for a second; B checks the gallery every 0.5 s.
    assert result["named_s"]["median"] < 10
