"""The Python API, used without pytest: replace_head, freeze_backbone, count_parameters, adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pytest_zoo
from pytest_zoo import (
    NoAdapterError,
    ParameterCounts,
    count_parameters,
    freeze_backbone,
    register_adapter,
    replace_head,
    unregister_adapter,
)
from pytest_zoo.models.building import build_model


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return build_model("resnet18")


def test_replace_head_swaps_fc_in_place(resnet18: nn.Module) -> None:
    returned = replace_head(resnet18, 7)
    assert returned is resnet18
    assert isinstance(resnet18.fc, nn.Linear)
    assert (resnet18.fc.in_features, resnet18.fc.out_features) == (512, 7)
    assert resnet18(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_freeze_backbone_matches_the_seed_formula(resnet18: nn.Module) -> None:
    replace_head(resnet18, 10)
    counts = freeze_backbone(resnet18)
    head = sum(p.numel() for p in resnet18.fc.parameters())
    assert counts == ParameterCounts(trainable=head, frozen=11_176_512)
    assert counts.trainable == 5_130 and counts.total == 11_181_642
    assert count_parameters(resnet18) == counts
    assert str(counts) == "5,130 trainable / 11,176,512 frozen / 11,181,642 total"


def test_new_head_keeps_device_and_dtype() -> None:
    model = build_model("mobilenet_v3_small").to(torch.float64)
    replace_head(model, 3)
    assert model.classifier[3].weight.dtype == torch.float64
    meta = replace_head(build_model("mobilenet_v3_small", structural=True), 3)
    assert meta.classifier[3].weight.device.type == "meta"


def test_aux_heads_replaced_when_present_and_ignored_when_absent() -> None:
    with_aux = replace_head(build_model("googlenet", structural=True), 5)
    assert [with_aux.get_submodule(p).out_features for p in ("fc", "aux1.fc2", "aux2.fc2")] == [5, 5, 5]
    without = replace_head(build_model("googlenet", structural=True, aux_logits=False), 5)
    assert without.aux1 is None and without.fc.out_features == 5
    inception = replace_head(build_model("inception_v3", structural=True), 4)
    assert inception.AuxLogits.fc.out_features == 4


def test_squeezenet_conv_head_and_stale_attribute() -> None:
    model = replace_head(build_model("squeezenet1_1"), 6)
    assert isinstance(model.classifier[1], nn.Conv2d) and model.classifier[1].out_channels == 6
    assert model.num_classes == 6
    assert model(torch.randn(1, 3, 17, 17)).shape == (1, 6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_replace_head_rejects_bad_class_counts(bad: object) -> None:
    model = build_model("resnet18", structural=True)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        replace_head(model, bad)  # type: ignore[arg-type]
    assert model.fc.out_features == 1000


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.flatten(self.body(x)))


def test_unknown_model_raises_lookup_error_that_shows_how_to_register() -> None:
    model = TinyNet()
    with pytest.raises(LookupError) as info:
        freeze_backbone(model)
    assert isinstance(info.value, NoAdapterError)
    message = str(info.value)
    assert "test_api.TinyNet" in message
    assert "pytest_zoo.register_adapter(TinyNet, heads=['<dotted.path.to.head>'])" in message
    assert "logits" in message  # the candidate layers
    assert all(p.requires_grad for p in model.parameters()), "a failed freeze must leave the model untouched"


def test_register_adapter_teaches_a_new_family() -> None:
    register_adapter(TinyNet, heads=["logits"])
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_adapter(TinyNet, heads=["logits"])
        model = replace_head(TinyNet(), 4)
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
        counts = freeze_backbone(model)
        assert counts.trainable == 8 * 4 + 4
        assert counts.frozen == sum(p.numel() for p in model.body.parameters())
    finally:
        unregister_adapter(TinyNet)


def test_adapter_pointing_at_a_missing_module_is_reported() -> None:
    register_adapter(TinyNet, heads=["head"], replace=True)
    try:
        with pytest.raises(NoAdapterError, match="no module at 'head'"):
            replace_head(TinyNet(), 3)
    finally:
        unregister_adapter(TinyNet)


def test_norm_stats_freeze_keeps_running_statistics_in_train_mode() -> None:
    model = build_model("resnet18")
    replace_head(model, 3)
    freeze_backbone(model, norm_stats="freeze")
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, model.bn1.running_mean)

    updating = build_model("resnet18")
    freeze_backbone(replace_head(updating, 3))
    updating.train()
    updating(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, updating.bn1.running_mean), "default keeps PyTorch's behaviour"


def test_lazy_exports_cover_all_names() -> None:
    for name in pytest_zoo.__all__:
        assert getattr(pytest_zoo, name) is not None
    with pytest.raises(AttributeError):
        pytest_zoo.does_not_exist  # noqa: B018


def test_the_old_module_paths_still_import() -> None:
    """The README's and users' paths from before the package tree: each is the moved module's API."""
    from pytest_zoo import snapshot, strategies, weights
    from pytest_zoo.building import builder_kwargs
    from pytest_zoo.checks import ConformanceFailure, ZooConformance
    from pytest_zoo.conformance import checks
    from pytest_zoo.deployment import DEPLOY_EXCEPTIONS
    from pytest_zoo.models.building import builder_kwargs as canonical
    from pytest_zoo.netguard import NetworkAccessError, network_guard

    assert builder_kwargs is canonical
    assert (ZooConformance, ConformanceFailure) == (checks.ZooConformance, checks.ConformanceFailure)
    assert DEPLOY_EXCEPTIONS and issubclass(NetworkAccessError, Exception) and callable(network_guard)
    assert callable(strategies.num_classes) and callable(snapshot.format_changes)
    assert weights.DECLARED_EXCEPTIONS is not None and callable(weights.resolve_weights_id)
