"""acme-vision's CI gate: pytest-zoo's conformance checks, applied to acme-vision's own code."""

from __future__ import annotations

import torch
from acme_vision import build_backbone, build_classifier, freeze, freeze_body, swap_head, with_mlp_head
from hypothesis import given, settings
from torch import nn

from pytest_zoo import NormPolicy, ZooConformance
from pytest_zoo import strategies as zs
from pytest_zoo.strategies import ModelStrategies


class TestAcmeModels(ZooConformance):
    """The torchvision backbones acme-vision supports, through acme-vision's hooks."""

    models = ("resnet18", "mobilenet_v3_small", "googlenet")

    def build_model(self, name: str) -> nn.Module:
        return build_backbone(name)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        return swap_head(model, num_classes)

    def freeze_backbone(self, model: nn.Module) -> None:
        freeze(model)

    def test_build_classifier(
        self, zoo_model_name: str, zoo_hypothesis_settings: settings, zoo_strategies: ModelStrategies
    ) -> None:
        """A check of our own: the entry point training scripts call gives (batch, classes) logits."""
        model = build_classifier(zoo_model_name, 1).eval()

        @zoo_hypothesis_settings
        @given(n=zs.num_classes(max_value=100), shape=zoo_strategies.input_shapes())
        def check(n: int, shape: tuple[int, int, int, int]) -> None:
            swap_head(model, n)
            with torch.no_grad():
                assert model(torch.randn(shape)).shape == (shape[0], n)

        check()


class TestAcmeNet(TestAcmeModels):
    """acme-vision's own architecture: no torchvision builder to compare with, so the checks
    derive the head from the hooks themselves (the parameters whose shape follows num_classes)."""

    models = ("acmenet",)
    builder_oracle = False


class TestAcmeFineTuning(ZooConformance):
    """acme-vision's fine-tuning recipe: a functional swap to a multi-layer head, and a freeze that
    keeps the body's BatchNorm weights training, declared as the recipe's normalisation policy."""

    models = ("resnet18", "resnet34")
    norm_policy = NormPolicy(affine="trainable")

    def build_model(self, name: str) -> nn.Module:
        return build_backbone(name)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        return with_mlp_head(model, num_classes)

    def freeze_backbone(self, model: nn.Module) -> None:
        freeze_body(model)
