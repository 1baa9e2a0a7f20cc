"""The package layout is the architecture: sub-packages by concern, imports one way, the app without the training stack.

Layers, each importing only its own and lower ones (README, "Layout"):
    data, model  <-  infer  <-  evaluate  <-  pruning  <-  distill  <-  bench, teach, cli
`import slimsam` and the app load neither torch-pruning, pycocotools nor matplotlib.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimsam"
LAYERS = {"data": 0, "model": 0, "infer": 1, "evaluate": 2, "pruning": 3, "distill": 4, "bench": 5, "teach": 5,
          "deploy": 5, "cli": 6}
HEAVY = ("torch_pruning", "pycocotools", "matplotlib")
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Every slimsam module `path` imports, at module level or inside functions (`from pkg import submodule`
    counts as importing the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_sub_package_says_its_job_and_has_its_tests():
    packages = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
    assert packages == sorted(LAYERS)
    for name in packages:
        assert ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())), name
        assert (ROOT / "tests" / name).is_dir(), f"tests/{name}/ mirrors slimsam/{name}/"
    assert not [path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"], "modules live in packages"


def test_imports_run_one_way():
    wrong = [f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets
             if layer(name) is not None and layer(target) is not None and layer(target) > layer(name)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles():
    """Depth-first search for a back edge, over module-level and function-level imports alike."""
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("statement", ["import slimsam", "from slimsam import SamPredictor", "import slimsam.infer",
                                       "import app, demo.ui"])
def test_serving_masks_does_not_load_the_training_stack(statement):
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "", f"`{statement}` loads {loaded.stdout.strip()}"
