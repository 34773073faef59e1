"""`facenet align` on a folder of bad and odd inputs, and its user errors, through the CLI."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facenet_cli.cli import app
from facenet_cli.errors import BadImage
from facenet_cli.images import read_rgb

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
    return raw, expected


def report_rows(out: Path) -> dict[str, dict]:
    with open(out / "align-report.csv", newline="", encoding="utf-8") as fh:
        return {r["input"]: r for r in csv.DictReader(fh)}


def test_bad_inputs_are_recorded_not_fatal(bad_folder, tmp_path):
    raw, expected = bad_folder
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw), str(out), "--landmarks", "outerEyesAndNose",
                                 "--faces", "skip-multi", "--upsample", "1"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    rows = report_rows(out)
    assert {k: v["status"] for k, v in rows.items()} == expected
    assert "total" in result.output and str(len(expected)) in result.output
    for rel, status in expected.items():
        png = out / Path(rel).with_suffix(".png")
        assert png.exists() == (status == "aligned"), rel
    assert "empty" in rows["odd/empty.jpg"]["detail"]


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


@pytest.mark.parametrize("args, message", [
    (["--faces", "biggest"], "--faces must be one of largest, center, center-only, all, skip-multi, not 'biggest'."),
    (["--upsample", "9"], "--upsample must be a number from 0 to 4 or 'auto', not 9."),
    (["--workers", "0"], "--workers must be at least 1, not 0."),
    (["--landmarks", "nose"], "Unknown alignment 'nose'"),
    (["--size", "5", "--landmarks", "outerEyesAndNose"], "--size must be between 16 and 2048 pixels, not 5."),
    (["--detector", "sift"], "--detector must be one of hog, cnn, hog+cnn, not 'sift'."),
    (["--model", "no-such-model"], "Unknown model 'no-such-model'"),
])
def test_bad_option_values_exit_with_one_sentence(tmp_path, args, message):
    (tmp_path / "raw").mkdir()
    result = runner.invoke(app, ["align", str(tmp_path / "raw"), str(tmp_path / "out"), *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_input_folder(tmp_path):
    result = runner.invoke(app, ["align", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"The input folder {tmp_path / 'nowhere'} does not exist." in result.output


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["align", str(tmp_path / "raw"), str(tmp_path / "file" / "out")])
    assert result.exit_code == 1
    assert "cannot be written" in result.output


def test_output_folder_of_another_spec_is_refused(lfw_images, tmp_path):
    from tests.helpers import copy_people

    raw = copy_people(lfw_images, tmp_path / "raw", {"Aaron_Peirsol": 1})
    out = tmp_path / "out"
    assert runner.invoke(app, ["align", str(raw), str(out), "--landmarks", "outerEyesAndNose"]).exit_code == 0
    result = runner.invoke(app, ["align", str(raw), str(out)])
    assert result.exit_code == 1
    assert "was aligned with outerEyesAndNose at 96 px" in result.output


def test_read_rgb_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(BadImage, match="bad.jpg"):
        read_rgb(bad)


def test_every_command_has_help():
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert (cmd.callback.__doc__ or "").strip(), f"{name} has no help text"


def test_resuming_with_other_options_is_refused(lfw_images, tmp_path):
    from tests.helpers import copy_people

    raw = copy_people(lfw_images, tmp_path / "raw", {"Aaron_Peirsol": 1})
    out = tmp_path / "out"
    assert runner.invoke(app, ["align", str(raw), str(out), "--faces", "center"]).exit_code == 0
    result = runner.invoke(app, ["align", str(raw), str(out), "--faces", "largest"])
    assert result.exit_code == 1
    assert "was aligned with --faces center (now largest)" in result.output
    assert runner.invoke(app, ["align", str(raw), str(out), "--faces", "center"]).exit_code == 0


def test_cnn_detector_through_the_cli(lfw_images, tmp_path):
    from tests.helpers import copy_people

    raw = copy_people(lfw_images, tmp_path / "raw", {"Jelena_Dokic": 4})
    out = tmp_path / "out"
    result = runner.invoke(app, ["align", str(raw), str(out), "--detector", "cnn", "--upsample", "0"])
    assert result.exit_code == 0, result.output
    statuses = {r["status"] for r in report_rows(out).values()}
    assert statuses == {"aligned"}  # includes _0004, where HOG finds no face
