"""bf16 and int8 against fp32 on real LFW faces: vectors within a stated tolerance, and the
same verdicts on real View 1 pairs (the int8 network's worst case here is 0.0005 in squared
L2, the pairs' distances are 0.04-0.5 around a threshold of 0.182)."""
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
