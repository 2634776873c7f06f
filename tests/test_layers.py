"""Imports point one way: each module imports only from the layers below its own, and no cycles.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING`` (a type-only
import that closes a loop is still a loop in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module may import from any lower layer and from its own package; ``data``
# sits beside ``model`` and never imports it.
LAYERS: list[tuple[str, ...]] = [
    ("quillgpt.errors",),
    ("quillgpt.config", "quillgpt.device", "quillgpt.threads"),
    ("quillgpt.model", "quillgpt.data"),
    ("quillgpt.checkpoint", "quillgpt.evaluation"),
    ("quillgpt.training", "quillgpt.inference", "quillgpt.interop"),
    ("quillgpt.tools",),
    ("quillgpt.commands", "quillgpt.cli"),
]
FACADE = "quillgpt"  # the package's __init__: re-exports the public API, imported by the top


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``quillgpt`` module named by an import anywhere in the file."""
    found: set[str] = set()
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from quillgpt.training import loop`` imports the submodule ``loop``.
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {name for name in found if name in modules and name != module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def component(module: str) -> tuple[int, str]:
    """(layer index, package) of a module; the package is the layer entry it falls under."""
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or module.startswith(entry + "."):
                return index, entry
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def test_every_module_belongs_to_a_layer():
    for module in graph():
        if module != FACADE:
            component(module)


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        if module == FACADE:
            continue
        layer, package = component(module)
        for target in targets:
            if target == FACADE:
                if layer < len(LAYERS) - 1:
                    wrong.append(f"{module} -> {target} (only commands/cli use the facade)")
                continue
            target_layer, target_package = component(target)
            if target_package != package and target_layer >= layer:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_facade_imports_only_what_sits_below_training():
    for target in graph()[FACADE]:
        assert component(target)[0] < component("quillgpt.training")[0], target


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, set())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from quillgpt.model import DecoderLM", {"quillgpt.model"}),
        ("if TYPE_CHECKING:\n    from quillgpt.training import loop", {"quillgpt.training"}),
        ("def f():\n    import quillgpt.inference", {"quillgpt.inference"}),
    ],
)
def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch, source, expected):
    package = tmp_path / "quillgpt"
    for sub in ("model", "training", "inference"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    probe = package / "probe.py"
    probe.write_text(source + "\n")
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    assert imports_of(probe) == expected
