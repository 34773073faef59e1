"""`--detector hog-fast`: dlib's HOG detector holds five linear filters (looking ahead, left,
right, and ahead but rotated left or right) over one image pyramid. `hog-fast` searches each
level with the first filter alone (cut out of dlib's own serialized detector:
`frontal_sub_detector`) and runs all five there only when it finds no face the policy accepts.
Measured on 500 LFW photos (benchmarks/align_levers.py): 5.3 ms against 8.7 ms a photo, and on
the faces both find a box from the frontal filter where the full detector preferred another
filter's (185 of 500 photos; docs/SPEED.md says what that does to LFW accuracy). Big photos'
downscaled first pass, too, tries the frontal filter first.
"""
from __future__ import annotations

from functools import lru_cache

from . import FaceBox, register_detector
from .hog import HogStage, _hog_model, run_hog


class HogFastStage(HogStage):
    narrow = True

    def __init__(self):
        super().__init__()
        self._frontal = _frontal_model()

    def find_narrow(self, rgb, level: int) -> list[FaceBox]:
        return run_hog(self._frontal, rgb, level)


@lru_cache(maxsize=None)
def _frontal_model():
    """The frontal filter of dlib's HOG detector alone, once per process (~20 ms)."""
    return frontal_sub_detector(_hog_model())


# dlib's frontal face detector: five filters, each a column of 3,101 weights (10x10 cells of 31
# HOG features, and a bias), the frontal one first.
HOG_FILTERS = 5
HOG_FILTER_WEIGHTS = 3101


def _read_dlib_int(data: bytes, pos: int) -> tuple[int, int]:
    """One integer as dlib serializes it: a byte of (sign bit, byte count), then the bytes."""
    head = data[pos]
    size = head & 0x0F
    if size > 8:
        raise ValueError("not an integer")
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "little")
    return (-value if head & 0x80 else value), pos + 1 + size


def hog_filter_spans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Where dlib's serialized HOG detector keeps its filters: the offset of their count and
    the byte span of each. dlib writes them last (a count, then per filter a column matrix whose
    doubles are two integers each), after a short header: the count is at the first offset from
    which five filters end the file exactly. ValueError when the file is not laid out that way."""
    for start in range(len(data) - 2):
        try:
            count, pos = _read_dlib_int(data, start)
            if count != HOG_FILTERS:
                continue
            spans = []
            for _ in range(count):
                begin = pos
                rows, pos = _read_dlib_int(data, pos)
                cols, pos = _read_dlib_int(data, pos)
                if abs(rows) != HOG_FILTER_WEIGHTS or abs(cols) != 1:
                    raise ValueError("not a filter")
                for _ in range(2 * HOG_FILTER_WEIGHTS):  # mantissa and exponent of each double
                    _, pos = _read_dlib_int(data, pos)
                spans.append((begin, pos))
            if pos == len(data):
                return start, spans
        except (ValueError, IndexError):
            continue
    raise ValueError("no HOG filters found")


def frontal_sub_detector(detector, index: int = 0):
    """dlib's HOG detector with one of its five filters (by default the frontal one): its own
    serialized file with the other four cut out. Raises DataError when dlib lays the file out
    otherwise (another version)."""
    import tempfile

    import dlib

    from ..errors import DataError

    with tempfile.TemporaryDirectory(prefix="facenet-hog-") as folder:
        whole = f"{folder}/frontal.svm"
        detector.save(whole)
        with open(whole, "rb") as fh:
            data = fh.read()
        try:
            start, spans = hog_filter_spans(data)
        except ValueError:
            raise DataError(f"dlib {dlib.__version__} stores its HOG detector in a layout hog-fast does not "
                            "know; use --detector hog.") from None
        begin, end = spans[index]
        part = f"{folder}/frontal-{index}.svm"
        with open(part, "wb") as fh:
            fh.write(data[:start] + bytes([1, 1]) + data[begin:end])  # a count of one, then that filter
        return dlib.fhog_object_detector(part)


register_detector("hog-fast", HogFastStage, help="hog's frontal filter first, all five only where it finds no face: 1.6x faster detection, slightly other boxes")
