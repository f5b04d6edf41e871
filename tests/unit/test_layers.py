"""The rooms of `shared` and the one way their imports run (shared/__init__.py): each subpackage
imports only those listed after it, no module imports itself back through others, and the
functions reach `shared` from above. Lazy imports inside functions count the same."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# shared/__init__.py's list, top down: each may import only those after it.
LAYERS = ("pipeline", "spending", "sketch", "edge", "novita", "media", "google", "core")
# The top-level modules beside the subpackages, and what each may import.
TOP = {
    "runtime": set(LAYERS),
    "ops": {*LAYERS, "runtime"},
    "openapi": set(LAYERS) - {"pipeline"},
}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """The `shared` modules a file imports, anywhere in it (TYPE_CHECKING blocks aside: they cost nothing)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "shared":
            # `from shared.google import api` imports the module shared.google.api.
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "shared"}
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted((ROOT / "shared").rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path) & modules for path in paths}


def room(module: str) -> str:
    return module.split(".")[1] if module != "shared" else "shared"


def test_every_room_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for module, imported in graph().items():
        here = room(module)
        if here == "shared":
            continue
        allowed = TOP.get(here) or set(LAYERS[LAYERS.index(here) + 1 :])
        wrong += [f"{module} imports {name}" for name in imported if room(name) not in allowed | {here}]
    assert wrong == []


def test_no_module_imports_itself_back() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(edges.get(module, ())):
            if name not in edges:
                continue
            if state.get(name) == "open":
                cycles.append([*path[path.index(name) :], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_room_says_what_it_holds_and_imports_nothing() -> None:
    for init in sorted((ROOT / "shared").rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), init
        assert not [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)], init


def test_the_library_imports_nothing_of_the_project_above_it() -> None:
    """The entry points, the local stack, the simulator, the tests and the tools stand on `shared`,
    never the other way round."""
    above = {"functions", "main", "devstack", "novita_simulator", "chaos", "bench", "tests"}
    wrong = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            wrong += [f"{module_name(path)} imports {n}" for n in names if n.split(".")[0] in above]
    assert wrong == []
