"""People's names and face ids as a gallery store accepts them (every backend, every use case).

A name is stored in its NFKC form (so `ｕｎｋｎｏｗｎ` is `unknown`), and refused when it could be
read as a path (`/`, `\\`, `..`), holds a control character, or is `unknown` (what identify
answers for strangers). A face id is typed as ASCII digits (`parse_face_id`).
"""
from __future__ import annotations

import unicodedata

from ..errors import UsageError

# Reserved: `identify` answers "unknown", so no enrolled person may be called that.
RESERVED_NAMES = {"unknown"}


def normalise_name(name: str) -> str:
    """The NFKC form of a person's name (so `ｕｎｋｎｏｗｎ` is `unknown`, `Ｇｒａｃｅ` is `Grace`), or
    UsageError with the reason it is refused."""
    problem = name_problem(name)
    if problem:
        raise UsageError(f"The name {name!r} is refused: {problem}.")
    return nfkc(name)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a person's name, or None. Checked on the raw text (a line break at
    either end is refused, not stripped) and on its NFKC form (what is stored, and what a
    fullwidth or other compatibility spelling of `unknown`, `/` or `..` turns into)."""
    if not isinstance(name, str):
        return "a name must be text"
    if any(unicodedata.category(ch) in _CONTROL for ch in name):
        return "it holds a line break or another control character"
    text = nfkc(name)
    if not text:
        return "a name cannot be empty"
    if any(unicodedata.category(ch) in _CONTROL for ch in text):
        return "it holds a line break or another control character"
    if "/" in text or "\\" in text:
        return "it holds a slash, which would make it a path"
    if ".." in text or text == ".":
        return "it holds '..' or is '.', which would make it a path"
    if nfkc(text.casefold()) in RESERVED_NAMES:
        return "'unknown' is what identify answers for strangers, so no one can be enrolled under it"
    return None


# Control characters, format characters (zero-width, direction marks) and line/paragraph separators.
_CONTROL = ("Cc", "Cf", "Zl", "Zp")


def nfkc(name: str) -> str:
    """The form a name is stored in: NFKC, blanks at either end removed."""
    return unicodedata.normalize("NFKC", name).strip()


def name_keys(name: str) -> list[str]:
    """The spellings a person may be stored under: NFKC (from now on), then NFC and as given
    (galleries written before names were NFKC-normalised)."""
    keys: list[str] = []
    for key in (nfkc(name), unicodedata.normalize("NFC", name.strip()), name):
        if key not in keys:
            keys.append(key)
    return keys


# SQLite's INTEGER is a signed 64-bit number: no face id reaches this.
FACE_ID_LIMIT = 2 ** 63
_FACE_ID_DIGITS = 40  # longer runs of digits are not taken for ids (int() of thousands of digits is refused)


def parse_face_id(text: str) -> int | None:
    """The face id `text` spells, or None: ASCII digits only (not `+1`, `1_000`, `١٢` or
    fullwidth digits, which int() would take), surrounding blanks ignored. A number beyond the
    64-bit range is returned as it is: no face has it, so looking it up finds none
    (`valid_face_id` tells)."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or len(text) > _FACE_ID_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def valid_face_id(face_id: int) -> bool:
    """Whether `face_id` can be a face's id at all (0 <= id < 2**63)."""
    return isinstance(face_id, int) and 0 <= face_id < FACE_ID_LIMIT
