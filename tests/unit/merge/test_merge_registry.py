"""The merge registry and the merge config agree, and no module of tiny_r1v imports itself back.

The config lists the method names itself (so it imports no maths); the registry declares each
method's parameter class where the method registers. Nothing ties the two at run time but this
test.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.merge.config import MergeConfig, MethodName
from tiny_r1v.merge.methods import METHODS, PARAMS, register

PACKAGE = Path(__file__).resolve().parents[3] / "tiny_r1v"


def test_every_registered_method_has_a_config_section_of_its_parameter_class():
    hints = typing.get_type_hints(MergeConfig)
    assert set(typing.get_args(MethodName)) == set(METHODS) == set(PARAMS)
    assert typing.get_args(hints["method"]) == typing.get_args(MethodName)
    fields = {field.name for field in dataclasses.fields(MergeConfig)}
    for name, params in PARAMS.items():
        assert name in fields, f"MergeConfig has no section {name!r} for the registered method"
        assert hints[name] is params, f"MergeConfig.{name} is {hints[name]}, the method takes {params}"
        assert isinstance(getattr(MergeConfig(base="b"), name), params)


def test_an_unregistered_name_is_refused_by_the_config_and_a_second_registration_by_the_registry():
    with pytest.raises(ConfigError, match=r"method: must be one of \['amm', 'task_arithmetic'"):
        load_config(MergeConfig, None, ["base=b", "method=slerp"])
    with pytest.raises(ValueError, match="'wudi' is registered twice"):
        register("wudi", params=PARAMS["wudi"])(METHODS["wudi"])
    assert METHODS["wudi"].__name__ == "wudi"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, modules: set[str]) -> set[str]:
    """The tiny_r1v modules a module imports, at any depth of its code (a function-level import
    closes a circle at run time all the same); `from P import m` of a submodule imports `P.m`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_inside_the_package():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imported(ast.parse(path.read_text()), set(paths)) for name, path in paths.items()}
    assert graph["tiny_r1v.merge.methods"] >= {"tiny_r1v.merge.config"}  # the parser sees imports
    assert "tiny_r1v.merge.methods" not in graph["tiny_r1v.merge.config"]
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
