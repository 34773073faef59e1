"""`--min-face PX`: one option, one meaning (the narrowest face to find, in photo pixels) on every
command that finds faces, carried by the pipeline options to every detector."""
from __future__ import annotations

import json

import click
import pytest

from facenet_cli.cli import app

FINDS_FACES = ["align", "represent", "compare", "identify", "search", "cluster", ("gallery", "add"), "serve"]


def _command(path):
    import typer.main

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    for name in (path if isinstance(path, tuple) else (path,)):
        cmd = group.get_command(ctx, name)
        group = cmd
    return cmd


def test_every_command_that_finds_faces_has_the_same_min_face_option():
    helps = set()
    for path in FINDS_FACES:
        options = {opt: param for param in _command(path).params for opt in param.opts}
        assert "--detector" in options and "--min-face" in options, path
        helps.add(options["--min-face"].help)
    assert len(helps) == 1


@pytest.mark.parametrize("detector", ["hog", "mtcnn"])
def test_faces_narrower_than_min_face_are_not_found(detector, lfw_images, tmp_path, run_cli):
    # LFW photos are 250 px square with a face about 100 px wide in the middle.
    photos = tmp_path / "raw"
    photos.mkdir()
    for person in ("Tony_Blair", "Serena_Williams"):
        source = sorted((lfw_images / person).iterdir())[0]
        (photos / source.name).write_bytes(source.read_bytes())
    found = {}
    for min_face in (40, 200):
        out = tmp_path / f"out{min_face}"
        result = run_cli("align", photos, out, "--detector", detector, "--min-face", min_face, "--json", "--quiet")
        assert result.exit_code == 0, result.stderr
        counts = json.loads(result.stdout)["counts"]
        found[min_face] = counts["aligned"]["total"]
        assert json.loads((out / "align-spec.json").read_text())["min_face"] == min_face
    assert found == {40: 2, 200: 0}


def test_min_face_below_one_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("align", tmp_path, tmp_path / "out", "--min-face", "0")
    assert result.exit_code == 2 and "--min-face" in result.stderr
