"""The merge registry and the merge config agree (the import-cycle check of the whole package is
tests/unit/test_import_graph.py).

The config lists the method names itself (so it imports no maths); the registry declares each
method's parameter class where the method registers. Nothing ties the two at run time but this
test.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tiny_r1v.config import ConfigError, load_config
from tiny_r1v.merge.config import MergeConfig, MethodName
from tiny_r1v.merge.methods import METHODS, PARAMS, register


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
