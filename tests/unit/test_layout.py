"""The house rules of src/energy_cli/, checked from the code's own imports (every `import` statement, also
those inside functions): no import cycle between modules, and no folder imports a folder above it."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "energy_cli"

# Lower floors never import higher ones. Folders on one floor do not import each other.
FLOORS = {
    "__init__": 0, "errors": 0,
    "fileio": 0.5, "config": 0.5,
    "ood": 1, "data": 1, "models": 1,
    "engine": 2,
    "detectors": 3, "runs": 3,
    "reporting": 4,
    "commands": 5,
    "launch": 6, "api": 6.5,
    "cli": 7, "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The energy_cli modules a file imports (`from energy_cli.x import y` counts as energy_cli.x.y when that
    is a module, else energy_cli.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("energy_cli"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("energy_cli"))
    return {m for m in found if m in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def floor_of(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    assert top in FLOORS, f"{module}: its folder {top} has no floor in tests/unit/test_layout.py; add it there"
    return top, FLOORS[top]


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target] if target in stack else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_no_folder_imports_a_folder_above_or_beside_it():
    wrong = []
    for module, targets in GRAPH.items():
        top, floor = floor_of(module)
        for target in targets:
            other, other_floor = floor_of(target)
            if other != top and other_floor >= floor:
                wrong.append(f"{module} (floor {floor}) imports {target} (floor {other_floor})")
    assert not wrong, "\n".join(wrong)


def test_the_math_does_no_io_and_runs_no_model():
    """ood/ is pure: no file, CSV or checkpoint modules, no models, no engine."""
    banned = ("energy_cli.runs", "energy_cli.data", "energy_cli.models", "energy_cli.engine")
    for module, targets in GRAPH.items():
        if module.startswith("energy_cli.ood"):
            assert not [t for t in targets if t.startswith(banned)], module
            source = MODULES[module].read_text()
            for word in ("open(", "Path(", "torch.save", "torch.load", "csv."):
                assert word not in source, f"{module} uses {word}"
