"""The package's import graph, read from the source (imports inside functions count too; those
under `if TYPE_CHECKING:`, which never run, do not)."""
from __future__ import annotations

import ast
from pathlib import Path

import rl_runner

PACKAGE = Path(rl_runner.__file__).parent
FEEDERS = {"rl_runner.rollout", "rl_runner.replay", "rl_runner.offline",
           "rl_runner.demonstrations"}


TYPE_ONLY = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The rl_runner modules `path` imports anywhere in its body (`from rl_runner import x`
    counts as importing rl_runner.x when that is a module)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # type-only imports never run: they cannot form a cycle
        if isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_ONLY:
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # a package's __init__ runs before its modules: importing rl_runner.a.b imports rl_runner.a
    return {name: {m for m in imports_of(path, modules) if m != name and
                   not name.startswith(m + ".")}
            for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_through_a_function_local_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from rl_runner.trainer import train\n")
    assert imports_of(src, {"rl_runner.trainer"}) == {"rl_runner.trainer"}


def test_no_import_cycle_among_rl_runner_modules():
    graph = import_graph()
    assert "rl_runner.trainer" in graph and len(graph) > 30
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_algorithms_do_not_import_feeders_or_the_run_loop():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("rl_runner.algos."):
            bad = deps & (FEEDERS | {"rl_runner.trainer"})
            assert not bad, f"{name} imports {sorted(bad)}"
