"""What every command prints and writes for people (issue 18): user strings printed as text
(paths holding `[/x]`, people named `[b]Ada` or `[best]`), spreadsheet-safe `identify --csv`,
strict JSON, contradicting options refused, and a Ctrl-C hint that says what a rerun does.
Real LFW photos, real commands (subprocesses for what a terminal shows, and for SIGINT)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import error_line

ROOT = Path(__file__).resolve().parents[1]

# Folder names that rich would read as markup: a path through "in[" / "x]" holds `[/x]` (a
# closing tag that closes nothing: MarkupError), `[b]Ada` is a bold tag, `[best]` a style tag.
# The last two people are for --csv: a formula, and a name with the old separators `;` `:`.
PEOPLE = {"[b]Ada": "Colin_Powell", "[best]": "Tony_Blair", "=HYPERLINK(1)": "George_W_Bush",
          "-Bo;b:1": "Donald_Rumsfeld"}
WIDE = {**os.environ, "COLUMNS": "400"}  # tables wide enough that no path is folded


def _facenet(*args) -> list[str]:
    return [sys.executable, "-m", "facenet_cli", *map(str, args)]


def _run(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_facenet(*args), capture_output=True, text=True, cwd=ROOT, env=WIDE, timeout=timeout)


def _clean(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "MarkupError" not in done.stderr, done.stderr


def _wait_for(predicate, seconds: float = 180.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def tree(lfw_images, tmp_path_factory):
    """root/in[/x]/known/<person>/ (3 photos each) and root/in[/x]/queries/ (the 4th photo of
    each, under names that are markup or formulas, and a broken one)."""
    base = tmp_path_factory.mktemp("hygiene") / "in[" / "x]"
    known, queries = base / "known", base / "queries"
    queries.mkdir(parents=True)
    for i, (person, source) in enumerate(PEOPLE.items()):
        files = sorted((lfw_images / source).iterdir())[:4]
        (known / person).mkdir(parents=True)
        for f in files[:3]:
            shutil.copy(f, known / person / f.name)
        shutil.copy(files[3], queries / f"{['[b]q', '[best]q', '=1+1', '@q;a:b'][i]}.jpg")
    (queries / "=broken.jpg").write_bytes(b"\0" * 100)
    return base


@pytest.fixture(scope="module")
def gallery(tree):
    from facenet_cli.recognition.enrol import add_to_gallery

    path = tree / "people.gallery"
    assert add_to_gallery(path, [tree / "known"]).counts()["added"] == 3 * len(PEOPLE)
    return path


# ------------------------------------------------------------------ markup: user strings as text

def test_align_prints_paths_holding_markup_as_text(tree):
    out = tree / "aligned[best]"
    done = _run("align", tree / "known", out)
    _clean(done)
    assert f"Aligned faces are in {out};" in done.stdout  # the whole path, brackets and all
    assert "total" in done.stdout and "aligned" in done.stdout


def test_gallery_add_prints_paths_as_text(tree):
    path = tree / "added[/b].gallery"
    (tree / "bad").mkdir(exist_ok=True)
    shutil.copy(tree / "queries" / "=broken.jpg", tree / "bad" / "[b]broken.jpg")
    photos = sorted((tree / "known" / "[best]").iterdir())
    added = _run("gallery", "add", path, *photos, tree / "bad" / "[b]broken.jpg", "--name", "[b]Ada")
    _clean(added)
    assert f"gallery {path} (" in added.stdout
    assert "[b]broken.jpg" in added.stdout and "│ [b]Ada " in added.stdout  # the "Not added" table


def test_gallery_list_prints_names_and_paths_as_text(gallery, tree):
    path = gallery
    listed = _run("gallery", "list", path, "--with-faces")
    _clean(listed)
    for person in PEOPLE:
        assert f"│ {person} " in listed.stdout, listed.stdout  # `[b]Ada`, not `Ada`; `[best]`, not ``
    assert str(tree / "known" / "[b]Ada") in listed.stdout  # a source path holding `[/x]`
    assert f"{path}: 4 people, 12 faces" in listed.stdout


def test_identify_table_prints_names_and_photos_as_text(gallery, tree):
    done = _run("identify", gallery, tree / "queries", "--top", "4")
    _clean(done)
    for person in PEOPLE:
        assert person in done.stdout  # every person is among each face's 4 candidates
    for photo in ("[b]q.jpg", "[best]q.jpg", "=1+1.jpg", "@q;a:b.jpg"):
        assert f"│ {photo} " in done.stdout, done.stdout
    assert "=broken.jpg:" in done.stderr  # the problem line, as text


def test_search_prints_names_and_sources_as_text(gallery, tree):
    done = _run("search", gallery, tree / "queries" / "[b]q.jpg", "--top", "12")
    _clean(done)
    assert str(tree / "queries" / "[b]q.jpg") in done.stdout  # the table's title
    for person in PEOPLE:
        assert f"│ {person} " in done.stdout, done.stdout
    assert str(tree / "known" / "[best]") in done.stdout


def test_the_consoles_print_user_text_verbatim(capsys, monkeypatch):
    """Every console of the CLI, and the progress bar's description: markup and emoji codes
    stay text (cells, titles, sentences, error lines)."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # the bar is drawn only on a terminal
    from rich.table import Table

    from facenet_cli.cli._app import console, err_console, fail
    from facenet_cli.cli._progress import CountingProgress

    table = Table(title="[/x] [b]title")
    table.add_column("[best]")
    table.add_row("[b]Ada :smile:")
    console.print(table)
    console.print("[/x] :smile:")
    err_console.print("[red]boom")
    with CountingProgress("[/x] [b]Adding") as bar:  # raised MarkupError when the bar rendered
        bar.on_start(1)
        bar.on_advance()
    import typer

    with pytest.raises(typer.Exit):
        fail("cannot read [/x]/[b]Ada :smile:")
    out, err = capsys.readouterr()
    assert "[/x] [b]title" in out and "[best]" in out and "[b]Ada :smile:" in out and "[/x] :smile:" in out
    assert "[red]boom" in err and "[/x] [b]Adding" in err and "Error: cannot read [/x]/[b]Ada :smile:" in err


# ------------------------------------------------------------------ --csv for spreadsheets

def test_identify_csv_cells_are_neutralised_and_candidates_are_json(gallery, tree):
    done = _run("identify", gallery, tree / "queries", "--csv", "--top", "4")
    _clean(done)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(rows[0]) == ["photo", "face", "left", "top", "right", "bottom", "name", "distance", "far",
                             "candidates", "problem"]
    faces = {r["photo"]: r for r in rows if r["face"] != ""}
    # A text cell that would start a formula (= + - @) gets a leading ', nothing else changes.
    assert set(faces) == {"[b]q.jpg", "[best]q.jpg", "'=1+1.jpg", "'@q;a:b.jpg"}
    assert faces["'=1+1.jpg"]["name"] in ("'=HYPERLINK(1)", "unknown")
    assert faces["[b]q.jpg"]["name"] in ("[b]Ada", "unknown")
    for row in faces.values():
        candidates = json.loads(row["candidates"])  # names holding ; and : are unambiguous
        assert {c["name"] for c in candidates} == set(PEOPLE)
        assert all(isinstance(c["distance"], float) for c in candidates) and row["problem"] == ""
        assert not row["name"].startswith(("=", "+", "-", "@"))
    named = [r["name"] for r in faces.values()]
    assert sum(n.lstrip("'") in PEOPLE for n in named) >= 3, named
    problems = [r for r in rows if r["face"] == ""]
    assert [(r["photo"], r["candidates"]) for r in problems] == [("'=broken.jpg", "")]
    assert problems[0]["problem"]


def test_spreadsheet_text():
    from facenet_cli.recognition.identify import spreadsheet_text

    for risky in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_text(risky) == "'" + risky
    for plain in ("Ada", "[b]Ada", "", "1-2", "a=b", "'quoted"):
        assert spreadsheet_text(plain) == plain


# ------------------------------------------------------------------ strict JSON, finite options

@pytest.mark.parametrize("args", [
    ("identify", "g.gallery", "p.jpg", "--threshold", "nan"),
    ("identify", "g.gallery", "p.jpg", "--threshold", "inf"),
    ("identify", "g.gallery", "p.jpg", "--far", "-inf"),
    ("cluster", "src", "out", "--max-distance", "1e999"),
    ("serve", "--port", "0", "--far", "nan"),
    ("train", "a", "b", "--lr", "nan"),
    ("train", "a", "b", "--minutes", "inf"),
])
def test_non_finite_float_options_are_usage_errors(args, tmp_path):
    # A subprocess with a time limit: a `serve` that accepted nan would serve until killed.
    try:
        done = subprocess.run(_facenet(*args), capture_output=True, text=True, cwd=tmp_path, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"facenet {' '.join(args)} ran on instead of refusing the value")
    assert done.returncode == 2, done.stdout + done.stderr
    line = error_line(done.stderr)
    assert "must be a finite number" in line and args[-2] in line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_json_output_and_files_are_strict(gallery, tree, capsys, tmp_path):
    """No NaN or Infinity where JSON is printed or written: non-finite numbers are null."""
    from facenet_cli.atomic import write_json_atomic
    from facenet_cli.cli._app import print_json
    import numpy as np

    def strict(text):
        def refuse(constant):
            raise AssertionError(f"non-standard JSON constant {constant}")
        return json.loads(text, parse_constant=refuse)

    print_json({"a": float("nan"), "b": [float("inf"), np.float32(0.5), np.float64("-inf")], "c": 1})
    assert strict(capsys.readouterr().out) == {"a": None, "b": [None, 0.5, None], "c": 1}
    write_json_atomic(tmp_path / "x.json", {"eer": float("nan"), "n": 2})
    assert strict((tmp_path / "x.json").read_text()) == {"eer": None, "n": 2}
    done = _run("identify", gallery, tree / "queries", "--json", "--threshold", "5")
    _clean(done)
    assert strict(done.stdout)["threshold"] == 5


# ------------------------------------------------------------------ contradicting options

@pytest.mark.parametrize("args, words", [
    (("identify", "g.gallery", "p.jpg", "--csv", "--json"), "--csv and --json cannot be used together"),
    (("identify", "g.gallery", "p.jpg", "--method", "mean", "--k", "5"), "--k is the number of voting faces"),
    (("represent", "aligned", "out", "--detector", "cnn"), "--detector applies only with --photos"),
    (("represent", "aligned", "out", "--fallback-dir", "x"), "--fallback-dir applies only with --photos"),
    (("fetch-models", "--list", "--from", "weights"), "--list and --from cannot be used together"),
])
def test_contradicting_options_are_usage_errors(args, words, run_cli):
    result = run_cli(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert words in error_line(result.stderr)
    assert result.stdout == ""


# ------------------------------------------------------------------ Ctrl-C: what a rerun does

def _interrupt(args, ready, started=lambda proc: None) -> subprocess.CompletedProcess:
    """Start `facenet ARGS`, send SIGINT once `ready()` holds, and return how it ended
    (`started(proc)` is told the process first)."""
    proc = subprocess.Popen(_facenet(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    started(proc)
    try:
        assert _wait_for(lambda: ready() or proc.poll() is not None), "the command never got going"
        assert proc.poll() is None, "the command finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has spent (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def raw(lfw_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for person in ("Colin_Powell", "Tony_Blair"):
        (root / person).mkdir()
        for f in sorted((lfw_images / person).iterdir())[:12]:
            shutil.copy(f, root / person / f.name)
    return root


@pytest.mark.slow  # real processes interrupted or killed
def test_ctrl_c_in_align_says_a_rerun_resumes(raw, tmp_path):
    out = tmp_path / "out"
    done = _interrupt(("align", raw, out), lambda: len(list(out.rglob("*.png"))) >= 2)
    assert done.returncode == 130, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: interrupted; rerun the same command to resume."], done.stderr
    assert "Traceback" not in done.stderr
    kept = len(list(out.rglob("*.png")))
    rerun = _run("align", raw, out, "--json")
    _clean(rerun)
    summary = json.loads(rerun.stdout)
    assert summary["total"] == 24 and summary["earlier"] >= kept - 1 >= 1  # it resumed, as the hint said


@pytest.mark.slow  # real processes interrupted or killed
def test_ctrl_c_in_represent_photos_keeps_the_alignment_and_says_so(raw, tmp_path):
    out = tmp_path / "reps"
    done = _interrupt(("represent", raw, out, "--photos"),
                      lambda: len(list((out / "aligned").rglob("*.png"))) >= 2)
    assert done.returncode == 130, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: interrupted; the faces aligned so far are kept in {out / 'aligned'}: rerun the same "
                      "command to resume aligning, then every face is embedded again."], done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "labels.csv").exists()
    kept = len(list((out / "aligned").rglob("*.png")))
    rerun = _run("represent", raw, out, "--photos", "--json")
    _clean(rerun)
    summary = json.loads(rerun.stdout)
    assert summary["align"]["earlier"] >= kept - 1 >= 1  # the alignment resumed, as the hint said
    assert summary["faces"] == len(list((out / "aligned").rglob("*.png"))) >= 22  # and every face was embedded


@pytest.mark.slow  # real processes interrupted or killed
def test_ctrl_c_in_represent_says_it_starts_over(raw, tmp_path):
    """Plain represent keeps nothing of an interrupted run (its files are renamed into place only
    at the end), so its hint says the rerun embeds everything again, not that it resumes."""
    aligned = tmp_path / "aligned"
    _clean(_run("align", raw, aligned))
    for copy in range(1, 10):  # the same crops under more names: a run long enough on any machine
        for crop in list((aligned / "Colin_Powell").glob("*.png")):
            (aligned / f"Copy_{copy}").mkdir(exist_ok=True)
            shutil.copy(crop, aligned / f"Copy_{copy}" / crop.name)
    out = tmp_path / "reps"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    # Plain represent writes nothing until its end, so the signal goes by the CPU the process has
    # spent: past torch's import and the model's load, inside the embedding (--tta, batches of 1).
    holder: list[subprocess.Popen] = []
    done = _interrupt(("represent", aligned, out, "--tta", "24", "--batch-size", "1"),
                      lambda: _cpu_seconds(holder[0].pid) > 4.0, started=holder.append)
    assert done.returncode == 130, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: interrupted; {out} is as it was before this run, rerun the same command to embed "
                      "every image again."], done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]  # no temporary file, no half output


def test_train_hint_depends_on_a_finished_epoch(tmp_path):
    """train refuses the same command once OUT holds last.pt, so its hint names --resume then,
    and only then."""
    from facenet_cli.cli._app import INTERRUPTED

    hint = INTERRUPTED["train"]
    assert "rerun the same command to start again" in hint(aligned=tmp_path / "a", out=tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"x")
    assert f"`facenet train --resume {tmp_path / 'run'}` continues" in hint(aligned=tmp_path / "a",
                                                                           out=tmp_path / "run")
    assert "--resume" in hint(resume_dir=tmp_path / "run", out=None)


def test_every_command_has_its_own_interrupted_hint():
    """No command falls back on a generic 'rerun to resume': each says what its rerun does."""
    from facenet_cli.cli import app, lazy_group
    from facenet_cli.cli._app import INTERRUPTED

    group = lazy_group(app)
    names = [n for n in group.commands if n != "gallery"]
    names += [f"gallery {n}" for n in group.commands["gallery"].build().commands]  # listed lazily
    assert sorted(INTERRUPTED) == sorted(names)
    resumes = [n for n, hint in INTERRUPTED.items() if isinstance(hint, str) and "resume" in hint]
    assert resumes == ["align"]
