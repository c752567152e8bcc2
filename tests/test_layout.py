"""The package layout is a contract: stages import only from the stages below them, nothing imports in
a cycle (imports inside functions count), and the command line starts without loading torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mobilenets"

# Lowest first. A module may import from its own stage and the stages before it, never after.
STAGES = ("core", "models", "kernels", "data", "training", "deployment", "robustness", "reporting", "search", "api", "cli")
SAME_LEVEL = {"search": "reporting"}  # reporting and search are siblings: neither imports the other


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every mobilenets module ``path`` imports, at the top or inside functions."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.startswith("mobilenets."):
                found.add(name)
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def stage_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself (lazy public names) and __main__
    stage = SAME_LEVEL.get(parts[1], parts[1])
    return STAGES.index(stage) if stage in STAGES else None


def test_no_import_cycles_anywhere_in_the_package():
    graph = import_graph()
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []


def test_every_stage_imports_only_from_the_stages_below_it():
    violations = []
    for module, targets in import_graph().items():
        source = stage_of(module)
        if source is None:
            continue
        for target in targets:
            destination = stage_of(target)
            same_level = SAME_LEVEL.get(module.split(".")[1]) == target.split(".")[1] or SAME_LEVEL.get(
                target.split(".")[1]
            ) == module.split(".")[1]
            if destination is not None and (destination > source or (same_level and module.split(".")[1] != target.split(".")[1])):
                violations.append(f"{module} -> {target}")
    assert violations == []


def test_every_module_belongs_to_a_stage():
    assert [m for m in import_graph() if m.count(".") >= 1 and stage_of(m) is None and m != "mobilenets.__main__"] == []


def _imports_torch(*args: str) -> bool:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mobilenets", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return any(line.rstrip().endswith("| torch") for line in result.stderr.splitlines())


def test_help_and_models_start_without_loading_torch():
    assert not _imports_torch("--help")
    assert not _imports_torch("models")
    assert not _imports_torch("train", "--help")


def test_importing_the_package_loads_no_torch_until_a_model_is_needed():
    code = "import sys, mobilenets; assert 'torch' not in sys.modules; mobilenets.list_models(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
