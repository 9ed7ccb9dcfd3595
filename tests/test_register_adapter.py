"""Custom families: a model class pytest-zoo has never seen, before and after ``register_adapter``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_zoo import NoAdapterError, freeze_backbone, register_adapter, replace_head, unregister_adapter

MODEL_SOURCE = '''
import torch
from torch import nn


class TwoHeadNet(nn.Module):
    """A model of the user's own: a main head and, in train mode, an auxiliary one."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(8, num_classes)
        self.aux = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, num_classes))

    def forward(self, x):
        features = self.body(x)
        if self.training:
            return {"out": self.head(features), "aux": self.aux(features)}
        return self.head(features)
'''

GATE_SOURCE = """
from pytest_zoo import ZooConformance


class TestTwoHeadNet(ZooConformance):
    models = ("twoheadnet",)
    builder_oracle = False

    def build_model(self, name):
        return TwoHeadNet()
"""


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture
def tinynet_registered() -> object:
    register_adapter(TinyNet, heads=["classifier"])
    yield
    unregister_adapter(TinyNet)


def test_unknown_class_error_says_how_to_register() -> None:
    model = TinyNet()
    with pytest.raises(NoAdapterError) as info:
        replace_head(model, 3)
    message = str(info.value)
    assert "does not know where the head of tests.test_register_adapter.TinyNet is" in message or (
        "does not know where the head of test_register_adapter.TinyNet is" in message
    )
    assert "pytest_zoo.register_adapter(TinyNet, heads=['<dotted.path.to.head>'])" in message
    assert "candidates: features.0, classifier" in message
    assert model.classifier.out_features == 10, "a failed replace_head must leave the model untouched"
    with pytest.raises(NoAdapterError):
        freeze_backbone(model)
    assert all(p.requires_grad for p in model.parameters()), "a failed freeze must leave the model untouched"


def test_registered_class_swaps_and_freezes(tinynet_registered: object) -> None:
    model = replace_head(TinyNet(), 3)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    counts = freeze_backbone(model)
    assert counts.trainable == 4 * 3 + 3
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {
        "classifier.weight",
        "classifier.bias",
    }


def test_registering_twice_is_an_error(tinynet_registered: object) -> None:
    with pytest.raises(ValueError, match=r"already registered .*Pass replace=True"):
        register_adapter(TinyNet, heads=["features.0"])
    assert register_adapter(TinyNet, heads=["classifier"], replace=True).heads == ("classifier",)


def test_strict_gate_fails_before_registering_and_passes_after(pytester: pytest.Pytester) -> None:
    """One session, two modules with the same user model: only the registered one passes.

    Unregistered, the kit falls back to a head it infers from the model (the last Linear/Conv); with
    no torchvision builder that guess is unverified, so a strict gate turns the warning into an
    error, and the message says which ``register_adapter`` call pins the head.
    """
    pytester.makepyfile(
        test_unregistered=MODEL_SOURCE + GATE_SOURCE,
        test_registered=MODEL_SOURCE
        + "\nfrom pytest_zoo import register_adapter\n"
        + 'register_adapter(TwoHeadNet, heads=["head"], aux_heads=["aux.2"])\n'
        + GATE_SOURCE,
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "--zoo-examples=2", "-W", "error::pytest_zoo.HeadInferredWarning"
    )
    checks = [
        "test_head_matches_builder",
        "test_forward_shape",
        "test_freeze_counts",
        "test_gradients_reach_head_only",
        "test_replace_head_keeps_dtype_and_device",
        "test_training_step",
        "test_finite_outputs_and_backward",
        "test_state_dict_round_trip",
        "test_batch_equivalence",
        "test_channels_last_and_autocast",
    ]
    for check in checks:
        result.stdout.fnmatch_lines([f"test_registered.py::TestTwoHeadNet::{check}[[]twoheadnet[]]*PASSED*"])
        result.stdout.fnmatch_lines(
            [f"test_unregistered.py::TestTwoHeadNet::{check}[[]twoheadnet[]]*FAILED*"]
        )
    result.stdout.fnmatch_lines(
        [
            "*HeadInferredWarning: twoheadnet: head inferred for test_unregistered.TwoHeadNet: *"
            "unverified*pin it: pytest_zoo.register_adapter(TwoHeadNet, heads=*",
        ]
    )
    # Each class skips test_default_weights_metadata; test_pretrained_weights_reach_model skips in the
    # registered class (built from scratch) and fails in the unregistered one, like every check there.
    result.assert_outcomes(passed=len(checks), failed=len(checks) + 1, skipped=3)


BILINEAR_GATE = '''
from torch import nn

from pytest_zoo import ZooConformance


class BiNet(nn.Module):
    """No Linear or Conv layer at all: nothing for the kit to infer a head from."""

    def __init__(self):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Bilinear(3, 3, 10)

    def forward(self, x):
        features = self.pool(x)
        return self.head(features, features)


class TestBiNet(ZooConformance):
    models = ("binet",)
    builder_oracle = False

    def build_model(self, name):
        return BiNet()
'''


def test_user_gate_fails_rather_than_skips_a_model_with_no_head_to_find(pytester: pytest.Pytester) -> None:
    """The shipped suite skips a model it cannot place a head in; a user's gate listed it on purpose."""
    pytester.makepyfile(test_binet=BILINEAR_GATE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--zoo-examples=1", "-k", "freeze_counts"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ConformanceFailure: binet: pytest-zoo does not know where the head of test_binet.BiNet is.*",
            "*pytest_zoo.register_adapter(BiNet, heads=[[]'<dotted.path.to.head>'[]])*",
            "*(inference: cannot infer the head of test_binet.BiNet: it has no Linear or Conv layer.*",
        ]
    )
