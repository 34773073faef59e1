"""Embed an aligned tree into a representation folder, streaming, decode overlapped with the net."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .align_specs import AlignSpec
from .catalogue import ModelRecord
from .embed import Embedder
from .errors import BadImage, SpecMismatch, UsageError
from .images import looks_like_image, read_rgb
from .jobs import SPEC_FILE, list_inputs
from .reps import RepsWriter, person_of


@dataclass
class RepresentReport:
    out_dir: Path
    count: int  # faces written
    seconds: float
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def total(self) -> int:
        return self.count + len(self.unreadable)


def list_aligned(aligned: Path) -> list[str]:
    return [p for p in list_inputs(aligned) if looks_like_image(Path(p))]


def check_alignment(aligned: Path, record: ModelRecord, first_image: Path | None) -> None:
    """Refuse a folder aligned for another model, with a sentence that says what to do."""
    spec_file = aligned / SPEC_FILE
    fix = f"realign the photos with `facenet align RAW OUT --model {record.name}`"
    if spec_file.exists():
        try:
            spec = AlignSpec.from_dict(json.loads(spec_file.read_text())["spec"])
        except (ValueError, KeyError, TypeError):
            raise SpecMismatch(f"{spec_file} is damaged; {fix}.") from None
        if spec != record.align:
            raise SpecMismatch(
                f"{aligned} was aligned with {spec.name} at {spec.size} px but {record.name} needs "
                f"{record.align.name} at {record.align.size} px; {fix}.")
    elif first_image is not None:
        # A folder from elsewhere (OpenFace's align-dlib): at least the size must match.
        size = read_rgb(first_image).shape[:2]
        if size != (record.align.size, record.align.size):
            raise SpecMismatch(
                f"{first_image} is {size[1]}x{size[0]} but {record.name} needs {record.align.size}x"
                f"{record.align.size} crops aligned with {record.align.name}; {fix}.")


def _decoded_batches(aligned: Path, files: list[str], batch_size: int) -> Iterator[list[tuple[str, np.ndarray | BadImage]]]:
    """Decode the next batch in a thread while the network runs the current one."""

    def decode_batch(batch: list[str]):
        decoded = []
        for rel in batch:
            try:
                decoded.append((rel, read_rgb(aligned / rel)))
            except BadImage as exc:
                decoded.append((rel, exc))
        return decoded

    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(decode_batch, batches[0]) if batches else None
        for index in range(len(batches)):
            current = future.result()
            if index + 1 < len(batches):
                future = pool.submit(decode_batch, batches[index + 1])
            yield current


def represent_tree(aligned: str | Path, out: str | Path, embedder: Embedder,
                   on_start: Callable[[int], None] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> RepresentReport:
    """Embed every aligned image under ALIGNED into OUT's labels.csv, reps.csv and reps.npy."""
    aligned, out = Path(aligned), Path(out)
    if not aligned.is_dir():
        raise UsageError(f"The aligned folder {aligned} does not exist; run `facenet align` first.")
    files = list_aligned(aligned)
    if not files:
        raise UsageError(f"{aligned} holds no images; run `facenet align RAW {aligned}` first.")
    record = embedder.record
    check_alignment(aligned, record, aligned / files[0])
    if on_start:
        on_start(len(files))
    started = time.perf_counter()
    unreadable: list[tuple[str, str]] = []
    meta = {"model": record.to_dict(), "aligned": str(aligned), "flip": embedder.flip}
    with RepsWriter(out, len(files), record.embedding_dim, meta) as writer:
        for batch in _decoded_batches(aligned, files, embedder.batch_size):
            good = [(rel, img) for rel, img in batch if not isinstance(img, BadImage)]
            unreadable += [(rel, img.reason) for rel, img in batch if isinstance(img, BadImage)]
            if good:
                vectors = embedder.embed([img for _, img in good])
                for (rel, _), vector in zip(good, vectors):
                    path = str(aligned / rel)
                    writer.add(path, person_of(path), vector)
            if on_batch:
                on_batch(len(batch))
    return RepresentReport(out, writer.rows, time.perf_counter() - started, unreadable)
