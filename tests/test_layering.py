"""The house rules, checked on the source (cheap: no JAX computation).

Floors, top to bottom: the CLI (``cli``, ``applications``) -> the applications
(``precip``, ``visibility``) -> the engine (``engine``) -> the model library (everything
else). An import may only point down (or stay on its floor); the two applications never
import each other; data readers import no jax; there are no import cycles; ``import
nowcast_jax`` (and the library and the CLI module) import neither pandas, pysteps,
matplotlib nor orbax; and no two modules define a public name twice.
"""

from __future__ import annotations

import ast
import collections
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nowcast_jax"
FLOORS = {"library": 0, "engine": 1, "application": 2, "top": 3}
TOP = ("nowcast_jax.cli", "nowcast_jax.applications")
APPLICATIONS = ("nowcast_jax.precip", "nowcast_jax.visibility")
# Readers and preprocessing: numpy (and pandas / pysteps, lazily) only, never jax.
READERS = ("nowcast_jax.precip.archive", "nowcast_jax.precip.decode", "nowcast_jax.precip.dataset",
           "nowcast_jax.precip.idx", "nowcast_jax.precip.mnist", "nowcast_jax.precip.moving_mnist",
           "nowcast_jax.precip.preprocess", "nowcast_jax.precip.motion",
           "nowcast_jax.visibility.readers", "nowcast_jax.visibility.units", "nowcast_jax.visibility.grid",
           "nowcast_jax.visibility.features",
           "nowcast_jax.visibility.neighbours", "nowcast_jax.visibility.windows",
           "nowcast_jax.visibility.dataset", "nowcast_jax.visibility.preprocess", "nowcast_jax.visibility.sources")
# Names several modules define on purpose: the application hooks the CLI looks up by name, and
# the Flax linen / NNX wrappers, which mirror each other class for class.
SHARED_NAMES = {"make_task", "evaluate", "format_report", "export_spec",
                "ConvLSTMCell", "EncoderForecaster", "StationLSTM"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, module: str, everywhere: bool = True) -> set[str]:
    """Modules named by the import statements of ``tree`` (also those inside functions, the
    lazy ones, unless ``everywhere`` is false); ``from pkg import mod`` counts as ``pkg.mod``."""
    nodes = ast.walk(tree) if everywhere else tree.body
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _floor(module: str) -> str:
    if module in TOP:
        return "top"
    if module.startswith(APPLICATIONS):
        return "application"
    if module.startswith("nowcast_jax.engine"):
        return "engine"
    return "library"


def _internal_graph(modules, everywhere=True) -> dict[str, set[str]]:
    return {m: {i for i in _imports(tree, m, everywhere) if i in modules and i != m}
            for m, tree in modules.items()}


def test_imports_point_down_only():
    modules = _modules()
    wrong = []
    for module, targets in _internal_graph(modules).items():
        for target in targets:
            if target == "nowcast_jax":
                continue
            up = FLOORS[_floor(target)] > FLOORS[_floor(module)]
            across = (_floor(module) == _floor(target) == "application"
                      and module.split(".")[1] != target.split(".")[1])
            if up or across:
                wrong.append(f"{module} ({_floor(module)}) imports {target} ({_floor(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_readers_never_import_jax():
    modules = _modules()
    missing = [r for r in READERS if r not in modules]
    assert not missing, f"reader modules renamed or gone (update READERS): {missing}"
    graph = _internal_graph(modules)
    for reader in READERS:
        seen, todo = set(), [reader]
        while todo:  # every nowcast_jax module the reader reaches, lazily or not
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        jax_users = sorted(m for m in seen if any(i == "jax" or i.startswith(("jax.", "flax", "optax", "orbax"))
                                                  for i in _imports(modules[m], m)))
        assert not jax_users, f"{reader} reaches {jax_users}, which import jax"


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (empty when there is none), by depth-first search."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_cycles():
    graph = _internal_graph(_modules())
    for deps in graph.values():
        deps.discard("nowcast_jax")
    cycle = _cycle(graph)
    assert not cycle, " -> ".join(cycle)


def test_the_checks_catch_what_they_should():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("import jax\ndef f():\n    from nowcast_jax.engine import loop\n")
    assert _imports(tree, "nowcast_jax.models") == {"jax", "nowcast_jax.engine", "nowcast_jax.engine.loop"}
    assert _imports(tree, "nowcast_jax.models", everywhere=False) == {"jax"}
    assert [_floor(m) for m in ("nowcast_jax.cli", "nowcast_jax.precip.task", "nowcast_jax.engine.loop",
                                "nowcast_jax.cells")] == ["top", "application", "engine", "library"]


HEAVY = ("pandas", "pysteps", "matplotlib", "orbax")


@pytest.mark.parametrize("modules", ["nowcast_jax", "nowcast_jax.models, nowcast_jax.rollout, nowcast_jax.metrics",
                                     "nowcast_jax.cli"])
def test_import_stays_light(modules):
    code = (f"import sys, {modules}; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"import {modules} pulls in {proc.stdout.strip()}"


def test_one_definition_per_public_name():
    where = collections.defaultdict(list)
    for module, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                names = []
            for name in names:
                if not name.startswith("_") and name not in SHARED_NAMES:
                    where[name].append(module)
    twice = {name: mods for name, mods in where.items() if len(mods) > 1}
    assert not twice, "\n".join(f"{name}: {mods}" for name, mods in sorted(twice.items()))


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_configs_stay_plain(config):
    """Loading a config (every variant's module) imports neither JAX nor a data library."""
    code = ("import sys; from nowcast_jax.engine.config import load_config; "
            f"load_config('configs/{config}'); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'jax', 'flax', 'optax', 'pandas', 'pysteps'}}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"loading configs/{config} imports {proc.stdout.strip()}"
