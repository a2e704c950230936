"""The package's layers: `ls src/<package>` names them, imports point one way (down the layers) and form no circle.

    workflows  launch a training run, then evaluate, export, predict, serve, search, compare
    engines    raw.py, lightning.py (+ the Lightning parity callbacks): each a way to train the task
    watching   loggers, TensorBoard figures
    run        config rules, run folders, checkpoints, guards, console, DDP: what every engine shares
    core       the task, the models, the data

doctor.py stands apart: it imports none of them.
"""

import ast

import pytest
from conftest import PROJECT_ROOT

PACKAGE_DIR = PROJECT_ROOT / "src" / "{{ cookiecutter.package }}"
LAYERS = ["core", "run", "watching", "engines", "workflows"]  # bottom first


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in the file (imports inside functions count too)."""
    modules = {
        path.relative_to(PACKAGE_DIR).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): path
        for path in PACKAGE_DIR.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = (
            name.rsplit(".", 1)[0]
            if path.name != "__init__.py" and "." in name
            else (name if path.name == "__init__.py" else "")
        )
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                candidates = [target] if node.module else []
                candidates += [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
                imported |= {c for c in candidates if c in modules and c != name}
        graph[name] = imported
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_the_package_modules_import_each_other_without_a_circle():
    graph = package_imports()
    assert {"workflows.launch", "engines.raw", "engines.lightning", "core.task", "run.distributed"} <= set(graph)
    assert "engines.raw" in graph["workflows.launch"] and "core.task" in graph["engines.raw"]  # both kinds seen
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def layer(module: str) -> str:
    return module.split(".")[0] if "." in module else module


def test_imports_point_down_the_layers():
    """Each module imports from its own layer or the layers below it (LAYERS, top last); the doctor imports none, so
    that it runs on a broken install."""
    graph = package_imports()
    assert {layer(name) for name in graph} - {"__init__", "doctor"} == set(LAYERS)
    upward = [
        f"{name} -> {imported}"
        for name, imports in graph.items()
        for imported in imports
        if layer(name) in LAYERS and LAYERS.index(layer(imported)) > LAYERS.index(layer(name))
    ]
    assert upward == []
    assert graph["doctor"] == set()


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_circle_finder(graph, cycle):
    assert find_cycle(graph) == cycle
