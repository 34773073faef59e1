"""Start-up fast paths against the plain ones: `facenet` builds only the command it runs (the
lazy group lists exactly what Typer's full build lists), and model files are verified from a
stamp in the cache folder only while they are unchanged."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "cv2", "dlib")


def _help_text(group, args: list[str], monkeypatch) -> str:
    """What `facenet ARGS --help` prints through `group`, at a fixed width."""
    monkeypatch.setenv("COLUMNS", "120")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
        group.main(args + ["--help"], prog_name="facenet")
    assert exit.value.code == 0, out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("args", [[], ["compare"], ["gallery"], ["gallery", "add"], ["align"]])
def test_lazy_group_shows_the_same_help_as_the_full_build(args, monkeypatch):
    import typer.main

    from facenet_cli.cli import app, lazy_group

    full = _help_text(typer.main.get_command(app), args, monkeypatch)
    lazy = _help_text(lazy_group(), args, monkeypatch)
    assert lazy == full
    assert "Usage: facenet" in lazy


def test_lazy_group_builds_only_the_command_it_runs(monkeypatch):
    from facenet_cli.cli import app, lazy_group
    from facenet_cli.cli._app import _LazyCommand

    group = lazy_group()
    names = [info.name or info.callback.__name__ for info in app.registered_commands]
    assert len(group.commands) == len(names) + len(app.registered_groups)
    assert all(isinstance(c, _LazyCommand) for c in group.commands.values())
    _help_text(group, ["compare"], monkeypatch)
    built = [name for name, c in group.commands.items() if not isinstance(c, _LazyCommand)]
    assert built == ["compare"]
    assert {p.name for p in group.commands["compare"].params} >= {"images", "model", "as_json"}


def _facenet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`facenet ARGS` as the console script runs it (cli.main: the lazy group)."""
    return subprocess.run([sys.executable, "-m", "facenet_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=120)


@pytest.mark.parametrize("args, fragment", [
    (["compare", "--bogus"], "No such option"),
    (["align", "in", "out", "--detector", "nope"], "nope"),
    (["nosuchcommand"], "nosuchcommand"),
    (["gallery", "nosuch"], "nosuch"),
])
def test_parser_errors_through_the_script_are_one_line_and_exit_2(args, fragment):
    done = _facenet(*args)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], done.stderr
    assert "╭" not in done.stderr and "Traceback" not in done.stderr


def test_script_help_lists_every_command_and_loads_no_engine():
    code = ("import sys\nfrom facenet_cli.cli import main\nsys.argv = ['facenet', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"sys.stderr.write(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, COLUMNS="120"), timeout=120)
    assert done.stderr.strip() == "", f"`facenet --help` loaded {done.stderr.strip()}"
    from facenet_cli.cli import app

    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        summary = info.callback.__doc__.strip().splitlines()[0][:30]
        assert name in done.stdout and summary in " ".join(done.stdout.split()), (name, summary)


HELP_SCRIPT = """
import sys
{prelude}
from facenet_cli.cli import app, main
sys.argv = ['facenet', *{args!r}, '--help']
try:
    main()
except SystemExit:
    pass
sys.stderr.write(','.join(m for m in ('rich.markdown', 'markdown_it', 'pygments') if m in sys.modules))
"""


@pytest.mark.parametrize("args", [[], ["compare"], ["gallery"]])
def test_help_rendered_without_markdown_and_pygments_is_the_same(args):
    """typer's help renderer imported with stand-ins for rich's Markdown and Traceback prints
    what it prints when imported plainly, and loads neither markdown-it nor pygments."""
    def run(prelude: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", HELP_SCRIPT.format(prelude=prelude, args=args)],
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, COLUMNS="120"),
                              timeout=120)

    light = run("")
    plain = run("import typer.rich_utils")
    assert light.stdout == plain.stdout and "Usage: facenet" in light.stdout
    assert light.stderr == "" and "markdown_it" in plain.stderr


def test_stand_ins_become_the_real_classes_when_used():
    code = ("import sys\nfrom facenet_cli.cli._app import _import_help_renderer\n_import_help_renderer()\n"
            "import typer.rich_utils as r\nassert 'rich.markdown' not in sys.modules\n"
            "md = r.Markdown('*x*')\nimport rich.markdown, rich.traceback\n"
            "assert isinstance(md, rich.markdown.Markdown)\n"
            "assert r.Traceback.from_exception.__self__ is rich.traceback.Traceback\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_typer_that_wants_more_than_the_stand_ins_gets_the_plain_import():
    """If typer's renderer imports a name the stand-ins lack (a newer typer), --help still works:
    the renderer is imported the plain way instead."""
    code = ("import sys\nimport facenet_cli.cli._app as a\n"
            "a._HELP_RENDERER_EXTRAS = {'rich.markdown': 'NotWhatTyperImports', 'rich.traceback': 'Traceback'}\n"
            "a._import_help_renderer()\nimport typer.rich_utils as r, rich.markdown\n"
            "assert r.Markdown is rich.markdown.Markdown\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
