"""Static layering rules of ``steering_transfer`` (pure ``ast``: no models, no torch).

Layers, bottom up (a module's layer is its top-level name under ``steering_transfer``):

- ground: ``errors validate io config lazy`` -- import only ground; ``errors`` imports no
  third-party module at all (stdlib and ground only).
- core: ``models packaged toy hooks ablation positions generation activations alignment
  metrics fidelity replacement lm_loss mappers vectors paired_generation`` -- import only ground and
  core.
- tasks: ``tasks judges`` -- import only ground, core, tasks.
- organisms: import only ground, core, tasks, organisms (never experiments, suite, cli).
- experiments: import only ground, core, tasks, experiments (never organisms: callers pass
  loaded models), and never ``pytest``.
- suite: anything except ``cli`` and the package ``__init__``. Every suite module outside
  ``suite.matrix`` and ``suite.cells.*`` is generic (``plugin options session fixtures records
  leaderboard baseline hookspecs __init__``, and any new one by default): at module level it
  imports no torch/transformers/safetensors and from the package only ground and other
  generic suite modules.
- top: ``cli`` and ``steering_transfer/__init__`` may import anything.

Decisions:

- Layer rules apply to every import, including ones inside functions and ``if TYPE_CHECKING:``
  (a lower layer should not even name a higher layer's types). The generic-suite rule only
  looks at module-level, non-``TYPE_CHECKING`` imports (it is about import-time cost).
- Cycles are searched over module-level runtime imports only (function-level and
  ``TYPE_CHECKING`` imports do not execute at import time). ``from pkg import name`` resolves
  to ``pkg.name`` when that is a submodule, else to the submodule that ``pkg/__init__``
  re-exports ``name`` from (``from .mod import name``), else to ``pkg`` itself. Implicit
  "importing ``a.b`` runs ``a/__init__``" edges are not added, so a package ``__init__`` that
  re-exports its submodules does not form a cycle with them by itself.
- A new top-level module that fits no layer fails ``test_every_module_has_a_layer``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = "steering_transfer"
SRC = Path(__file__).resolve().parents[1] / "src"
PKG_DIR = SRC / ROOT

LAYERS: dict[str, set[str]] = {
    "ground": {"errors", "validate", "io", "config", "lazy"},
    "core": {
        "models", "packaged", "toy", "hooks", "ablation", "positions", "generation",
        "activations",
        "alignment", "metrics", "fidelity", "replacement", "lm_loss", "mappers", "vectors",
        "paired_generation",
    },
    "tasks": {"tasks", "judges"},
    **{name: {name} for name in ("organisms", "experiments", "suite")},
    "top": {"cli", ""},  # "" is the package __init__ itself
}
ALLOWED: dict[str, set[str]] = {
    "ground": {"ground"},
    "core": {"ground", "core"},
    "tasks": {"ground", "core", "tasks"},
    "organisms": {"ground", "core", "tasks", "organisms"},
    "experiments": {"ground", "core", "tasks", "experiments"},
    "suite": {"ground", "core", "tasks", "organisms", "experiments", "suite"},
    "top": set(LAYERS),
}
HEAVY_SUITE = (f"{ROOT}.suite.matrix", f"{ROOT}.suite.cells")  # may import below suite
HEAVY = {"torch", "transformers", "safetensors"}
TC_TESTS = ("TYPE_CHECKING", "typing.TYPE_CHECKING")


@dataclass(frozen=True)
class Import:
    path: str  # file:line
    src: str  # importing module
    dst: str  # imported module (absolute)
    module_level: bool  # executed at import time (not in a function)
    type_checking: bool  # inside `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.path}: {self.src} -> {self.dst}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES: dict[str, Path] = {module_name(p): p for p in sorted(PKG_DIR.rglob("*.py"))}
GENERIC_SUITE = {  # every suite module outside HEAVY_SUITE
    m for m in FILES if f"{m}.".startswith(f"{ROOT}.suite.")
    and not any(f"{m}.".startswith(f"{h}.") for h in HEAVY_SUITE)
}


def is_package(mod: str) -> bool:
    return FILES.get(mod, Path()).name == "__init__.py"


@cache
def reexports(pkg: str) -> dict[str, str]:
    """name -> submodule for the module-level `from .mod import name` lines of pkg/__init__."""
    out: dict[str, str] = {}
    for node in ast.parse(FILES[pkg].read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{pkg}.{node.module}"
    return out


def collect(mod: str) -> list[Import]:
    path = FILES[mod]
    rel = path.relative_to(SRC.parent)
    package = mod if is_package(mod) else mod.rpartition(".")[0]
    found: list[Import] = []

    def add(node: ast.stmt, dst: str, module_level: bool, tc: bool) -> None:
        found.append(Import(f"{rel}:{node.lineno}", mod, dst, module_level, tc))

    def visit(node: ast.AST, module_level: bool, tc: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name, module_level, tc)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = reexports(base) if base in FILES and is_package(base) else {}
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(node, sub if sub in FILES else names.get(alias.name, base), module_level, tc)
        elif isinstance(node, ast.If) and ast.unparse(node.test) in TC_TESTS:
            for child in node.body:
                visit(child, module_level, True)
            for child in node.orelse:
                visit(child, module_level, tc)
        else:
            inner = module_level and not isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            for child in ast.iter_child_nodes(node):
                visit(child, inner, tc)

    visit(ast.parse(path.read_text(), str(path)), True, False)
    return found


IMPORTS: list[Import] = list(dict.fromkeys(imp for mod in FILES for imp in collect(mod)))


def layer_of(mod: str) -> str | None:
    key = mod[len(ROOT) + 1 :].split(".")[0] if mod != ROOT else ""
    return next((name for name, keys in LAYERS.items() if key in keys), None)


def test_every_module_has_a_layer() -> None:
    unknown = sorted(f"{FILES[m].relative_to(SRC.parent)} ({m})" for m in FILES if not layer_of(m))
    assert not unknown, (
        "modules that fit no layer; assign each a layer in LAYERS of tests/test_layering.py:\n  "
        + "\n  ".join(unknown)
    )


def violations() -> list[str]:
    out: list[str] = []
    for imp in IMPORTS:
        src_layer = layer_of(imp.src)
        if src_layer is None:
            continue  # reported by test_every_module_has_a_layer
        top = imp.dst.split(".")[0]
        generic = imp.src in GENERIC_SUITE and imp.module_level and not imp.type_checking
        if top == ROOT:
            dst_layer = layer_of(imp.dst) or "unknown"
            if dst_layer not in ALLOWED[src_layer]:
                out.append(f"{imp}  [{src_layer} may not import {dst_layer}]")
            elif generic and dst_layer != "ground" and imp.dst not in GENERIC_SUITE:
                out.append(f"{imp}  [generic suite module imports {dst_layer} at module level]")
        elif imp.src == f"{ROOT}.errors" and top not in sys.stdlib_module_names:
            out.append(f"{imp}  [errors imports no third-party module]")
        elif src_layer == "experiments" and top in ("pytest", "_pytest"):
            out.append(f"{imp}  [experiments never imports pytest]")
        elif generic and top in HEAVY:
            out.append(f"{imp}  [generic suite module imports {top} at module level]")
    return out


def test_layering_rules() -> None:
    found = violations()
    assert not found, f"{len(found)} layering violation(s):\n  " + "\n  ".join(found)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the SCCs that contain a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while (w := stack.pop()) != v:
                scc.append(w)
            scc.append(v)
            if len(scc) > 1 or v in graph[v]:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def test_no_import_cycles() -> None:
    edges = [i for i in IMPORTS if i.module_level and not i.type_checking and i.dst in FILES]
    graph: dict[str, set[str]] = {m: set() for m in FILES}
    for imp in edges:
        graph[imp.src].add(imp.dst)
    report = []
    for scc in strongly_connected(graph):
        inside = [f"    {i}" for i in edges if i.src in scc and i.dst in scc]
        report.append("cycle among " + ", ".join(scc) + ":\n" + "\n".join(inside))
    assert not report, "module-level import cycles:\n  " + "\n  ".join(report)


def test_plugin_import_is_torch_free() -> None:
    code = (
        "import steering_transfer.suite.plugin, sys; "
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "assert not heavy, f'importing the plugin loaded {heavy}'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
