"""Every command line the README shows must parse as shown.

`facenet ...` lines of README.md's code blocks go through the real command-line parser without
running the job: the subcommand exists, every option exists, choices are valid, the positional
arguments fit. Benchmark lines
(`python benchmarks/X.py ...`, in code blocks or inline code) go through that script's own
argument parser. Nothing here needs the data or a model: it checks grammar only.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DOCS = [ROOT / "README.md"]
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))

_CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _logical_lines(text: str, block: re.Match) -> list[tuple[int, str]]:
    """(offset in text, line) for the block's lines, `\\` continuations joined."""
    lines, offset, pending, start = [], block.start(1), "", None
    for raw in block.group(1).splitlines(keepends=True):
        start = offset if start is None else start
        offset += len(raw)
        line = raw.rstrip("\n")
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending, start = "", None
    return lines


def _words(line: str) -> list[str]:
    """Shell words of one command: prompt, leading VAR=value and `# comments` dropped, and the
    README's `[--optional]` brackets opened (what is inside must parse too)."""
    words = shlex.split(line.strip().removeprefix("$ ").replace("[", " ").replace("]", " "), comments=True)
    while words and _ENV.match(words[0]):
        words.pop(0)
    return words


def _commands(line: str) -> list[list[str]]:
    """Each command of a line joined by `&&` or `;` (only lines that name a facenet command or a
    benchmark script: other code blocks, such as the layout tree, are prose)."""
    if "facenet" not in line and "benchmarks/" not in line:
        return []
    return [w for part in re.split(r"&&|;", line) if (w := _words(part))]


def _where(doc: Path, text: str, index: int) -> str:
    return f"{doc.relative_to(ROOT)}:{text.count(chr(10), 0, index) + 1}"


def facenet_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `facenet`) for every facenet command in the docs' code blocks."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in _CODE_BLOCK.finditer(text):
            for index, line in _logical_lines(text, block):
                for words in _commands(line):
                    if Path(words[0]).name == "facenet":
                        found.append((_where(doc, text, index), words[1:]))
    return found


def benchmark_lines() -> list[tuple[str, str, list[str]]]:
    """(where, script, argv) for every benchmark command: code-block lines and inline code that
    runs a script (starts with python, or gives it arguments); a bare mention of a file is not one."""
    found = []
    script = re.compile(r"^(?:python3?\s+)?(?:\S*/)?(?:benchmarks/)?(" + "|".join(SCRIPTS) + r")\.py(\s.*)?$")
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        candidates = [pair for block in _CODE_BLOCK.finditer(text) for pair in _logical_lines(text, block)]
        blocks = [(b.start(), b.end()) for b in _CODE_BLOCK.finditer(text)]
        candidates += [(m.start(), m.group(1)) for m in _INLINE_CODE.finditer(text)
                       if not any(s <= m.start() < e for s, e in blocks)]
        for index, line in candidates:
            for command in re.split(r"&&|;", line):
                words = command.strip().removeprefix("$ ").split()
                while words and _ENV.match(words[0]):
                    words.pop(0)
                match = script.match(" ".join(words))
                if not match:
                    continue
                argv = _words(match.group(2) or "")
                if argv or words[0].startswith("python"):
                    found.append((_where(doc, text, index), match.group(1), argv))
    return found


# ---------------------------------------------------------------- the checker

def parse_error(argv: list[str]) -> str | None:
    """Why `facenet ARGV` does not parse (None when it does), without running the command."""
    import typer.main

    from facenet_cli.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("facenet", [], resilient_parsing=True)
    command, path, rest = group, ["facenet"], list(argv)
    # Walk sub-apps (`facenet gallery add ...`) down to the command that runs.
    while hasattr(command, "commands"):
        if not rest or rest[0].startswith("-"):
            return f"`{' '.join(path)}` needs a subcommand"
        name, rest = rest[0], rest[1:]
        sub = command.get_command(ctx, name)
        if sub is None:
            return f"no command `{' '.join([*path, name])}`; commands are {', '.join(sorted(command.commands))}"
        path.append(name)
        command = sub
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True) if hasattr(command, "commands") else ctx
    try:
        command.make_context(" ".join(path), rest, parent=ctx, resilient_parsing=False)
    except Exception as exc:  # the parser's own errors (typer vendors click's exception types)
        if hasattr(exc, "format_message"):
            return f"`{' '.join(path)}`: {exc.format_message()}"
        raise
    return None


@pytest.mark.parametrize("argv, why", [
    (["nosuchcommand", "a"], "no command"),
    (["align", "raw/", "out/", "--no-such-option"], "No such option"),
    (["align", "raw/", "out/", "--detector", "sonar"], "sonar"),
    (["align", "raw/", "out/", "extra/"], "unexpected extra argument"),
    (["align", "raw/"], "Missing argument"),
    (["represent", "aligned/", "reps/", "--batch-size", "many"], "--batch-size"),
    (["gallery", "nosuchsubcommand"], "no command `facenet gallery nosuchsubcommand`"),
])
def test_the_checker_rejects_what_the_parser_rejects(argv, why):
    error = parse_error(argv)
    assert error is not None and why.lower() in error.lower(), error


def test_the_checker_accepts_a_good_line():
    assert parse_error(["align", "raw/", "out/", "--faces", "center", "--fallback", "whole", "--workers", "2"]) is None


def test_the_docs_show_facenet_commands():
    # Guards the extraction itself: the README shows at least align, represent, compare, lfw-roc,
    # tsne and train in code blocks.
    names = {argv[0] for _, argv in facenet_lines() if argv}
    assert {"align", "represent", "compare", "lfw-roc", "tsne", "train"} <= names, names


FACENET_LINES = facenet_lines()


@pytest.mark.parametrize("where, argv", FACENET_LINES, ids=[f"{w} {a[0] if a else ''}" for w, a in FACENET_LINES])
def test_readme_facenet_command_parses(where, argv):
    error = parse_error(argv)
    assert error is None, f"{where}: `facenet {shlex.join(argv)}` does not parse: {error}"


# ---------------------------------------------------------------- benchmark scripts

class _ParserBuilt(Exception):
    pass


def _script_parser(name: str, monkeypatch):
    """The script's argument parser, without running the script: its build_parser(), or else the
    parser its main() builds, caught at the parse_args call."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_readme_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    if hasattr(module, "build_parser"):
        return module.build_parser()
    built = []

    def catch(parser, *args, **kwargs):
        built.append(parser)
        raise _ParserBuilt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_ParserBuilt):
        module.main()
    monkeypatch.undo()
    return built[0]


def test_the_docs_show_benchmark_commands():
    shown = {script for _, script, _ in benchmark_lines()}
    assert {"lfw_view2", "align_speed", "embed_speed", "end_to_end", "train_lfw_dev"} <= shown, shown


BENCHMARK_LINES = benchmark_lines()


@pytest.mark.parametrize("where, script, argv", BENCHMARK_LINES, ids=[f"{w} {s}" for w, s, _ in BENCHMARK_LINES])
def test_readme_benchmark_command_parses(where, script, argv, capsys, monkeypatch):
    parser = _script_parser(script, monkeypatch)
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{script}.py {shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("argv", [["distil"], ["distill", "--hours", "5"], []])
def test_a_wrong_benchmark_line_does_not_parse(argv, monkeypatch):
    parser = _script_parser("train_lfw_dev", monkeypatch)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
