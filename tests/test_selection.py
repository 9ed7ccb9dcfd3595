"""``--zoo-models`` in a project with gate classes: names only a gate lists, no shipped suite unless asked."""

from __future__ import annotations

import pytest
from zoo_sessions import gate_checks, tiny_gate, write


def _gate_project(pytester: pytest.Pytester) -> None:
    write(pytester.path, {"conftest.py": "", "tests/test_gate.py": tiny_gate()})


def test_a_gate_only_name_narrows_the_gate_without_the_shipped_suite(pytester: pytest.Pytester) -> None:
    _gate_project(pytester)
    narrowed = pytester.runpytest_subprocess("--zoo-models=tinya", "--co", "-q")
    ids = [line for line in narrowed.outlines if "::" in line]
    assert narrowed.ret == 0, narrowed.stderr.str()
    assert ids and all(
        i.startswith("tests/test_gate.py::TestTiny::") and i.endswith("[tinya]") for i in ids
    ), ids
    assert len(ids) == len(gate_checks())

    with_suite = pytester.runpytest_subprocess("--zoo-models=tinya,resnet18", "--zoo-suite=yes", "--co", "-q")
    ids = [line for line in with_suite.outlines if "::" in line]
    assert "pytest-zoo::TestZoo::test_forward_shape[resnet18]" in ids
    assert "tests/test_gate.py::TestTiny::test_forward_shape[tinya]" in ids


def test_a_name_nothing_knows_is_a_usage_error_listing_what_is_selectable(pytester: pytest.Pytester) -> None:
    _gate_project(pytester)
    result = pytester.runpytest_subprocess("--zoo-models=tinyz")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--zoo-models: zoo model pattern 'tinyz' matches none of the 2 model(s) this session can "
            "select: TestTiny: tinya, tinybad; (the shipped suite is not collected because gate classes "
            "were; --zoo-suite=yes adds it). Did you mean: tinya*"
        ]
    )
    result.stdout.no_fnmatch_line("*passed*")


def test_under_xdist_the_usage_error_is_the_controllers(pytester: pytest.Pytester) -> None:
    """Workers find it at collection; the run ends with exit code 4 and the message, no INTERNALERROR."""
    _gate_project(pytester)
    result = pytester.runpytest_subprocess("--zoo-models=tinyz", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --zoo-models: zoo model pattern 'tinyz' matches none of the 2 model(s)*"]
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
