"""The package's shape stays easy to follow: layers only import downwards, ``modeling`` depends
on nothing of ours but ``config``, and no function grows past 120 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fastsam3d"

LAYERS = {
    "errors": 0,
    "_version": 0,
    "files": 1,
    "config": 1,
    "distributed": 1,
    "modeling": 2,
    "registry": 2,
    "samples": 2,
    "contract": 2,
    "sam2d": 4,
    "data": 3,
    "checkpoint": 3,
    "runtime": 3,
    "viewer": 4,
    "build": 4,
    "conformance": 5,
    "interactive": 5,
    "eval": 6,
    "train": 7,
    "server": 7,
    "demo": 7,
    "bench": 8,
    "cli": 9,
    "": 9,  # the package root: the public API re-exports
}
"""Top-level parts of ``fastsam3d`` by layer: a part imports only parts of lower layers."""

MAX_FUNCTION_LINES = 120


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Every ``fastsam3d...`` module or name ``module`` imports (top level or in functions)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fastsam3d"):
                continue
            if node.module is None:  # from . import x: x is a submodule
                found |= {f"{target}.{alias.name}" for alias in node.names}
            else:
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fastsam3d")}
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_has_a_layer() -> None:
    parts = {_part(m) for m, _ in _modules()}
    assert parts <= set(LAYERS), f"give these a layer: {sorted(parts - set(LAYERS))}"


def test_imports_only_go_down_the_layers() -> None:
    wrong = []
    for module, path in _modules():
        mine = _part(module)
        for target in _imports(module, path):
            theirs = _part(target)
            if theirs == mine:
                continue
            if theirs not in LAYERS or LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_modeling_depends_only_on_config() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, path in _modules()
        if _part(module) == "modeling"
        for target in _imports(module, path)
        if _part(target) not in ("modeling", "config")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_function_is_longer_than_the_limit() -> None:
    long = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_checker_sees_a_violation() -> None:
    """The import scan finds relative, absolute and in-function imports."""
    imports = _imports("fastsam3d.cli.segment", PACKAGE / "cli" / "segment.py")
    assert "fastsam3d.interactive.session" in imports
    assert "fastsam3d.cli.common" in imports
    assert LAYERS[_part("fastsam3d.interactive.session")] < LAYERS["cli"]
