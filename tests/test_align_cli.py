"""`facenet align` on a folder of bad and odd inputs, and its user errors, through the CLI."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facenet_cli.formats.aligned import AlignedFolder
from facenet_cli.atomic import is_temp_name
from facenet_cli.cli import app
from facenet_cli.errors import BadImage
from facenet_cli.images import read_rgb

from .helpers import copy_people

runner = CliRunner()
FACE = "George_W_Bush/George_W_Bush_0001.jpg"


@pytest.fixture()
def bad_folder(lfw_images, examples_dir, tmp_path) -> tuple[Path, dict[str, str]]:
    """A RAW folder of every kind of awkward input, with the status each must get."""
    raw = tmp_path / "raw"
    (raw / "odd").mkdir(parents=True)
    face = Image.open(lfw_images / FACE)
    expected = {}

    def put(rel, status, writer):
        path = raw / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        expected[rel] = status

    good = (lfw_images / FACE).read_bytes()
    put("odd/corrupt.jpg", "unreadable", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4))
    put("odd/truncated.jpg", "unreadable", lambda p: p.write_bytes(good[: len(good) // 2]))
    put("odd/empty.jpg", "unreadable", lambda p: p.write_bytes(b""))
    put("odd/notes.jpg", "unreadable", lambda p: p.write_text("this is not a picture\n"))
    put("odd/rgba.png", "aligned", lambda p: face.convert("RGBA").save(p))
    put("odd/gray.jpg", "aligned", lambda p: face.convert("L").save(p))
    put("odd/sixteen.png", "aligned",
        lambda p: Image.fromarray((np.asarray(face.convert("L"), np.uint16) * 257)).save(p))
    put("odd/cmyk.jpg", "aligned", lambda p: face.convert("CMYK").save(p))
    put("odd/palette.gif", "aligned", lambda p: face.convert("P").save(p))

    def rotated(p):  # stored sideways, EXIF says "rotate 90 CW to view": upright only if EXIF is applied
        exif = Image.Exif()
        exif[0x0112] = 6
        face.transpose(Image.Transpose.ROTATE_90).save(p, exif=exif)

    put("odd/exif-rotated.jpg", "aligned", rotated)
    put("odd/no-face.png", "no-face",
        lambda p: Image.fromarray(np.tile(np.linspace(0, 255, 250, dtype=np.uint8), (250, 1))).save(p))
    put("odd/two-faces.jpg", "multiple-faces", lambda p: shutil.copy(examples_dir / "longoria-cooper.jpg", p))
    put("Jos\u00e9 \u00d1o\u00f1o/fa\u00e7e 1.jpg", "aligned", lambda p: p.write_bytes(good))
    put("odd/float.tif", "aligned",
        lambda p: Image.fromarray(np.asarray(face.convert("L"), np.float32) / 255.0, "F").save(p))
    put("odd/int32.tif", "aligned",
        lambda p: Image.fromarray(np.asarray(face.convert("L"), np.int32) * 65536, "I").save(p))
    put("odd/tiny.png", "no-face", lambda p: Image.new("RGB", (8, 8), (200, 120, 90)).save(p))
    # Entries that are listed, never read: each still gets its row.
    put(".DS_Store", "skipped", lambda p: p.write_bytes(b"\0" * 16))
    put(".git/HEAD", "skipped", lambda p: p.write_text("ref: x\n"))
    del expected[".git/HEAD"]
    expected[".git"] = "skipped"
    put("linked-face.jpg", "aligned", lambda p: p.symlink_to(lfw_images / FACE))  # a file link: followed
    put("odd-link", "skipped", lambda p: p.symlink_to(raw / "odd", target_is_directory=True))  # not entered
    put("odd/pipe.jpg", "skipped", lambda p: os.mkfifo(p))
    put("odd/dangling.jpg", "skipped", lambda p: p.symlink_to(raw / "nowhere.jpg"))
    put("odd/line\nbreak.jpg", "bad-name", lambda p: p.write_bytes(good))
    put("odd/escape\x1b.jpg", "bad-name", lambda p: p.write_bytes(good))
    expected = {k.replace("\n", "\\n").replace("\x1b", "\\x1b"): v for k, v in expected.items()}
    return raw, expected


def report_rows(out: Path) -> dict[str, dict]:
    with open(out / "align-report.csv", newline="", encoding="utf-8") as fh:
        return {r["input"]: r for r in csv.DictReader(fh)}


def test_bad_inputs_are_recorded_not_fatal(bad_folder, tmp_path):
    raw, expected = bad_folder
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw), str(out), "--landmarks", "outerEyesAndNose",
                                 "--faces", "skip-multi", "--upsample", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    rows = report_rows(out)
    assert {k: v["status"] for k, v in rows.items()} == expected
    # Every entry of RAW is counted, by status; nothing else is on stdout.
    summary = json.loads(result.stdout)
    assert summary["total"] == len(expected) == len(rows)
    wanted = {s: list(expected.values()).count(s) for s in set(expected.values())}
    assert {s: c["total"] for s, c in summary["counts"].items() if c["total"]} == wanted
    assert summary["earlier"] == 0 and summary["report"] == str(out / "align-report.csv")
    # The aligned crops are exactly those the report names.
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(o for r in rows.values() for o in r["outputs"].split(";") if o)
    assert written == AlignedFolder(out).images()
    for rel, status in expected.items():
        png = out / Path(rel).with_suffix(".png")
        assert png.exists() == (status == "aligned"), rel
    assert "empty" in rows["odd/empty.jpg"]["detail"]
    assert rows[".git"]["detail"] == "hidden folder, not entered"
    assert rows["odd-link"]["detail"] == "link to a folder, not entered"
    assert rows["odd/pipe.jpg"]["detail"].startswith("not a regular file")
    assert "line break" in rows["odd/line\\nbreak.jpg"]["detail"]

    # A rerun reuses every outcome (the no-face and unreadable ones too: their inputs are unchanged).
    again = runner.invoke(app, ["align", str(raw), str(out), "--landmarks", "outerEyesAndNose",
                                "--faces", "skip-multi", "--upsample", "1", "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    reread = [s for s in ("aligned", "no-face", "multiple-faces", "unreadable") if s in wanted]
    assert {s: summary["counts"][s]["earlier"] for s in reread} == {s: wanted[s] for s in reread}
    assert summary["now"] == wanted["skipped"] + wanted["bad-name"]  # decided afresh from the listing
    assert {k: v["status"] for k, v in report_rows(out).items()} == expected


def test_all_faces_are_numbered(examples_dir, tmp_path):
    raw = tmp_path / "raw" / "group"
    raw.mkdir(parents=True)
    shutil.copy(examples_dir / "longoria-cooper.jpg", raw / "pair.jpg")
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw.parent), str(out), "--faces", "all", "--upsample", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "group").iterdir()) == ["pair_0.png", "pair_1.png"]
    assert Image.open(out / "group" / "pair_0.png").size == (150, 150)  # default model: dlib chip


def test_fallback_dir_is_used_and_recorded(lfw_images, tmp_path):
    raw = tmp_path / "raw" / "x"
    raw.mkdir(parents=True)
    Image.new("RGB", (250, 250), (90, 90, 90)).save(raw / "x_0001.jpg")  # no face here...
    second = tmp_path / "second" / "x"
    second.mkdir(parents=True)
    shutil.copy(lfw_images / FACE, second / "x_0001.jpg")  # ...but one in the second tree
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw.parent), str(out), "--fallback-dir", str(second.parent)])
    assert result.exit_code == 0, result.output
    assert report_rows(out)["x/x_0001.jpg"]["status"] == "fallback"
    assert (out / "x" / "x_0001.png").exists()


def test_center_fallback_is_recorded(tmp_path):
    raw = tmp_path / "raw" / "x"
    raw.mkdir(parents=True)
    Image.new("RGB", (250, 250), (90, 90, 90)).save(raw / "blank.jpg")
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw.parent), str(out), "--fallback", "center"])
    assert result.exit_code == 0, result.output
    assert report_rows(out)["x/blank.jpg"]["status"] == "fallback"


@pytest.mark.parametrize("args, fragments", [
    (["--faces", "biggest"], ["'--faces'", "'biggest' is not one of 'largest', 'center'"]),
    (["--upsample", "9"], ["'--upsample'", "'9' is not one of 'auto', '0'"]),
    (["--workers", "0"], ["'--workers'", "greater than or equal to 1"]),
    (["--landmarks", "nose"], ["'--landmarks'", "'nose' is not one of"]),
    (["--size", "0"], ["'--size'", "greater than or equal to 16"]),
    (["--size", "5", "--landmarks", "outerEyesAndNose"], ["'--size'", "greater than or equal to 16"]),
    (["--size", "4096"], ["'--size'", "less than or equal to 2048"]),
    (["--detector", "sift"], ["'--detector'", "'sift' is not one of 'hog', 'cnn', 'hog+cnn'"]),
    (["--fallback", "nearest"], ["'--fallback'", "'nearest' is not one of 'none', 'center', 'whole'"]),
    (["--model", "no-such-model"], ["Unknown model 'no-such-model'"]),
])
def test_bad_option_values_exit_2_with_one_sentence(run_cli, tmp_path, args, fragments):
    (tmp_path / "raw").mkdir()
    result = run_cli("align", tmp_path / "raw", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not (tmp_path / "out" / "align-spec.json").exists()


def test_missing_input_folder(run_cli, tmp_path):
    result = run_cli("align", tmp_path / "nowhere", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: The input folder {tmp_path / 'nowhere'} does not exist."


def test_unwritable_output_folder(run_cli, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "file").write_text("x")
    result = run_cli("align", tmp_path / "raw", tmp_path / "file" / "out")
    assert result.exit_code == 2
    assert "cannot be written" in result.stderr


@pytest.mark.parametrize("layout", ["out-in-raw", "raw-in-out", "same", "same-through-a-link"])
def test_nested_input_and_output_folders_are_refused(run_cli, lfw_images, tmp_path, layout):
    raw = copy_people(lfw_images, tmp_path / "photos", {"Aaron_Peirsol": 1})
    out = {"out-in-raw": raw / "aligned", "raw-in-out": tmp_path, "same": raw,
           "same-through-a-link": tmp_path / "link"}[layout]
    if layout == "same-through-a-link":
        out.symlink_to(raw, target_is_directory=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    result = run_cli("align", raw, out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "choose an output folder" in lines[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_damaged_spec_file_is_refused_not_replaced(run_cli, lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Aaron_Peirsol": 2})
    out = tmp_path / "out"
    assert run_cli("align", raw, out).exit_code == 0
    spec = out / "align-spec.json"
    damaged = spec.read_bytes()[: len(spec.read_bytes()) // 2]
    spec.write_bytes(damaged)
    (out / "Aaron_Peirsol" / "Aaron_Peirsol_0002.png").unlink()
    result = run_cli("align", raw, out, "--landmarks", "outerEyesAndNose")
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: {spec} is damaged, so how {out} was aligned is unknown; restore it, "
                                     f"or delete {out} and align again.")
    assert spec.read_bytes() == damaged
    assert not (out / "Aaron_Peirsol" / "Aaron_Peirsol_0002.png").exists()


def test_output_name_collisions_keep_every_face_or_say_which(run_cli, lfw_images, tmp_path):
    raw = tmp_path / "raw" / "p"
    raw.mkdir(parents=True)
    faces = sorted((lfw_images / "Serena_Williams").iterdir())
    for name, src in [("a.jpg", faces[0]), ("a.png", faces[1]), ("a.jpg.png", faces[2]), ("A.jpg", faces[3])]:
        if name.endswith(".png"):
            Image.open(src).save(raw / name)
        else:
            shutil.copy(src, raw / name)
    out = tmp_path / "out"
    result = run_cli("align", raw.parent, out, "--json")
    assert result.exit_code == 0, result.output
    rows = report_rows(out)
    # A.jpg and a.jpg are one name on a case-insensitive disk: the later one says which input holds it.
    assert {k: (v["status"], v["outputs"]) for k, v in rows.items()} == {
        "p/A.jpg": ("aligned", "p/A.jpg.png"),
        "p/a.jpg": ("collision", ""),
        "p/a.jpg.png": ("aligned", "p/a.jpg.png.png"),
        "p/a.png": ("aligned", "p/a.png.png"),
    }
    assert rows["p/a.jpg"]["detail"] == "its output name is taken by p/A.jpg"
    names = sorted(p.name for p in (out / "p").iterdir())
    assert names == ["A.jpg.png", "a.jpg.png.png", "a.png.png"]
    # Each output holds its own input's face (three different images).
    assert len({(out / "p" / n).read_bytes() for n in names}) == 3


def test_all_faces_numbering_never_collides(run_cli, examples_dir, lfw_images, tmp_path):
    raw = tmp_path / "raw" / "g"
    raw.mkdir(parents=True)
    shutil.copy(examples_dir / "longoria-cooper.jpg", raw / "a.jpg")  # two faces: a_0.png, a_1.png
    shutil.copy(lfw_images / FACE, raw / "a_0.jpg")  # one face: a_0_0.png, not a_0.png
    out = tmp_path / "out"
    result = run_cli("align", raw.parent, out, "--faces", "all", "--upsample", "1")
    assert result.exit_code == 0, result.output
    rows = report_rows(out)
    assert rows["g/a.jpg"]["outputs"] == "g/a_0.png;g/a_1.png"
    assert rows["g/a_0.jpg"]["outputs"] == "g/a_0_0.png"
    assert sorted(p.name for p in (out / "g").iterdir()) == ["a_0.png", "a_0_0.png", "a_1.png"]


def test_an_unexpected_failure_in_one_image_is_its_outcome(run_cli, lfw_images, tmp_path):
    """A name of 255 bytes: its temporary output name is too long for the filesystem. That image
    gets `error` with the reason; the others (before and after it, in 2 workers) are aligned."""
    raw = copy_people(lfw_images, tmp_path / "raw", {"Aaron_Peirsol": 2, "Serena_Williams": 2})
    long_name = "m" * 251 + ".jpg"
    shutil.copy(lfw_images / FACE, raw / "Aaron_Peirsol" / long_name)
    out = tmp_path / "out"
    result = run_cli("align", raw, out, "--workers", "2", "--json")
    assert result.exit_code == 0, result.output
    rows = report_rows(out)
    assert rows[f"Aaron_Peirsol/{long_name}"]["status"] == "error"
    assert "File name too long" in rows[f"Aaron_Peirsol/{long_name}"]["detail"]
    assert sorted(r["status"] for r in rows.values()) == ["aligned"] * 4 + ["error"]
    assert json.loads(result.stdout)["counts"]["error"]["now"] == 1
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]


def test_output_folder_of_another_spec_is_refused(run_cli, lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Aaron_Peirsol": 1})
    out = tmp_path / "out"
    assert run_cli("align", raw, out, "--landmarks", "outerEyesAndNose").exit_code == 0
    result = run_cli("align", raw, out)
    assert result.exit_code == 2
    assert "was aligned with outerEyesAndNose at 96 px" in result.stderr


def test_read_rgb_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(BadImage, match="bad.jpg"):
        read_rgb(bad)


def test_align_help_says_what_is_followed_and_skipped():
    result = runner.invoke(app, ["align", "--help"], terminal_width=300)
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for phrase in ("Links to files are followed", "links to folders are not entered",
                   "hidden files and folders", "each with a row in the report", "whole", "16<=x<=2048"):
        assert phrase in text, phrase


def test_resuming_with_other_options_is_refused(run_cli, lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Aaron_Peirsol": 1})
    out = tmp_path / "out"
    assert run_cli("align", raw, out, "--faces", "center").exit_code == 0
    result = run_cli("align", raw, out, "--faces", "largest")
    assert result.exit_code == 2
    assert "was aligned with --faces center (now largest)" in result.stderr
    assert run_cli("align", raw, out, "--faces", "center").exit_code == 0


def test_cnn_detector_through_the_cli(lfw_images, tmp_path):
    raw = copy_people(lfw_images, tmp_path / "raw", {"Jelena_Dokic": 4})
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw), str(out), "--detector", "cnn", "--upsample", "0"])
    assert result.exit_code == 0, result.output
    statuses = {r["status"] for r in report_rows(out).values()}
    assert statuses == {"aligned"}  # includes _0004, where HOG finds no face
