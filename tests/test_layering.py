"""The import arrows between edgetwin's layers, read from the source with ``ast``.

Every import counts, including the lazy ones inside functions: a lazy import
still couples two layers. Imports under ``if TYPE_CHECKING:`` are left out of
the cycle check only (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgetwin"


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name
    imported: str
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``
    top_level: bool  # runs at import time


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    # ``from edgetwin.store import keys`` may name a submodule: count both.
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _edges() -> Iterator[Edge]:
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        yield from _walk(tree, module, path.name == "__init__.py", type_only=False, top=True)


def _walk(
    node: ast.AST, module: str, is_pkg: bool, *, type_only: bool, top: bool
) -> Iterator[Edge]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield Edge(module, alias.name, child.lineno, type_only, top)
        elif isinstance(child, ast.ImportFrom):
            for name in _resolve(child, module, is_pkg):
                yield Edge(module, name, child.lineno, type_only, top)
        elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from _walk(child, module, is_pkg, type_only=True, top=top)
        else:
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _walk(child, module, is_pkg, type_only=type_only, top=top and not nested)


def _internal(edges: Iterator[Edge]) -> list[Edge]:
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return [e for e in edges if e.imported in modules and e.imported != e.importer]


EDGES = _internal(_edges())


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(importers: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    """Edges from ``importers`` to any edgetwin module outside ``allowed`` (and themselves)."""
    return [
        f"{e.importer}:{e.line} imports {e.imported}"
        for e in EDGES
        if _in(e.importer, *importers) and not _in(e.imported, *importers, *allowed)
    ]


def test_the_walker_sees_imports_at_all() -> None:
    """Guards the guard: a broken walker would pass every rule below vacuously."""
    assert any(e.importer == "edgetwin.cli.main" and e.imported == "edgetwin.errors" for e in EDGES)
    assert any(not e.top_level for e in EDGES)  # the lazy imports inside functions
    assert any(e.type_only for e in EDGES)


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        # the shared value types and the error tree are the base: they import no edgetwin layer
        ("edgetwin.types", ()),
        ("edgetwin.errors", ()),
        # parsing JSON from outside is a base too: bundles, the control socket, the collector
        ("edgetwin.untrusted_json", ()),
        # the twin's clock (time that never steps back) is a base too: sources stamp with it
        ("edgetwin.clock", ()),
        # numpy helpers (a growing array of rows) are a base too
        ("edgetwin.arrays", ()),
        # the room left on the twin's disk is a base too: the store keeps a floor, status shows it
        ("edgetwin.disk", ()),
        # transports know samples, not where they are kept
        ("edgetwin.sources", ("edgetwin.types", "edgetwin.errors", "edgetwin.untrusted_json",
                              "edgetwin.clock")),
        ("edgetwin.features", ("edgetwin.types", "edgetwin.errors")),
        # the store takes a Secret; it never prompts, never reaches up into the CLI or daemon.
        # It may read the pure catalogues (which feature feeds what, which summaries exist)
        # to shred what was derived from forgotten data.
        ("edgetwin.store", ("edgetwin.types", "edgetwin.errors", "edgetwin.config",
                            "edgetwin.features.schema", "edgetwin.privacy.metrics",
                            "edgetwin.disk")),
        # ... and those catalogues stay pure: nothing but the base below them
        ("edgetwin.features.schema", ("edgetwin.types", "edgetwin.errors")),
        ("edgetwin.privacy.metrics",
         ("edgetwin.types", "edgetwin.errors", "edgetwin.features.schema")),
        # emulated hardware may use the wire protocol, nothing of the runtime above it
        ("edgetwin.emulators",
         ("edgetwin.errors", "edgetwin.types", "edgetwin.sources.bridge_protocol",
          "edgetwin.sources.particulate_protocol")),
    ],
)
def test_layer_imports_only_what_lies_below_it(layer: str, allowed: tuple[str, ...]) -> None:
    assert _violations((layer,), allowed) == []


def test_nothing_below_the_cli_imports_the_cli() -> None:
    bad = [f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
           if _in(e.imported, "edgetwin.cli")
           and not _in(e.importer, "edgetwin.cli", "edgetwin.__main__")]
    assert bad == []


def test_only_the_cli_wires_the_daemon() -> None:
    bad = [f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
           if _in(e.imported, "edgetwin.daemon")
           and not _in(e.importer, "edgetwin.cli", "edgetwin.daemon")]
    assert bad == []


def test_emulators_are_used_only_by_the_demo() -> None:
    bad = [f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
           if _in(e.imported, "edgetwin.emulators")
           and not _in(e.importer, "edgetwin.emulators", "edgetwin.cli.demo")]
    assert bad == []


def test_no_module_imports_itself_back_at_import_time() -> None:
    """No cycle among the imports that run when a module is loaded."""
    graph: dict[str, set[str]] = {}
    for e in EDGES:
        # a submodule naming its own package is no cycle: the package is loaded first anyway
        if e.top_level and not e.type_only and not e.importer.startswith(e.imported + "."):
            graph.setdefault(e.importer, set()).add(e.imported)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_emulated_hardware_lives_only_in_edgetwin_emulators() -> None:
    """DESIGN: emulators used by tests and the demo are not among the runtime sources."""
    misplaced = [_module_name(p) for p in PACKAGE.rglob("*emulat*.py")
                 if not _in(_module_name(p), "edgetwin.emulators")]
    assert misplaced == []
    assert (PACKAGE / "emulators" / "bridge.py").is_file()
