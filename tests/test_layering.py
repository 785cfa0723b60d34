"""The house's imports run one way: a layering you can draw, no circles, no function-level imports of
our own modules (beyond the optional-dependency boundary below), and every module imports on its own.

The layers, lowest first (a module may import its own rank or lower, never higher):
"""
import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpucnn"

# rank of each top-level part of the package (gpucnn.<part>...)
RANKS = {
    "errors": 0,
    "data": 1,                                   # independent of the network side
    "emulator": 1, "ops": 2, "backend": 3, "validation": 3,
    "layers": 4, "losses": 4, "optim": 4, "schedules": 4,
    "fast": 5, "gpu_step": 5,
    "serialization": 6,
    "callbacks": 7, "distributed": 7, "training": 7,
    "trace": 8, "network": 9,
    "models": 10, "gradcheck": 10,
    "bench": 11, "cli": 12, "__main__": 13, "__init__": 13,
}
# Function-level imports of our own modules that are deliberate: the CUDA op set is only imported
# when a CUDA backend is asked for (it needs the emulator's toolchain or CuPy, both optional).
LAZY_OK = {("backend", "ops"), ("ops", "emulator")}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _part(module):
    """gpucnn.training.loop -> 'training'; gpucnn -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module, path):
    """(imported gpucnn module, at module level?) for every import of our package in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem == "gpucnn" or stem.startswith("gpucnn."):
                targets = [stem] if node.module else [f"{stem}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "gpucnn"]
        for target in targets:
            yield target, id(node) in top_level


def _edges():
    for module, path in _modules():
        for target, at_top in _imports(module, path):
            yield module, target, at_top


def test_every_module_has_a_rank():
    unknown = sorted({_part(m) for m, _ in _modules()} - set(RANKS))
    assert not unknown, f"new parts of the package need a place in RANKS (tests/test_layering.py): {unknown}"


def test_imports_run_downwards_only():
    wrong = [f"{a} imports {b}" for a, b, _ in _edges()
             if _part(a) != _part(b) and RANKS[_part(a)] < RANKS.get(_part(b), 99)]
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_no_function_level_imports_of_our_modules():
    lazy = [f"{a} imports {b} inside a function" for a, b, at_top in _edges()
            if not at_top and (_part(a), _part(b)) not in LAZY_OK]
    assert not lazy, "\n".join(lazy)


def test_no_import_cycles_between_modules():
    graph = {}
    for a, b, at_top in _edges():
        if at_top:
            graph.setdefault(a, set()).add(b)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):       # a package importing its own submodules
                continue
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in list(graph):
        if node not in state:
            visit(node, [node])


def test_no_grafts_onto_classes():
    """`Network.trace = trace` style assignments in a package __init__ hide where a method lives."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    grafts = [ast.unparse(n) for n in tree.body if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Attribute) for t in n.targets)]
    assert not grafts, grafts


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_process():
    names = [m for m, _ in _modules() if not m.endswith("__main__")]

    def import_alone(name):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                           timeout=120, cwd=PACKAGE.parent)
        return None if r.returncode == 0 else f"{name}: {(r.stderr.strip().splitlines() or ['?'])[-1]}"

    with ThreadPoolExecutor(4) as pool:                # ~50 interpreters: overlap their start-up
        bad = [b for b in pool.map(import_alone, names) if b]
    assert not bad, "\n".join(bad)
