"""The import layers of src/attnlab (docs/architecture.md): each layer imports only layers below it.

Every `import` and `from ... import` of every module is read with `ast`, including imports inside
functions (a deferred import is still a dependency). Three checks:
- every module belongs to a known layer (a new top-level package must be placed in LAYERS);
- no module imports a layer above its own, nor a different layer of the same rank;
- no import cycle among modules (module-level imports only: those run at import time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "attnlab"

# Bottom to top. Layers in one tuple share a rank and may not import each other.
# models sit below oracle: a model is a plain torch function and needs no Oracle, while the
# oracle's target adapters (from a torch module, a real attention layer) may wrap model classes.
LAYERS: list[tuple[str, ...]] = [
    ("_version", "errors"),
    ("_random", "_optional"),
    ("models",),
    ("oracle",),
    ("extract",),
    ("evaluate",),
    ("tasks",),
    ("constructions", "experiments"),
    ("serve",),
    ("report",),
    ("cli",),
    ("__main__",),
]
RANK = {layer: rank for rank, names in enumerate(LAYERS) for layer in names}
# The package root re-exports a few names for users; inside the package nobody imports it.
FACADE = "attnlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def imports_of(module: str, path: Path, module_level_only: bool = False):
    """(imported attnlab module, line) for each import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if module_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == FACADE:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != FACADE:
                continue
            for alias in node.names:  # `from attnlab.cli import info` imports the module cli.info
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def test_every_module_is_in_a_known_layer():
    unknown = sorted(m for m in MODULES if m != FACADE and layer_of(m) not in RANK)
    assert not unknown, (
        f"modules outside every layer: {unknown}; move them into a layer package "
        f"or add their layer to LAYERS in tests/test_layers.py and docs/architecture.md"
    )


def test_no_upward_or_sideways_imports():
    bad = []
    for module, path in MODULES.items():
        if module == FACADE:
            continue
        own = layer_of(module)
        for target, line in sorted(set(imports_of(module, path))):
            other = layer_of(target)
            if other == own:
                continue
            rel = path.relative_to(PACKAGE.parent)
            if other == FACADE:
                bad.append(
                    f"{rel}:{line} imports the package root {target!r}; import from its layer"
                )
            elif own in RANK and other in RANK and RANK[other] >= RANK[own]:
                kind = "up" if RANK[other] > RANK[own] else "sideways"
                bad.append(f"{rel}:{line} ({own}) imports {target} ({other}): {kind}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {
        m: {t for t, _ in imports_of(m, p, module_level_only=True) if t in MODULES and t != m}
        for m, p in MODULES.items()
    }
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from attnlab.serve.client import HttpTarget\n", ["attnlab.serve.client"]),
        ("def f():\n    from attnlab.report import CLAIMS\n", ["attnlab.report"]),
        ("import numpy\nimport attnlab.models\n", ["attnlab.models"]),
    ],
)
def test_the_parser_sees_deferred_and_plain_imports(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert [t for t, _ in imports_of("attnlab.oracle.probe", path)] == expected
