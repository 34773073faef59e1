"""One CLI grammar: light imports, enums that match the engine, positional outputs, --json on
every command that reports, one error convention (one `Error:` line, exit 2 for usage)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from facenet_cli import choices

HEAVY = ("torch", "numpy", "cv2", "dlib", "PIL", "matplotlib", "sklearn", "pytorch_metric_learning")


def _command_tree():
    import typer.main

    from facenet_cli.cli import app

    return typer.main.get_command(app)


def _leaf_commands():
    """(path, click command) for every runnable command, sub-apps included."""
    root = _command_tree()
    found = []

    def walk(group, prefix):
        for name, cmd in sorted(group.commands.items()):
            if hasattr(cmd, "commands"):
                walk(cmd, prefix + [name])
            else:
                found.append((" ".join(prefix + [name]), cmd))

    walk(root, [])
    return found


def test_importing_the_cli_loads_no_engine():
    code = ("import sys, facenet_cli.cli; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing the CLI loaded {done.stdout.strip()}"


@pytest.mark.slow  # a fresh interpreter per command
def test_help_of_every_command_loads_no_engine():
    for path, _ in _leaf_commands():
        code = ("import sys\nfrom facenet_cli.cli import main\nsys.argv = ['facenet', "
                + ", ".join(repr(p) for p in path.split()) + ", '--help']\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\n"
                f"sys.stderr.write(','.join(m for m in {HEAVY!r} if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.stderr.strip() == "", f"`facenet {path} --help` loaded {done.stderr.strip()}"


def test_enums_match_the_engine():
    from facenet_cli.align.aligner import FACE_POLICIES, FALLBACKS
    from facenet_cli.align.specs import SPECS
    from facenet_cli.detect import DETECTORS
    from facenet_cli.nets.nn4 import ARCHITECTURE_NAMES
    from facenet_cli.training.miners import MINERS

    assert choices.values(choices.Detector) == tuple(DETECTORS)
    assert choices.values(choices.FacePolicy) == tuple(FACE_POLICIES)
    assert choices.values(choices.Fallback) == tuple(FALLBACKS)
    assert set(choices.values(choices.Landmarks)) == set(SPECS)
    assert set(choices.values(choices.Architecture)) == set(ARCHITECTURE_NAMES)
    assert choices.values(choices.Miner) == tuple(MINERS)


def test_every_command_has_help_with_an_example():
    for path, cmd in _leaf_commands():
        text = cmd.help or ""
        assert text.strip(), f"`facenet {path}` has no help"
        assert "Example: facenet " + path in text, f"`facenet {path}` help lacks an example"


# Commands that print a result a script may want (everything but the demo).
REPORTING = {"align", "represent", "compare", "lfw-roc", "tsne", "train", "fetch-models", "identify",
             "cluster", "gallery add", "gallery list"}


def test_reporting_commands_have_json():
    commands = dict(_leaf_commands())
    for path in sorted(REPORTING & set(commands)):
        options = {o for p in commands[path].params for o in getattr(p, "opts", [])}
        assert "--json" in options, f"`facenet {path}` has no --json"


def test_outputs_are_positional_not_required_options():
    for path, cmd in _leaf_commands():
        for param in cmd.params:
            opts = getattr(param, "opts", [])
            assert not ("--out" in opts and param.required), f"`facenet {path}` takes its output as a required --out"


def test_choices_are_enums_in_help(run_cli):
    shown = run_cli("align", "--help", env={"COLUMNS": "250"}).stdout
    assert "|".join(choices.values(choices.Detector)) in shown
    assert "|".join(choices.values(choices.Fallback)) in shown


@pytest.mark.parametrize("args, fragment", [
    (["align", "--bogus"], "No such option"),
    (["align", "in", "out", "--detector", "nope"], "nope"),
    (["nosuchcommand"], "nosuchcommand"),
])
def test_parser_errors_are_one_line_and_exit_2(run_cli, args, fragment):
    result = run_cli(*args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr
    assert "╭" not in result.stderr and "Traceback" not in result.stderr


def test_our_usage_errors_exit_2_and_failures_exit_1(run_cli, tmp_path):
    missing = run_cli("align", tmp_path / "nope", tmp_path / "out")
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: ") and "does not exist" in missing.stderr
    (tmp_path / "reps").mkdir()
    (tmp_path / "reps" / "labels.csv").write_bytes(b"1,\xff\xfe/x.png\n")
    (tmp_path / "pairs.txt").write_text("2\t1\nA\t1\t2\nA\t1\tB\t1\nA\t1\t2\nA\t1\tB\t1\n")
    damaged = run_cli("lfw-roc", tmp_path / "reps", tmp_path / "pairs.txt", tmp_path / "eval")
    assert damaged.exit_code == 1, damaged.stderr
    assert damaged.stderr.startswith("Error: ") and "Traceback" not in damaged.stderr
