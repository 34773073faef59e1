"""Embed an aligned tree into a representation folder, streaming, decode overlapped with the net.

Every image the aligned folder lists gets one outcome: `embedded` (one row in the folder),
`unreadable` (corrupt, truncated, not an image), `wrong-size` (a crop of another size than the
model's input, in a folder without align-spec.json) or `bad-name` (a file name with a line break
or another control character, which cannot go into labels.csv). The counts add up to the
images listed.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .aligned import AlignedFolder, printable_name
from .errors import BadImage, DataError, UsageError
from .images import read_rgb
from .reps import LABELS, META, REPS_CSV, REPS_NPY, RepsWriter, person_of

if TYPE_CHECKING:
    from .embed import Embedder

OUTCOMES = ("embedded", "unreadable", "wrong-size", "bad-name")


@dataclass
class RepresentReport:
    out_dir: Path
    count: int  # faces written (one per embedded image)
    seconds: float
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, outcome, reason)
    model: str = ""
    dimension: int = 0

    @property
    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in OUTCOMES}
        counts["embedded"] = self.count
        for _, status, _ in self.problems:
            counts[status] += 1
        return counts

    @property
    def total(self) -> int:
        """Images listed: embedded + unreadable + wrong size + bad names."""
        return sum(self.counts.values())

    @property
    def files(self) -> dict[str, str]:
        return {name: str(self.out_dir / name) for name in (LABELS, REPS_CSV, REPS_NPY, META)}

    def to_dict(self) -> dict:
        return {"out": str(self.out_dir), "model": self.model, "dimension": self.dimension,
                "images": self.total, "faces": self.count, "counts": self.counts,
                "seconds": round(self.seconds, 3), "files": self.files,
                "problems": [{"path": printable_name(p), "outcome": s, "reason": r} for p, s, r in self.problems]}


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


def represent_tree(aligned: str | Path, out: str | Path, embedder: "Embedder",
                   on_start: Callable[[int], None] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> RepresentReport:
    """Embed every aligned image under ALIGNED into OUT's labels.csv, reps.csv, reps.npy and
    meta.json. Per-image problems are outcomes in the report; the run fails (DataError) only
    when no image at all could be embedded."""
    aligned, out = Path(aligned), Path(out)
    if not aligned.is_dir():
        raise UsageError(f"The aligned folder {aligned} does not exist; run `facenet align` first.")
    folder = AlignedFolder(aligned)
    files = folder.images()
    problems: list[tuple[str, str, str]] = [(rel, "bad-name", reason) for rel, reason in folder.bad_names()]
    if not files and not problems:
        raise UsageError(f"{aligned} holds no images; run `facenet align RAW {aligned}` first.")
    record = embedder.record
    folder.check_for(record)
    if on_start:
        on_start(len(files) + len(problems))
    if on_batch and problems:
        on_batch(len(problems))
    started = time.perf_counter()
    size = (record.align.size, record.align.size)
    meta = {"model": record.to_dict(), "aligned": str(aligned.resolve()), "flip": embedder.flip, "normalised": True,
            "precision": embedder.precision, "tta": embedder.tta}
    with RepsWriter(out, max(len(files), 1), record.embedding_dim, meta) as writer:
        for batch in _decoded_batches(aligned, files, embedder.batch_size):
            good = []
            for rel, image in batch:
                if isinstance(image, BadImage):
                    problems.append((rel, "unreadable", image.reason))
                elif image.shape[:2] != size:
                    problems.append((rel, "wrong-size", f"{image.shape[1]}x{image.shape[0]}, not {size[1]}x{size[0]}"))
                else:
                    good.append((rel, image))
            if good:
                vectors = embedder.embed([image for _, image in good])
                for (rel, _), vector in zip(good, vectors):
                    path = str(aligned / rel)
                    writer.add(path, person_of(path), vector)
            if on_batch:
                on_batch(len(batch))
        if writer.rows == 0:
            shown = "; ".join(f"{printable_name(p)}: {r}" for p, _, r in problems[:3])
            raise DataError(f"None of the {len(problems)} images in {aligned} could be embedded ({shown}), "
                            f"so nothing was written to {out}.")
    problems.sort()
    return RepresentReport(out, writer.rows, time.perf_counter() - started, problems,
                           model=record.name, dimension=record.embedding_dim)

