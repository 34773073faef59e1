"""bf16 and int8 against fp32 on real LFW faces: vectors within a stated tolerance, and the
same verdicts on real View 1 pairs (the int8 network's worst case here is 0.0005 in squared
L2, the pairs' distances are 0.04-0.5 around a threshold of 0.182); then `--precision auto`: the
choice per CPU class (given flag sets, so the tests mean the same on AVX2 and AVX-512 machines),
its resolution in the embedder and the pipeline, and what records it (meta.json, gallery add)."""
from __future__ import annotations

import numpy as np
import pytest

from facenet_cli.models.catalogue import get_record
from facenet_cli.nets.embedder import Embedder
from facenet_cli.errors import UsageError
from tests._dlib_chips import photo_chips

RECORD = get_record("dlib-resnet.v1")
# Squared L2 between a face's fp32 and low-precision unit vectors (measured: int8 median 0.0004,
# bf16 0.00005 on LFW chips).
TOLERANCE = {"bf16": 0.002, "int8": 0.004}
PAIRS_PER_KIND = 12  # the first matched and mismatched pairs of pairsDevTest.txt


def view1_pairs(lfw_dir, lfw_images):
    lines = (lfw_dir / "pairsDevTest.txt").read_text().splitlines()
    size = int(lines[0])
    chosen = lines[1:1 + PAIRS_PER_KIND] + lines[1 + size:1 + size + PAIRS_PER_KIND]
    pairs = []
    for line in chosen:
        f = line.split()
        a, b = ((f[0], int(f[1])), (f[0], int(f[2]))) if len(f) == 3 else ((f[0], int(f[1])), (f[2], int(f[3])))
        pairs.append((a, b, len(f) == 3))
    path = lambda key: lfw_images / key[0] / f"{key[0]}_{key[1]:04d}.jpg"  # noqa: E731
    return [(path(a), path(b), same) for a, b, same in pairs]


@pytest.fixture(scope="module")
def pair_chips(lfw_dir, lfw_images):
    pairs = view1_pairs(lfw_dir, lfw_images)
    photos = sorted({p for a, b, _ in pairs for p in (a, b)})
    chips = dict(zip(photos, photo_chips(photos)))
    return pairs, photos, chips


@pytest.fixture(scope="module")
def vectors(pair_chips):
    _, photos, chips = pair_chips
    crops = [chips[p] for p in photos]
    return {precision: dict(zip(photos, Embedder(RECORD, device="cpu", precision=precision).embed(crops)))
            for precision in ("fp32", "bf16", "int8")}


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_vectors_stay_near_fp32(vectors, precision):
    fp32 = np.stack(list(vectors["fp32"].values()))
    low = np.stack(list(vectors[precision].values()))
    np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    moved = ((low - fp32) ** 2).sum(1)
    assert moved.max() < TOLERANCE[precision], f"{precision} moved a face by {moved.max():.5f}"
    assert moved.max() > 0  # it did run in another arithmetic


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_keeps_view1_verdicts(pair_chips, vectors, precision):
    pairs, _, _ = pair_chips
    threshold = RECORD.threshold

    def verdicts(table):
        distances = [float(((table[a] - table[b]) ** 2).sum()) for a, b, _ in pairs]
        return np.array(distances), np.array([d <= threshold for d in distances])

    fp32_distances, fp32_same = verdicts(vectors["fp32"])
    low_distances, low_same = verdicts(vectors[precision])
    truth = np.array([same for _, _, same in pairs])
    assert (fp32_same == truth).mean() >= 0.9  # the subset is a real test of the model
    # Stated loss: at most one verdict in these 24 pairs may change, and no distance by 0.01.
    assert (low_same != fp32_same).sum() <= 1
    assert np.abs(low_distances - fp32_distances).max() < 0.01


def test_int8_and_bf16_choices_are_checked():
    from dataclasses import replace

    with pytest.raises(UsageError, match="precision"):
        Embedder(RECORD, device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="CPU only"):
        Embedder(RECORD, device="cuda", precision="int8")
    with pytest.raises(UsageError, match="int8 is available for dlib-resnet"):
        Embedder(replace(RECORD, name="student", architecture="nn4.small2"), device="cpu", precision="int8")


def test_represent_records_precision(run_cli, pair_chips, tmp_path):
    import json

    import cv2

    _, photos, chips = pair_chips
    aligned = tmp_path / "aligned"
    for photo in photos[:3]:
        (aligned / photo.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(aligned / photo.parent.name / (photo.stem + ".png")), cv2.cvtColor(chips[photo], cv2.COLOR_RGB2BGR))
    result = run_cli("represent", aligned, tmp_path / "reps", "--precision", "int8", "--json")
    assert result.exit_code == 0, result.stderr
    meta = json.loads((tmp_path / "reps" / "meta.json").read_text())
    assert meta["precision"] == "int8" and meta["tta"] == 0
    reps = np.load(tmp_path / "reps" / "reps.npy")
    expected = Embedder(RECORD, device="cpu", precision="int8").embed([chips[p] for p in sorted(photos[:3])])
    np.testing.assert_allclose(reps, expected, atol=1e-6)


# --- `--precision auto`: the choice from the CPU's flags and the recorded tables -----------------

# Flag sets of real CPUs (the relevant part of /proc/cpuinfo's "flags" line).
AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma", "bmi2"}  # the project's AMD EPYC (docs/SPEED.md)
SKYLAKE_AVX512 = AVX2_EPYC | {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni"}  # no bf16 units
SAPPHIRE_RAPIDS = SKYLAKE_AVX512 | {"avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni"}
NO_AVX2 = {"fpu", "sse4_2", "avx"}


def test_auto_choice_per_cpu_class():
    from facenet_cli.nets.precision import choose_precision, cpu_class

    assert cpu_class(AVX2_EPYC) == "avx2" and cpu_class(SKYLAKE_AVX512) == "avx2"
    assert cpu_class(SAPPHIRE_RAPIDS) == "avx512-bf16" and cpu_class(NO_AVX2) == "baseline"
    # AVX2: int8 is measured 1.30x fp32 and 0.05 point below it on View 2; bf16 is emulated (0.13x).
    assert choose_precision(RECORD, "cpu", AVX2_EPYC) == "int8"
    assert choose_precision(RECORD, "cpu", SKYLAKE_AVX512) == "int8"  # judged by the AVX2 figures
    # AVX-512 BF16: bf16 2.12x, int8 2.05x, both within 0.1 point: the faster one.
    assert choose_precision(RECORD, "cpu", SAPPHIRE_RAPIDS) == "bf16"
    assert choose_precision(RECORD, "cpu", NO_AVX2) == "fp32"  # nothing measured: the reference
    for flags in (AVX2_EPYC, SAPPHIRE_RAPIDS, NO_AVX2):
        assert choose_precision(RECORD, "cuda", flags) == "fp32"  # nothing measured on a GPU yet


def test_auto_choice_follows_the_tables(monkeypatch):
    """The rule itself: the fastest precision within 0.1 point of fp32, whatever the figures."""
    from dataclasses import replace

    from facenet_cli.nets import precision

    monkeypatch.setitem(precision.CPU_SPEED, "avx512-bf16", {"fp32": 1.0, "bf16": 2.0, "int8": 2.5})
    monkeypatch.setitem(precision.VIEW2_ACCURACY, "dlib-resnet.v1",
                        {"avx512-bf16": {"fp32": 0.9902, "bf16": 0.9900, "int8": 0.9890}})
    assert precision.choose_precision(RECORD, "cpu", SAPPHIRE_RAPIDS) == "bf16"  # int8 loses 0.12 point
    monkeypatch.setitem(precision.VIEW2_ACCURACY, "dlib-resnet.v1",
                        {"avx512-bf16": {"fp32": 0.9902, "bf16": 0.9900, "int8": 0.9892}})
    assert precision.choose_precision(RECORD, "cpu", SAPPHIRE_RAPIDS) == "int8"  # exactly 0.1 point
    monkeypatch.setitem(precision.CPU_SPEED, "avx512-bf16", {"fp32": 1.0, "bf16": 0.9, "int8": 0.8})
    assert precision.choose_precision(RECORD, "cpu", SAPPHIRE_RAPIDS) == "fp32"  # nothing faster
    # A model without View 2 figures (a trained checkpoint, nn4) stays fp32; int8 is dlib-resnet's only.
    student = replace(RECORD, name="student", architecture="nn4.small2")
    assert precision.choose_precision(student, "cpu", SAPPHIRE_RAPIDS) == "fp32"
    monkeypatch.setitem(precision.VIEW2_ACCURACY, "student", {"avx512-bf16": {"fp32": 0.9, "int8": 0.9}})
    monkeypatch.setitem(precision.CPU_SPEED, "avx512-bf16", {"fp32": 1.0, "bf16": 0.9, "int8": 3.0})
    assert precision.choose_precision(student, "cpu", SAPPHIRE_RAPIDS) == "fp32"


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    from facenet_cli.nets.precision import cpu_class, cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx avx2 fma\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx", "avx2", "fma"}
    assert cpu_class(cpu_flags(str(cpuinfo))) == "avx2"
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_auto_resolves_in_the_embedder_and_the_pipeline():
    from facenet_cli.nets.precision import choose_precision
    from facenet_cli.pipeline.face_pipeline import FacePipeline

    here = choose_precision(RECORD, "cpu")
    embedder = Embedder(RECORD, device="cpu", precision="auto", engine="auto")
    assert embedder.precision == here and embedder.requested_precision == "auto"
    assert Embedder(RECORD, device="cpu", precision="auto", engine="dlib").precision == "fp32"
    pipeline = FacePipeline.build(model="dlib-resnet.v1", device="cpu", engine="auto", verify=False)
    assert pipeline.options.precision == "auto" and pipeline.embedder.precision == here
    explicit = FacePipeline.build(model="dlib-resnet.v1", device="cpu", precision="fp32", engine="auto", verify=False)
    assert explicit.embedder.precision == "fp32"  # a precision given wins


def test_auto_vectors_stay_near_fp32(pair_chips, vectors):
    """Whatever auto picks on this CPU keeps real LFW faces near fp32's vectors: the median face
    within the issue's 0.0008 (bf16: 0.00004, int8: 0.0003 over View 2's 7,701 crops), the worst
    within the precision's stated tolerance (int8 reached 0.007 on a few View 2 crops, bf16 0.0001)."""
    _, photos, chips = pair_chips
    embedder = Embedder(RECORD, device="cpu", precision="auto")
    auto = embedder.embed([chips[p] for p in photos])
    fp32 = np.stack([vectors["fp32"][p] for p in photos])
    moved = ((auto - fp32) ** 2).sum(1)
    assert np.median(moved) <= 0.0008, f"auto ({embedder.precision}): median move {np.median(moved):.5f}"
    assert moved.max() <= TOLERANCE.get(embedder.precision, 0.0), f"auto ({embedder.precision}) moved {moved.max():.5f}"


def test_auto_small_job_runs_dlibs_fp32(pair_chips, vectors):
    """compare's engine: a handful of faces goes to dlib's fp32 network (no torch import), and the
    embedder then says fp32."""
    _, photos, chips = pair_chips
    embedder = Embedder(RECORD, device="cpu", precision="auto", engine="auto")
    got = embedder.embed([chips[p] for p in photos[:2]])
    assert embedder.precision == "fp32" and embedder._dlib_net is not None
    np.testing.assert_allclose(got, np.stack([vectors["fp32"][p] for p in photos[:2]]), atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_gallery_matches_fp32_queries(pair_chips, vectors, precision):
    """A gallery enrolled in bf16 or int8 and queried in fp32 (or the other way round, another CPU's
    auto): the operating points were calibrated in fp32, so a pair's distance may move by 0.01 at
    most here, and at most one of the 24 verdicts may change."""
    pairs, _, _ = pair_chips
    same = np.array([float(((vectors["fp32"][a] - vectors["fp32"][b]) ** 2).sum()) for a, b, _ in pairs])
    mixed = np.array([float(((vectors[precision][a] - vectors["fp32"][b]) ** 2).sum()) for a, b, _ in pairs])
    assert np.abs(mixed - same).max() < 0.01
    assert ((mixed <= RECORD.threshold) != (same <= RECORD.threshold)).sum() <= 1


def test_represent_records_auto_precision(run_cli, pair_chips, tmp_path):
    import json

    import cv2

    from facenet_cli.nets.precision import choose_precision

    _, photos, chips = pair_chips
    aligned = tmp_path / "aligned"
    for photo in photos[:3]:
        (aligned / photo.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(aligned / photo.parent.name / (photo.stem + ".png")), cv2.cvtColor(chips[photo], cv2.COLOR_RGB2BGR))
    result = run_cli("represent", aligned, tmp_path / "reps", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    here = choose_precision(RECORD, "cpu")
    assert json.loads((tmp_path / "reps" / "meta.json").read_text())["precision"] == here
    reps = np.load(tmp_path / "reps" / "reps.npy")
    expected = Embedder(RECORD, device="cpu", precision=here).embed([chips[p] for p in sorted(photos[:3])])
    np.testing.assert_allclose(reps, expected, atol=1e-6)
    explicit = run_cli("represent", aligned, tmp_path / "reps32", "--device", "cpu", "--precision", "fp32", "--json")
    assert explicit.exit_code == 0, explicit.stderr
    assert json.loads((tmp_path / "reps32" / "meta.json").read_text())["precision"] == "fp32"


def test_gallery_add_reports_the_precision_used(run_cli, lfw_images, tmp_path):
    """`gallery add --json` says which arithmetic embedded its faces: auto's choice for photos, the
    represent output's own (meta.json) for reps."""
    import json
    import shutil

    from facenet_cli.nets.embedder import auto_precision

    known = tmp_path / "known" / "Colin_Powell"
    known.mkdir(parents=True)
    for index in (1, 2):
        shutil.copy(lfw_images / "Colin_Powell" / f"Colin_Powell_{index:04d}.jpg", known)
    result = run_cli("gallery", "add", tmp_path / "g.gallery", tmp_path / "known", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"]["added"] == 2 and report["precision"] == auto_precision(RECORD, "auto")
    again = json.loads(run_cli("gallery", "add", tmp_path / "g.gallery", tmp_path / "known", "--json").stdout)
    assert again["counts"]["already-in"] == 2 and again["precision"] is None  # nothing embedded

    aligned = tmp_path / "aligned"
    assert run_cli("align", tmp_path / "known", aligned).exit_code == 0
    assert run_cli("represent", aligned, tmp_path / "reps", "--precision", "int8").exit_code == 0
    from_reps = run_cli("gallery", "add", tmp_path / "r.gallery", tmp_path / "reps", "--json")
    assert from_reps.exit_code == 0, from_reps.stderr
    assert json.loads(from_reps.stdout)["precision"] == "int8"


def test_embed_speed_prints_the_auto_choice_beside_the_ratios():
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from facenet_cli.nets.precision import CPU_SPEED, choose_precision, cpu_class

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "embed_speed.py"), "--precision", "--quick"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"CPU class {cpu_class()} " in done.stdout
    assert f"--precision auto runs dlib-resnet.v1 in {choose_precision(RECORD, 'cpu')}" in done.stdout
    measured = re.search(r"measured now: fp32 ([0-9.]+)x, bf16 ([0-9.]+)x, int8 ([0-9.]+)x", done.stdout)
    assert measured and float(measured.group(1)) == 1.0 and float(measured.group(2)) > 0
    if cpu_class() in CPU_SPEED:
        assert "recorded speed vs fp32: fp32 1.00x" in done.stdout


def test_lfw_tta_mixed_scores_a_low_precision_gallery_against_fp32(tmp_path):
    """`lfw_tta.py --mixed`: each pair's first image from fp32, the second from bf16 (a gallery
    made on an AVX-512 machine queried on an AVX2 one): the same verdicts here, faces within 0.002."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "lfw_tta.py"), "--quick", "--work", tmp_path,
                           "--variant", "fp32:flip", "--variant", "bf16:flip", "--mixed"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    number = r"([0-9.]+)"
    rows = dict((name, [float(x) for x in rest]) for name, *rest in re.findall(
        rf"^(fp32:flip|bf16:flip)\s+{number}\s+(\d+)\s+{number}\s+{number}\s+{number}\s+(\d+)$", done.stdout, re.M))
    assert set(rows) == {"fp32:flip", "bf16:flip"}, done.stdout[-2000:]
    assert rows["fp32:flip"][1:] == [0, 0, 0, 0, 0]
    accuracy, changed, distance_change, _, worst, over = rows["bf16:flip"]
    assert changed <= 1 and accuracy >= rows["fp32:flip"][0] - 0.05
    assert 0 < worst < 0.002 and distance_change < 0.01 and over == 0
