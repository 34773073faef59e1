"""benchmarks/detectors.py --quick: the recall table, and every photo or group face that either
detector finds accounted for against the first one (the counts add up to the table's)."""
from __future__ import annotations

import re

import pytest

from .test_benchmarks import run_quick


@pytest.mark.slow
def test_the_recall_table_accounts_for_every_face_either_detector_finds():
    out = run_quick("detectors", "--detectors", "hog,mtcnn")
    rows = {m[0]: tuple(map(int, m[1:])) for m in re.findall(
        r"^(\S+)\s+\|\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+\|\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+$", out, re.M)}
    assert set(rows) == {"hog", "mtcnn"}, out
    line = re.search(r"^mtcnn vs hog: LFW found by either (\d+), both (\d+), hog only (\d+).*?, mtcnn only (\d+)"
                     r".*?, neither (\d+); group faces found by either (\d+), both (\d+), hog only (\d+), "
                     r"mtcnn only (\d+)$", out, re.M)
    assert line, out
    either, both, hog_only, mtcnn_only, neither, g_either, g_both, g_hog, g_mtcnn = map(int, line.groups())
    assert either == both + hog_only + mtcnn_only and either + neither == 12  # --quick: 12 LFW photos
    assert rows["hog"][0] == both + hog_only and rows["mtcnn"][0] == both + mtcnn_only
    assert g_either == g_both + g_hog + g_mtcnn
    assert rows["hog"][3] == g_both + g_hog and rows["mtcnn"][3] == g_both + g_mtcnn
    assert rows["mtcnn"][3] > rows["hog"][3]  # the group's small faces: mtcnn finds more
    assert re.search(r"^mtcnn\s+[\d.]+\s+[\d.]+\s+8\s+0$", out, re.M), out  # end to end: 8 photos, 8 faces
