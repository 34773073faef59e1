"""The aligned folder, the one home of its contract: `align` writes it, `represent`, `train`
and `lfw-roc` read it, all through this module.

An aligned folder holds:

- the crops, `<person>/<image>.png`, mirroring the photo tree they came from;
- `align-spec.json`: the alignment spec and the options that made them (a rerun must match);
- `align-report.csv`: one row per entry of the photo tree with its outcome
  (`input,status,outputs,detail,source`; `source` is the input's `size:mtime_ns`, so a rerun can
  tell an unchanged input whose outcome it may reuse). During a run every finished file is
  appended to it at once, so a killed run keeps the outcome of every file it finished; the end
  of the run rewrites it sorted, one row per entry. Reports of older versions (four columns)
  are read too.
- Output names (`output_names`): `<person>/<image>.png`; when two inputs share a stem
  (`a.jpg`, `a.png`) both keep their suffix (`a.jpg.png`, `a.png.png`); names are compared
  casefolded (a case-insensitive filesystem would merge `A.png` and `a.png`), and an input whose
  every name is taken gets a `collision` outcome naming the input that holds it. With
  `--faces all` an image's faces are `<stem>_0.png`, `<stem>_1.png`, ... (always numbered, so two
  different stems never produce the same name).

File names: a name that holds a line break or another control character cannot be carried
through OpenFace's CSV files and most tools, so `align` refuses such inputs with a report row
and every reader skips such files (`name_problem`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Iterable

from ..atomic import is_temp_name, write_bytes_atomic, write_json_atomic
from ..errors import DataError, SpecMismatch, UsageError, write_error

if TYPE_CHECKING:  # annotations only: this module stays free of numpy, dlib and torch
    from ..align.specs import AlignSpec
    from ..models.catalogue import ModelRecord

SPEC_FILE = "align-spec.json"
REPORT_FILE = "align-report.csv"
REPORT_COLUMNS = ("input", "status", "outputs", "detail", "source")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}

# Every input file ends in exactly one of these.
STATUSES = (
    "aligned",         # a face was found and written
    "fallback",        # no face found; a stand-in box was aligned (--fallback, --fallback-dir)
    "no-face",         # no face found, nothing written
    "multiple-faces",  # --faces skip-multi and several faces
    "unreadable",      # not an image, corrupt, truncated, empty, too large
    "bad-name",        # a file name with a line break or control character
    "collision",       # its output name would overwrite another input's output
    "skipped",         # hidden files, links to folders: listed, never read
    "error",           # an unexpected failure on this file alone; the run went on
)


def looks_like_image(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_SUFFIXES


def printable_name(rel: str) -> str:
    """A name fit for one CSV cell and one terminal line: control characters and undecodable
    bytes are written as escapes (`\\n`, `\\x1b`, `\\udcff`)."""
    escaped = "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch
                      for ch in rel)
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def name_problem(rel: str) -> str | None:
    """Why a relative path cannot be an input or output name, or None when it can."""
    if any(unicodedata.category(ch) == "Cc" for ch in rel):
        return "the file name holds a line break or another control character; rename the file"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8; rename the file"
    return None


@dataclass
class FileOutcome:
    input: str  # relative to the photo tree, posix
    status: str
    outputs: list[str] = field(default_factory=list)  # relative to the aligned folder
    detail: str = ""
    timings: dict = field(default_factory=dict)
    resumed: bool = False  # finished by an earlier run of the same job
    source: str = ""  # the input's "size:mtime_ns" when it was processed ("" when not read)
    # The RGB crops themselves, one per output, when the job hands them over (represent --photos
    # embeds them as they arrive instead of reading the PNGs back); never written to the report.
    crops: list = field(default_factory=list, repr=False, compare=False)
    # Their embeddings instead, one per output, when the align workers embed their own crops
    # (represent --photos with a worker per core); never written to the report either.
    vectors: list = field(default_factory=list, repr=False, compare=False)

    def row(self) -> list[str]:
        return [self.input, self.status, ";".join(self.outputs), self.detail, self.source]


# ---------------------------------------------------------------- the report

def report_text(outcomes: Iterable[FileOutcome]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for outcome in outcomes:
        writer.writerow(outcome.row())
    return buf.getvalue()


def read_report(path: Path) -> dict[str, FileOutcome]:
    """input -> its last recorded outcome. A damaged or cut-off report loses only history:
    unparseable rows (a line cut by a kill) are skipped, never the outputs."""
    if not path.is_file():
        return {}
    outcomes: dict[str, FileOutcome] = {}
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.reader(fh):
                if len(row) not in (4, 5) or row[1] not in STATUSES:
                    continue  # the header, a row cut by a kill, a status of another version
                outcomes[row[0]] = FileOutcome(row[0], row[1], [x for x in row[2].split(";") if x], row[3],
                                               source=row[4] if len(row) == 5 else "")
    except (OSError, csv.Error):
        return outcomes
    return outcomes


class ReportJournal:
    """Appends each finished file's outcome to the report as it happens (flushed per row)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            new = not path.exists() or path.stat().st_size == 0
            self._fh = open(path, "a", newline="", encoding="utf-8")
            self._csv = csv.writer(self._fh, lineterminator="\n")
            if new:
                self._csv.writerow(REPORT_COLUMNS)
            else:
                self._fh.write("\n")  # a row cut by a kill must not run into the next one
            self._fh.flush()
        except OSError as exc:
            raise write_error(exc, path) from None

    def append(self, outcome: FileOutcome) -> None:
        try:
            self._csv.writerow(outcome.row())
            self._fh.flush()
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass


# ---------------------------------------------------------------- output names

def name_key(rel: str) -> str:
    """How a filesystem may see a name: case-insensitive, Unicode-normalised (macOS)."""
    return unicodedata.normalize("NFC", rel).casefold()


def output_names(inputs: Iterable[str], numbered: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Give each input (sorted posix paths relative to the photo tree) its output stem.

    Returns (stems, collisions): `stems[input]` is the stem of its outputs (`stem + ".png"`,
    or `stem_0.png`, `stem_1.png`, ... when `numbered`), `collisions[input]` the earlier input
    that holds every name it could have. Deterministic in the list of inputs."""
    inputs = list(inputs)
    plain = {rel: str(PurePosixPath(rel).with_suffix("")) for rel in inputs}
    shared = Counter(name_key(stem) for stem in plain.values())
    holder: dict[str, str] = {}  # name key of a stem -> the input holding it
    # A stem must not also be a folder of other outputs (`x.jpg` -> `x.png` beside `x.png/y.jpg`).
    folders = {name_key(str(parent)) for rel in inputs for parent in PurePosixPath(rel).parents}
    stems: dict[str, str] = {}
    collisions: dict[str, str] = {}
    for rel in inputs:
        first = plain[rel] if shared[name_key(plain[rel])] == 1 else rel
        taken_by = None
        for stem in dict.fromkeys((first, rel)):  # the plain stem, else the name with its suffix
            key = name_key(stem)
            file_key = key if numbered else name_key(stem + ".png")
            if key in holder:
                taken_by = taken_by or holder[key]
            elif not numbered and file_key in folders:
                taken_by = taken_by or next(i for i in inputs if name_key(i).startswith(file_key + "/"))
            else:
                holder[key] = rel
                stems[rel] = stem
                break
        else:
            collisions[rel] = taken_by
    return stems, collisions


def face_outputs(stem: str, count: int, numbered: bool) -> list[str]:
    """The output names of an input with `count` faces."""
    if not numbered:
        return [stem + ".png"]
    return [f"{stem}_{i}.png" for i in range(count)]


# ---------------------------------------------------------------- the folder

class AlignedFolder:
    """An aligned folder on disk; cheap to make, reads lazily."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._scanned: tuple[list[str], list[tuple[str, str]]] | None = None

    @property
    def spec_file(self) -> Path:
        return self.root / SPEC_FILE

    @property
    def report_file(self) -> Path:
        return self.root / REPORT_FILE

    # -- the spec

    def job_record(self) -> dict | None:
        """The options recorded in align-spec.json, None when there is none; DataError when damaged."""
        if not self.spec_file.exists():
            return None
        try:
            record = json.loads(self.spec_file.read_text(encoding="utf-8"))
            from ..align.specs import AlignSpec

            if not isinstance(record, dict):
                raise TypeError
            AlignSpec.from_dict(record["spec"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
            raise DataError(f"{self.spec_file} is damaged, so how {self.root} was aligned is unknown; restore it, "
                            f"or delete {self.root} and align again.") from None
        return record

    def spec(self) -> "AlignSpec | None":
        from ..align.specs import AlignSpec

        record = self.job_record()
        return AlignSpec.from_dict(record["spec"]) if record else None

    def claim(self, record: dict) -> None:
        """Record how this folder is being aligned, or refuse one aligned with other options
        (a resumed run must not mix faces aligned two ways). A damaged record is refused too."""
        previous = self.job_record()
        if previous is not None:
            spec, old_spec = record["spec"], previous["spec"]
            if old_spec != spec:
                raise UsageError(
                    f"{self.root} was aligned with {old_spec.get('name')} at {old_spec.get('size')} px; "
                    f"use another output folder for {spec['name']} at {spec['size']} px.")
            changed = [f"--{k.replace('_', '-')} {previous.get(k)} (now {v})" for k, v in record.items()
                       if k != "spec" and previous.get(k) != v]
            if changed:
                raise UsageError(f"{self.root} was aligned with {', '.join(changed)}; rerun with the same options "
                                 "to resume, or use another output folder.")
            return
        write_json_atomic(self.spec_file, record)

    def check_for(self, record: "ModelRecord", hint: str | None = None) -> None:
        """Refuse a folder aligned for another model's input, with a sentence that says what to do.

        A folder without align-spec.json (OpenFace's align-dlib, another tool) is accepted when
        its first image has the model's input size."""
        fix = hint or f"realign the photos with `facenet align RAW OUT --model {record.name}`"
        spec = self.spec()
        if spec is not None:
            if spec != record.align:
                raise SpecMismatch(
                    f"{self.root} was aligned with {spec.name} at {spec.size} px but {record.name} needs "
                    f"{record.align.name} at {record.align.size} px; {fix}.")
            return
        images = self.images()
        if images:
            from ..errors import BadImage
            from ..images import read_rgb

            try:
                size = read_rgb(self.root / images[0]).shape[:2]
            except BadImage:
                return  # that file is reported as unreadable where it is read
            if size != (record.align.size, record.align.size):
                raise SpecMismatch(
                    f"{self.root / images[0]} is {size[1]}x{size[0]} but {record.name} needs {record.align.size}x"
                    f"{record.align.size} crops aligned with {record.align.name}; {fix}.")

    # -- the crops

    def _image_files(self) -> tuple[list[str], list[tuple[str, str]]]:
        """(usable image paths, [(path, why not)] for image files whose names cannot be used);
        the folder is walked once per AlignedFolder (a reader's view of a finished folder)."""
        if self._scanned is not None:
            return self._scanned
        found, refused = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith(".") or is_temp_name(name) or not looks_like_image(name):
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                problem = name_problem(rel)
                if problem is None:
                    found.append(rel)
                else:
                    refused.append((rel, problem))
        self._scanned = (sorted(found), sorted(refused))
        return self._scanned

    def images(self) -> list[str]:
        """Every aligned image, as sorted posix paths relative to the folder (hidden files,
        temporary files and names with control characters left out)."""
        return list(self._image_files()[0])

    def bad_names(self) -> list[tuple[str, str]]:
        """(relative path, reason) of the image files `images` leaves out for their names, so
        that readers report them instead of dropping them silently."""
        return list(self._image_files()[1])

    def people(self) -> dict[str, list[str]]:
        """person -> sorted relative paths of `<person>/<image>` crops (deeper files are not faces of one person)."""
        by_person: dict[str, list[str]] = {}
        for rel in self.images():
            parts = PurePath(rel).parts
            if len(parts) == 2:
                by_person.setdefault(parts[0], []).append(rel)
        return by_person

    def report(self) -> dict[str, FileOutcome]:
        return read_report(self.report_file)

    def processed_people(self) -> set[str]:
        """People whose photos went through `facenet align` into this folder, per its report,
        found face or not (so a person without any face is a miss, not a wrong folder)."""
        return {PurePath(rel).parent.name for rel in self.report() if PurePath(rel).parent.name}

    def write_report(self, outcomes: Iterable[FileOutcome]) -> None:
        write_bytes_atomic(self.report_file, report_text(outcomes).encode("utf-8"))

    def journal(self) -> ReportJournal:
        return ReportJournal(self.report_file)
