"""Train-mode output shapes: checked once per example, by whichever check runs the train-mode forward.

``test_gradients_reach_head_only`` runs a train-mode forward per example anyway, so where it runs,
``test_forward_shape`` runs eval mode only and the gradient check asserts the train-mode shapes;
where it does not run (opted out, deselected, marked), ``test_forward_shape`` checks them itself.
The planted defect: an auxiliary head, used in train mode only, that ``replace_head`` leaves alone.
"""

from __future__ import annotations

import pytest

GATES = """
import pytest
import torch
from torch import nn

from pytest_zoo import ZooConformance


class AuxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 10)
        self.aux = nn.Linear(8, 10)

    def forward(self, x):
        features = self.body(x)
        if self.training:
            return {"out": self.head(features), "aux": self.aux(features)}
        return self.head(features)


class Recipe(ZooConformance):
    models = ("auxnet",)
    builder_oracle = False

    def build_model(self, name):
        return AuxNet()

    def replace_head(self, model, num_classes):
        model.head = nn.Linear(8, num_classes)  # the aux head is forgotten
        return model

    def freeze_backbone(self, model):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(("head.", "aux.")))


class TestBoth(Recipe):
    pass


class TestOptedOut(Recipe):
    test_gradients_reach_head_only = None


class TestMarked(Recipe):
    @pytest.mark.xfail(reason="a marked gradient check may not count")
    def test_gradients_reach_head_only(self, zoo_model_name, zoo_device, zoo_hypothesis_settings):
        super().test_gradients_reach_head_only(zoo_model_name, zoo_device, zoo_hypothesis_settings)
"""

TRAIN_SHAPE = (
    "*auxnet: an output does not have the shape a classification model with * classes gives, in train mode*"
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_gates=GATES)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", "--zoo-examples=2", *args)


def test_the_gradient_check_reports_a_train_mode_shape_defect_where_it_runs(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, "-k", "forward_shape or gradients")
    result.stdout.fnmatch_lines(
        [
            "*TestBoth::test_forward_shape[[]auxnet[]] PASSED*",
            "*TestBoth::test_gradients_reach_head_only[[]auxnet[]] FAILED*",
        ]
    )
    for cls in ("TestOptedOut", "TestMarked"):  # no gradient check sure to run: checked where it was
        result.stdout.fnmatch_lines([f"*{cls}::test_forward_shape[[]auxnet[]] FAILED*"])
    result.stdout.fnmatch_lines(["*TestMarked::test_gradients_reach_head_only[[]auxnet[]] XFAIL*"])
    result.assert_outcomes(passed=1, failed=3, xfailed=1)
    result.stdout.fnmatch_lines(
        [TRAIN_SHAPE, "*checked on this test's own train-mode forward*", "*defect:*auxiliary output 'aux'*"]
    )


def test_forward_shape_alone_checks_train_mode_itself(pytester: pytest.Pytester) -> None:
    result = run(pytester, "-k", "TestBoth and forward_shape")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([TRAIN_SHAPE, "*inputs:*train mode*", "*defect:*auxiliary output 'aux'*"])


@pytest.mark.parametrize("dist", ["load", "loadscope", "worksteal"])
def test_under_xdist_the_gradient_check_reports_it_where_a_model_stays_on_one_worker(
    pytester: pytest.Pytester, dist: str
) -> None:
    """A worker's own config says ``dist="no"``: the mode it runs under comes from the controller."""
    pytest.importorskip("xdist")
    result = run(pytester, "-k", "TestBoth and (forward_shape or gradients)", "-n", "2", f"--dist={dist}")
    if dist == "worksteal":  # a model's tests may be stolen to another worker: each checks it all
        result.assert_outcomes(failed=2)
        return
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*PASSED*TestBoth::test_forward_shape[[]auxnet[]]*"])
