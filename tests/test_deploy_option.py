"""``--zoo-deploy`` turns deployability on for the shipped suite and every gate class of a session.

A class's own ``deploy`` wins for that class (``()`` keeps it off); the declared exceptions stay
strict xfails, since the check body is the same. Bad values are usage errors (tests/test_options.py).
"""

from __future__ import annotations

import textwrap

import pytest

GATES = """
    import torch
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import ZooConformance

    class Head(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            BODY

    class Gate(ZooConformance):
        models = ("resnet18",)

        def build_model(self, name):
            return resnet18(weights=None)

        def replace_head(self, model, num_classes):
            model.fc = Head(num_classes)

    class TestFollowsTheOption(Gate):
        pass

    class TestOptsOut(Gate):
        deploy = ()

    class TestOwnPaths(Gate):
        deploy = ("fx",)
"""


def gates(body: str = "return self.fc(x)") -> str:
    return textwrap.dedent(GATES).replace("BODY", body)


def test_the_option_collects_deployability_where_no_class_says_otherwise(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=gates())
    args = ("--zoo-models=resnet18", "--zoo-suite=yes", "--co", "-q", "-p", "no:cacheprovider")
    # Subprocesses: an in-process rerun would import the kit's ZooConformance a second time.
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.OK
    deployability = [line for line in result.outlines if "test_deployability" in line]
    assert deployability == ["test_gate.py::TestOwnPaths::test_deployability[resnet18]"]

    for option in (["--zoo-deploy=all"], ["-o", "zoo_deploy=export, fx"]):
        result = pytester.runpytest_subprocess(*args, *option)
        deployability = sorted(line for line in result.outlines if "test_deployability" in line)
        assert deployability == [
            "pytest-zoo::TestZoo::test_deployability[resnet18]",
            "test_gate.py::TestFollowsTheOption::test_deployability[resnet18]",
            "test_gate.py::TestOwnPaths::test_deployability[resnet18]",
        ], option


def test_the_shipped_suite_deploys_resnet18_with_every_path(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--zoo-models=resnet18", "--zoo-deploy=all", "-k", "deployability", "-p", "no:cacheprovider", "-v"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*TestZoo::test_deployability[[]resnet18[]] PASSED*"])


def test_a_data_dependent_head_fails_under_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=gates("return self.fc(x) if bool((x > 0).any()) else -self.fc(x)"))
    result = pytester.runpytest_subprocess(
        "--zoo-deploy=fx,export", "-k", "FollowsTheOption and deployability", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: deployability: export raised*",
            "*hook:*",
            "*model = t.build_model('resnet18'); t.replace_head(model, 5)*",
        ]
    )


def test_declared_exceptions_stay_strict_xfails_under_the_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--zoo-models=raft_small", "--zoo-deploy=fx", "-k", "deployability", "-p", "no:cacheprovider", "-rx"
    )
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(
        ["*XFAIL*TestZoo::test_deployability[[]raft_small[]]*raft_small: declared: fx:*"]
    )
