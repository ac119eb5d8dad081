"""Documentation stays inside the repository and names only commands that exist.

- No file cites developer notes that live outside the repository: the facts they held are in
  ``docs/upstream.md`` and ``docs/performance.md``.
- Every reference to a numbered section of those two pages ("docs/upstream.md U2",
  ``[...](docs/performance.md#p8)``) resolves.
- Every ``fastsam3d <command>`` shown as code (Markdown code spans and blocks, docstrings in
  ``src/`` and ``scripts/``) is a command of :func:`fastsam3d.cli.build_parser`, and where the
  command's first argument is a fixed choice (``bench models``, ``samples list``) a valid one.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastsam3d.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "scripts", "docs", "configs", "README.md", "CHANGELOG.md")
TEXT_SUFFIXES = {
    ".py", ".md", ".sh", ".txt", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".json", ".rst",
    ".html", ".js", ".css",
}  # fmt: skip
DOCS = {"U": ROOT / "docs" / "upstream.md", "P": ROOT / "docs" / "performance.md"}

# Spelled in pieces so that this file does not match its own patterns.
_NOTES = "".join(("UP", "STREAM"))
_PERF = "".join(("PERF", "_NOTES"))
FORBIDDEN = {
    "upstream notes outside the repository (use docs/upstream.md)": re.compile(rf"\b{_NOTES}\b"),
    "performance notes outside the repository (use docs/performance.md)": re.compile(
        rf"\b{_PERF}\b"
    ),
    "a path outside the repository": re.compile(r"\.\./shared\b|\bshared/(?:spec|docs)/"),
}


def _files() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.suffix in TEXT_SUFFIXES and f.is_file() and "__pycache__" not in f.parts:
                    yield f


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- code spans -------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1", re.S | re.M)
_INLINE = re.compile(r"``(.+?)``|`([^`\n]+)`")


def markdown_code(text: str) -> list[str]:
    """Fenced blocks and inline code spans of a Markdown text."""
    spans = [m.group(2) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    spans += [a or b for a, b in _INLINE.findall(prose)]
    return spans


def docstring_code(source: str) -> list[str]:
    """Inline literals (``...`` or `...`) of every docstring of a Python module."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ) and (doc := ast.get_docstring(node)):
            spans += [a or b for a, b in _INLINE.findall(doc)]
    return spans


# ``fastsam3d`` where a shell command starts: at the start of a line (after an optional prompt
# or environment assignments), after ; & | ( or a directory (.venv/bin/), or after ``-m``. Not
# ``import fastsam3d``, ``--model fastsam3d``, ``fastsam3d.train`` or ``fastsam3d-lite``.
_INVOCATION = re.compile(
    r"(?:^[ \t]*(?:\$[ \t]+)?(?:[A-Z_][A-Z0-9_]*=\S*[ \t]+)*|[;&|(][ \t]*|/|-m[ \t]+)"
    r"fastsam3d(?:[ \t]+-[-\w]+)*[ \t]+([a-z][\w-]*)(?![\w.-])"
    r"(?:[ \t]+([a-z][\w-]*(?:\|[a-z][\w-]*)*)(?![\w./-]))?",
    re.M,
)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("fastsam3d's parser has no subcommands")


def _first_choices(sub: argparse.ArgumentParser) -> tuple[str, ...] | None:
    """Fixed choices of a subcommand's first positional argument (``None``: free or none)."""
    positionals = [a for a in sub._actions if not a.option_strings]
    if positionals and positionals[0].choices is not None:
        return tuple(str(c) for c in positionals[0].choices)
    return None


def unknown_commands(span: str, commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``fastsam3d ...`` invocations in ``span`` that the CLI would reject."""
    bad = []
    for m in _INVOCATION.finditer(span):
        command, argument = m.group(1), m.group(2)
        if command not in commands:
            bad.append(f"fastsam3d {command}")
            continue
        choices = _first_choices(commands[command])
        if choices is not None and argument is not None:
            bad += [f"fastsam3d {command} {a}" for a in argument.split("|") if a not in choices]
    return bad


def _code_spans(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return markdown_code(text)
    if path.suffix == ".py" and path.parts[len(ROOT.parts)] in ("src", "scripts"):
        return docstring_code(text)
    return []


# -- tests ------------------------------------------------------------------------------------


def test_no_citations_of_files_outside_the_repository() -> None:
    found = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [
                f"{_rel(path)}:{number}: {why}: {line.strip()}"
                for why, pattern in FORBIDDEN.items()
                if pattern.search(line)
            ]
    assert not found, "\n".join(found)


def test_documented_commands_exist() -> None:
    commands = _subcommands()
    found = []
    for path in _files():
        for span in _code_spans(path):
            found += [f"{_rel(path)}: {cmd}" for cmd in unknown_commands(span, commands)]
    assert not found, "commands the CLI does not have:\n" + "\n".join(found)


def _sections(letter: str) -> tuple[set[str], set[str]]:
    """Section numbers (``U2``) and anchors (``u2``) of one of the two pages."""
    text = DOCS[letter].read_text(encoding="utf-8")
    numbers = set(re.findall(rf"^## ({letter}\d+)\. ", text, re.M))
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', text))
    return numbers, anchors


def test_every_section_has_its_anchor() -> None:
    for letter, path in DOCS.items():
        numbers, anchors = _sections(letter)
        assert numbers, f"{_rel(path)} has no numbered sections"
        text = path.read_text(encoding="utf-8")
        for number in numbers:
            assert f'<a id="{number.lower()}"></a>\n\n## {number}. ' in text, number
        assert {n.lower() for n in numbers} <= anchors


_PAGE = {"upstream": "U", "performance": "P"}
_SECTION_REF = re.compile(r"docs/(upstream|performance)\.md((?:(?:,| and|, and)? [UP]\d+\b)+)")
_ANCHOR_REF = re.compile(r"\]\((?:[./]*docs/)?(upstream|performance)\.md#([^)\s]+)\)")


def test_section_references_resolve() -> None:
    sections = {letter: _sections(letter) for letter in DOCS}
    found = []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        for m in _SECTION_REF.finditer(text):
            letter = _PAGE[m.group(1)]
            for number in re.findall(r"[UP]\d+", m.group(2)):
                if number not in sections[letter][0]:
                    found.append(f"{_rel(path)}: docs/{m.group(1)}.md {number}")
        for m in _ANCHOR_REF.finditer(text):
            if m.group(2) not in sections[_PAGE[m.group(1)]][1]:
                found.append(f"{_rel(path)}: {m.group(1)}.md#{m.group(2)}")
    assert not found, "references to sections that do not exist:\n" + "\n".join(found)


def test_the_pages_are_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in DOCS.values():
        assert f"]({_rel(path)})" in readme


@pytest.mark.parametrize(
    ("span", "bad"),
    [
        ("fastsam3d bench runtimes", ["fastsam3d bench runtimes"]),
        ("fastsam3d frobnicate --all", ["fastsam3d frobnicate"]),
        ("$ OMP_NUM_THREADS=2 fastsam3d -v reticulate x", ["fastsam3d reticulate"]),
        (".venv/bin/fastsam3d samples list|vacuum", ["fastsam3d samples vacuum"]),
        ("cd x && fastsam3d nope", ["fastsam3d nope"]),
        ("fastsam3d bench models --runtimes torch,onednn", []),
        ("fastsam3d bench --reference --memory", []),
        ("fastsam3d samples list|verify|fetch", []),
        ("fastsam3d -v convert a.pth b.safetensors --model fastsam3d", []),
        ("fastsam3d serve --token SECRET  # share it", []),
        ("fastsam3d segment ct.nii.gz --model fastsam3d --checkpoint fastsam3d.pth", []),
        ("fastsam3d-lite", []),
        ("python -m fastsam3d.train --config c.toml", []),
        ("from fastsam3d import Session", []),
        ("import fastsam3d as f", []),
        ("model = fastsam3d.load_model('fastsam3d')", []),
        ("fastsam3d COMMAND --help", []),
        ("# fastsam3d chooses the runtime", []),
    ],
)
def test_the_command_scanner(span: str, bad: list[str]) -> None:
    assert unknown_commands(span, _subcommands()) == bad


def test_the_scanners_find_code() -> None:
    text = "Run `fastsam3d bench runtimes`.\n\n```bash\nfastsam3d nope\n```\n"
    assert markdown_code(text) == ["fastsam3d nope\n", "fastsam3d bench runtimes"]
    source = '"""Check with ``fastsam3d bench runtimes``."""\n\ndef f():\n    """`x`"""\n'
    assert docstring_code(source) == ["fastsam3d bench runtimes", "x"]
