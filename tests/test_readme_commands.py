"""Every command line the README and the docs/ pages show must parse as shown.

`facenet ...` lines of the code blocks of README.md and docs/*.md (where the measurement chapters
and the full command reference live) go through the real command-line parser without
running the job: the subcommand exists, every option exists, choices are valid, the positional
arguments fit. Benchmark lines
(`python benchmarks/X.py ...`, in code blocks or inline code) go through that script's own
argument parser. Nothing here needs the data or a model: it checks grammar only. Every relative
link of those pages must name a file that exists, and a heading of it when it has an anchor.
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
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models" / "README.md"]
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))

_CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE_CODE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")  # inline code may wrap within a paragraph
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
    script = re.compile(r"^(?:(?:\S*/)?python3?\s+)?(?:\S*/)?(?:benchmarks/)?(" + "|".join(SCRIPTS) + r")\.py(\s.*)?$")
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        candidates = [pair for block in _CODE_BLOCK.finditer(text) for pair in _logical_lines(text, block)]
        blocks = [(b.start(), b.end()) for b in _CODE_BLOCK.finditer(text)]
        candidates += [(m.start(), " ".join(m.group(1).split())) for m in _INLINE_CODE.finditer(text)
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
                if argv or Path(words[0]).name.startswith("python"):
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


def test_the_readme_shows_every_command_and_stays_short():
    """The README is the new user's page: every command with an example (`demo` is `make demo`),
    the measurements and the full reference on the docs/ pages it links."""
    import typer.main

    from facenet_cli.cli import app

    commands = set(typer.main.get_command(app).list_commands(None)) - {"demo"}
    readme = ROOT / "README.md"
    shown = {argv[0] for where, argv in facenet_lines() if argv and where.startswith("README.md:")}
    assert commands <= shown, f"commands without an example in README.md: {sorted(commands - shown)}"
    assert "make demo" in readme.read_text(encoding="utf-8")
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 400


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


# ---------------------------------------------------------------- links between the pages

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` dropped, spaces to `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = _CODE_BLOCK.sub("", doc.read_text(encoding="utf-8"))
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def test_the_docs_pages_exist_and_the_readme_links_each():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in DOCS if p.parent.name == "docs"}
    assert {"ARCHITECTURE.md", "COMMANDS.md"} <= pages, pages
    assert not [p for p in pages if f"docs/{p}" not in readme], "a docs/ page the README does not link"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc):
    text = _CODE_BLOCK.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        where = (doc.parent / path).resolve() if path else doc
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            broken.append(f"{target}: no such heading in {where.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


# ---------------------------------------------------------------- Python shown in the docs

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_imports() -> list[tuple[str, str, str]]:
    """(where, module, name) for every `from facenet_cli... import name` of the docs' Python blocks."""
    import ast

    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in _PYTHON_BLOCK.finditer(text):
            for node in ast.walk(ast.parse(block.group(1))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("facenet_cli"):
                    where = _where(doc, text, block.start(1) + len("\n".join(block.group(1).splitlines()[:node.lineno - 1])))
                    found.extend((where, node.module, alias.name) for alias in node.names)
    return found


def test_the_docs_show_python():
    assert {"FacePipeline", "PipelineOptions"} <= {name for _, _, name in python_imports()}


@pytest.mark.parametrize("where, module, name", python_imports(), ids=[f"{w} {n}" for w, _, n in python_imports()])
def test_docs_python_imports_resolve(where, module, name):
    import importlib

    assert hasattr(importlib.import_module(module), name), f"{where}: `from {module} import {name}` fails"


# ---------------------------------------------------------------- files the docs name

_PACKAGES = sorted(p.name for p in (ROOT / "facenet_cli").iterdir() if p.is_dir() and not p.name.startswith("_"))
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:tests|benchmarks|facenet_cli|" + "|".join(_PACKAGES)
                        + r")/(?:[\w-]+/)*[\w-]+\.(?:py|md|json))\b")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_the_files_the_docs_name_exist(doc):
    """A module, test or script named in the prose (`store/sqlite.py`, `tests/test_layout.py`) is
    there: a page that names a file moved or removed is out of date."""
    text = _CODE_BLOCK.sub("", doc.read_text(encoding="utf-8"))
    missing = sorted({path for path in _REPO_PATH.findall(text)
                      if not (ROOT / path).exists() and not (ROOT / "facenet_cli" / path).exists()})
    # A bare module name in inline code (`atomic.py`) is some file of the package, tests or scripts.
    names = {p.name for folder in ("facenet_cli", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")}
    missing += sorted({name for name in re.findall(r"`([\w-]+\.py)`", text) if name not in names})
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_readme_lists_every_exit_code():
    from facenet_cli import errors

    codes = {0} | {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)}
    assert listed == codes, f"README.md's exit code table lists {sorted(listed)}; errors.py has {sorted(codes)}"
