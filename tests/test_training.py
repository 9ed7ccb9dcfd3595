"""Unit tests of the value-check bodies (pytest_zoo.conformance.training, .deployment) on real models.

Each check has a correct user implementation that passes and the broken ones issue 12 names, which
must fail with a precise problem. Small models, small inputs: the file runs in about a minute.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from pytest_zoo.conformance import task_io as tasks
from pytest_zoo.conformance.deployment import (
    DEPLOY_EXCEPTIONS,
    METHODS,
    EagerForward,
    batch_equivalence,
    channels_last_equivalence,
    deploy_exception,
    deployability,
    precision_forward,
    state_dict_round_trip,
)
from pytest_zoo.conformance.training import (
    CheckReport,
    Inputs,
    declared_without_grad,
    finite_outputs,
    full_backward,
    named_leaves,
    nonfinite_state,
    training_step,
)
from pytest_zoo.models import building, freezing, heads
from pytest_zoo.models.building import uninitialised_as_nan

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _quiet_and_seeded() -> Iterator[None]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def build(name: str, n: int | None = 5) -> nn.Module:
    model = building.build_model(name)
    return heads.replace_head(model, n) if n is not None else model


def inputs(
    name: str, model: nn.Module, *, batch: int = 2, size: int = 32, train: bool = False, n: int = 5
) -> Inputs:
    spec_frames = 2 if tasks.task_io(name).task == "video" else None
    example = tasks.Example(batch=batch, size=(size, size), frames=spec_frames, seed=1)
    return tasks.task_io(name).inputs(model, example, n, CPU, train=train)


def score(name: str) -> tasks.TaskIO:
    return tasks.task_io(name)


def backbone_norms(model: nn.Module) -> list[str]:
    paths = heads.get_adapter(model).present_heads(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not any(name == p or name.startswith(p + ".") for p in paths)
    ]


def only_problem(report: CheckReport, *fragments: str) -> str:
    assert not report.ok, report
    text = " | ".join(report.problems)
    for fragment in fragments:
        assert fragment in text, text
    return text


# -- training step ---------------------------------------------------------------------------------


def frozen_resnet(norm_stats: freezing.NormStats = "frozen") -> nn.Module:
    model = build("resnet18")
    freezing.freeze_backbone(model, norm_stats=norm_stats)
    return model


def step(model: nn.Module, *, frozen_stats: bool = True, must_train: set[str] | None = None) -> CheckReport:
    return training_step(
        model,
        inputs("resnet18", model, train=True),
        tasks.task_io("resnet18").score,
        must_train=must_train if must_train is not None else set(heads.head_parameter_names(model)),
        frozen_norm_modules=backbone_norms(model) if frozen_stats else (),
    )


def test_training_step_passes_for_a_frozen_backbone_with_frozen_statistics() -> None:
    report = step(frozen_resnet("frozen"))
    assert report.ok, report.problems
    assert report.found == {"trained": 2, "frozen norm layers moved": 0}


def test_training_step_catches_statistics_that_move_under_a_frozen_policy() -> None:
    only_problem(
        step(frozen_resnet("update")), "running statistics moved in 20 backbone normalisation layers"
    )


def test_training_step_catches_a_freeze_that_model_train_undoes() -> None:
    model = build("resnet18")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("fc."))
    for path in backbone_norms(model):  # frozen once, by eval(); the user's training loop calls train()
        model.get_submodule(path).eval()
    assert step(model, frozen_stats=False).ok  # under a policy that lets statistics update, that is fine
    only_problem(step(model), "running statistics moved", "model.train() put them back in train mode")


def test_training_step_catches_a_backbone_left_trainable_and_a_frozen_head() -> None:
    unfrozen = build("resnet18")
    only_problem(step(unfrozen, frozen_stats=False), "that must stay frozen changed", "conv1.weight")
    frozen_head = frozen_resnet()
    frozen_head.fc.requires_grad_(False)
    only_problem(
        step(frozen_head),
        "2 parameters (fc.bias, fc.weight) that must train did not change",
        "requires_grad=False after model.train()",
    )


class ZeroGradientBias(nn.Module):
    """A layer whose gradient is exactly zero for every input: it starts at zero and feeds a ReLU,
    whose derivative at 0 is 0 (as a BatchNorm bias feeding another BatchNorm through linear
    layers gets an exactly zero gradient in mobilenet_v3_small). It trains; it just cannot move in
    one step. ``unused`` is built and never called."""

    def __init__(self) -> None:
        super().__init__()
        self.dead = nn.Linear(4, 4)
        nn.init.zeros_(self.dead.weight)
        nn.init.zeros_(self.dead.bias)
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x + torch.relu(self.dead(x)))
        return y


def test_a_parameter_with_an_exactly_zero_gradient_trains_and_an_unused_one_is_named() -> None:
    model = ZeroGradientBias()
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    used = {k for k, _ in model.named_parameters() if not k.startswith("unused.")}
    model.unused.requires_grad_(False)
    report = training_step(model, ((x,), {}), lambda y: y.square().mean(), must_train=used)  # type: ignore[union-attr]
    assert report.ok, report.problems
    assert "trained with an exactly zero update for this input: 2 (dead.bias, dead.weight)" in report.details
    model.unused.requires_grad_(True)
    only_problem(
        training_step(model, ((x,), {}), lambda y: y.square().mean(), must_train=used | {"unused.bias"}),  # type: ignore[union-attr]
        "1 parameters (unused.bias) that must train got no gradient at all: the forward does not use them",
    )
    model.unused.requires_grad_(False)
    frozen = used - {"dead.bias"}
    only_problem(
        training_step(model, ((x,), {}), lambda y: y.square().mean(), must_train=frozen),  # type: ignore[union-attr]
        "1 parameters (dead.bias) that must stay frozen changed in one SGD step over model.parameters(), "
        "or got a .grad",
    )


def test_training_step_accepts_a_trainable_affine_policy_when_declared() -> None:
    model = build("mobilenet_v3_small")
    freezing.freeze_backbone(model, norm_stats="frozen")
    affine = {f"{p}.{k}" for p in backbone_norms(model) for k in ("weight", "bias")}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(parameter.requires_grad or name in affine)
    report = training_step(
        model,
        inputs("mobilenet_v3_small", model, train=True),
        tasks.task_io("mobilenet_v3_small").score,
        must_train=set(heads.head_parameter_names(model)) | affine,
        frozen_norm_modules=backbone_norms(model),
    )
    assert report.ok, report.problems


def test_training_step_on_a_detector_with_targets() -> None:
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    model = build(name, 3)
    freezing.freeze_backbone(model, norm_stats="frozen")
    report = training_step(
        model,
        inputs(name, model, size=64, train=True, n=3),
        tasks.task_io(name).score,
        # model.backbone is the detector's backbone: the RPN and ROI heads train with the new head.
        must_train={k for k, _ in model.named_parameters() if not k.startswith("backbone.")},
        frozen_norm_modules=[k for k in backbone_norms(model) if k.startswith("backbone.")],
    )
    assert report.ok, report.problems


# -- finite outputs, full backward, non-finite state -------------------------------------------------


def test_named_leaves_names_every_kind_of_output() -> None:
    outputs = ({"out": torch.zeros(1)}, [{"boxes": torch.zeros(2)}], torch.zeros(3), None)
    assert sorted(named_leaves(outputs)) == ["[0].out", "[1][0].boxes", "[2]"]
    assert list(named_leaves(torch.zeros(1))) == ["output"]


def test_finite_outputs_in_both_modes_across_tasks() -> None:
    googlenet = build("googlenet")
    assert finite_outputs(googlenet, inputs("googlenet", googlenet, train=True), train=True).ok
    lraspp = build("lraspp_mobilenet_v3_large")
    assert finite_outputs(lraspp, inputs("lraspp_mobilenet_v3_large", lraspp), train=False).ok
    detector = build("fasterrcnn_mobilenet_v3_large_320_fpn", 3)
    for train in (False, True):
        args = inputs("fasterrcnn_mobilenet_v3_large_320_fpn", detector, size=64, train=train, n=3)
        assert finite_outputs(detector, args, train=train).ok


def test_finite_outputs_names_the_non_finite_aux_output() -> None:
    model = build("googlenet")
    with torch.no_grad():
        model.get_parameter("aux1.fc2.weight")[0, 0] = float("nan")
    # torchvision 0.20 and older return aux1's logits as aux_logits2 (GoogLeNet.forward unpacks
    # _forward's (x, aux2, aux1) as (x, aux1, aux2)): the kit names the field the output has.
    with torch.no_grad():
        returned = model.train()(*inputs("googlenet", model, train=True)[0])
    field = next(name for name in ("aux_logits1", "aux_logits2") if getattr(returned, name).isnan().any())
    report = finite_outputs(model, inputs("googlenet", model, train=True), train=True)
    only_problem(report, f"train-mode output {field!r} is not finite: 2 NaN, 0 inf of 10 values")
    assert report.found == {"non-finite outputs": [field]}
    assert finite_outputs(model, inputs("googlenet", model), train=False).ok  # eval drops the aux heads


@pytest.mark.parametrize("name", ["googlenet", "r3d_18"])
def test_full_backward_reaches_every_parameter(name: str) -> None:
    model = build(name)
    report = full_backward(
        model, inputs(name, model, train=True, size=16 if name == "r3d_18" else 32), tasks.task_io(name).score
    )
    assert report.ok, report.problems


class TwoLayerHead(nn.Module):
    """A head that builds a layer and never calls it."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, features)
        self.out = nn.Linear(features, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.out(x)
        return y


def test_no_torchvision_builder_declares_parameters_without_gradient() -> None:
    assert declared_without_grad("googlenet") == {} == declared_without_grad("maskrcnn_resnet50_fpn")


def test_full_backward_names_unused_parameters_and_stale_declarations() -> None:
    model = build("resnet18")
    model.fc = TwoLayerHead(512, 5)
    args, io = inputs("resnet18", model, train=True), tasks.task_io("resnet18")
    only_problem(
        full_backward(model, args, io.score),
        "2 parameters (fc.hidden.bias, fc.hidden.weight) got no gradient",
    )
    declared = {"fc.hidden.weight": "unused", "fc.hidden.bias": "unused"}
    assert full_backward(model, args, io.score, declared_without_grad=declared).ok
    stale = {"fc.out.weight": "wrongly declared"}
    only_problem(full_backward(model, args, io.score, declared_without_grad=stale), "stale declaration")


class EmptyLinear(nn.Module):
    """A head whose weights come from torch.empty and are never initialised."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, features))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def test_a_head_from_uninitialised_memory_is_caught_deterministically() -> None:
    model = build("resnet18", None)
    with uninitialised_as_nan():
        model.fc = EmptyLinear(512, 5)
    assert not torch.are_deterministic_algorithms_enabled()  # settings restored
    report = nonfinite_state(model)
    only_problem(report, "1 parameters/buffers hold NaN or inf, in 1 layers (fc)")
    assert report.found == {"non-finite tensors": ["fc.weight"]}
    only_problem(
        finite_outputs(model, inputs("resnet18", model), train=False), "output 'output' is not finite"
    )
    correct = build("resnet18", None)
    with uninitialised_as_nan():
        heads.replace_head(correct, 5)
    assert nonfinite_state(correct).ok


def test_partial_weights_that_leave_nan_layers_are_reported() -> None:
    """VGG16 IMAGENET1K_FEATURES ships a NaN classifier: swapping only the last layer leaves two NaN."""
    model = building.build_model("vgg11", structural=True).to_empty(device=CPU)
    for tensor in model.state_dict().values():
        tensor.fill_(1e-3)  # cheaper than VGG's 133M-parameter random init; values are beside the point
    state = model.state_dict()
    for key in ("classifier.0.weight", "classifier.3.weight", "classifier.6.weight"):
        state[key] = torch.full_like(state[key], float("nan"))
    model.load_state_dict(state)
    heads.replace_head(model, 5)
    report = nonfinite_state(model)
    only_problem(report, "in 2 layers (classifier.0, classifier.3)")
    only_problem(finite_outputs(model, inputs("vgg11", model), train=False), "'output' is not finite: 10 NaN")


# -- state dict round trip -----------------------------------------------------------------------------


class ListHead(nn.Module):
    """A head kept in a plain Python list: invisible to state_dict."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.layers = [nn.Linear(features, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.layers[0](x)
        return y


def test_state_dict_round_trip_passes_and_catches_a_head_not_kept_in_the_state_dict() -> None:
    model = build("resnet18")
    args = inputs("resnet18", model)
    assert state_dict_round_trip(model, lambda: build("resnet18"), args).ok

    def broken() -> nn.Module:
        m = build("resnet18", None)
        m.fc = ListHead(512, 5)
        return m

    only_problem(
        state_dict_round_trip(broken(), broken, args),
        "the reloaded model: output 'output' differs from eager",
        "not in state_dict: a head kept in a plain list",
    )


def test_state_dict_round_trip_names_a_wrapper_prefix() -> None:
    model = build("resnet18")
    args = inputs("resnet18", model)
    wrapped = nn.DataParallel(model)
    only_problem(state_dict_round_trip(wrapped, lambda: build("resnet18"), args), "prefix 'module.'")
    compiled = torch.compile(model, backend="eager")
    report = state_dict_round_trip(compiled, lambda: build("resnet18"), args)  # type: ignore[arg-type]
    only_problem(report, "prefix '_orig_mod.'", "save model._orig_mod.state_dict()")


# -- batch equivalence --------------------------------------------------------------------------------


class BatchCentred(nn.Module):
    """A head that subtracts the batch mean: each sample's logits depend on the others."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x - x.mean(dim=0, keepdim=True))
        return y


@pytest.mark.parametrize("name", ["resnet18", "lraspp_mobilenet_v3_large", "r3d_18"])
def test_batch_equivalence_holds_for_the_zoo(name: str) -> None:
    model = build(name)
    (x,), _ = inputs(name, model, batch=3, size=16 if name == "r3d_18" else 32)
    assert batch_equivalence(model, x).ok


def test_batch_equivalence_catches_a_head_that_mixes_samples() -> None:
    model = build("resnet18", None)
    model.fc = BatchCentred(512, 5)
    (x,), _ = inputs("resnet18", model, batch=3)
    only_problem(
        batch_equivalence(model, x), "sample 0 within the batch: output 'output' differs", "mixes samples"
    )


# -- deployability ------------------------------------------------------------------------------------


class GatedHead(nn.Module):
    """Data-dependent Python control flow: which layer runs depends on the values."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.small = nn.Linear(features, n)
        self.large = nn.Linear(features, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.large(x) if x.abs().mean() > 1.0 else self.small(x)
        return y


@pytest.mark.parametrize("method", METHODS)
def test_deployability_of_a_resnet(method: str) -> None:
    model = build("resnet18")
    report = deployability(model, inputs("resnet18", model, batch=1), method)  # type: ignore[arg-type]
    assert report.ok, report.problems


def test_a_head_with_data_dependent_control_flow_cannot_export_or_trace() -> None:
    model = build("resnet18", None)
    model.fc = GatedHead(512, 5)
    args = inputs("resnet18", model, batch=1)
    only_problem(deployability(model, args, "export"), "export raised")
    only_problem(deployability(model, args, "fx"), "fx raised TraceError")
    assert deployability(model, args, "compile").ok  # a graph break, not an error


def test_declared_deploy_exceptions_are_well_formed() -> None:
    import torchvision

    names = set(torchvision.models.list_models())
    for declared in DEPLOY_EXCEPTIONS:
        assert set(declared.methods) <= set(METHODS) and declared.reason
        assert any(n for n in names if declared.covers(n, declared.methods[0])), declared
    assert deploy_exception("resnet18", "export") is None


def test_a_declared_deploy_exception_fails_as_declared() -> None:
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    model = build(name, 3)
    declared = deploy_exception(name, "fx")
    assert declared is not None
    report = deployability(model, inputs(name, model, batch=1, size=64, n=3), "fx")
    only_problem(report, declared.error)
    assert deploy_exception(name, "script") is None


# -- memory format and precision ---------------------------------------------------------------------


class ViewHead(nn.Module):
    """A functional head swap that flattens a 2x2 feature map with .view."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(features * 4, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        y: torch.Tensor = self.fc(x.view(x.size(0), -1))
        return y


def test_channels_last_passes_and_catches_a_view_head() -> None:
    model = build("resnet18")
    assert channels_last_equivalence(model, inputs("resnet18", model)).ok
    assert next(model.parameters()).is_contiguous()  # restored
    body = nn.Sequential(*list(build("resnet18", None).children())[:-2])
    broken = nn.Sequential(body, ViewHead(512, 5))
    only_problem(
        channels_last_equivalence(broken, inputs("resnet18", broken, size=64)),
        "view size is not compatible",
        "use .flatten(1), .reshape or adaptive_avg_pool2d",
    )


class HierarchicalHead(nn.Module):
    """Fine logits summed into coarse classes in a float32 buffer: breaks under autocast."""

    def __init__(self, features: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, 2 * n)
        self.coarse: torch.Tensor
        self.register_buffer("coarse", torch.arange(2 * n) // 2)
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fc(x)
        out = torch.zeros(x.shape[0], self.n, device=x.device)
        return out.scatter_add_(1, self.coarse.expand(x.shape[0], -1), fine)


def test_precision_forward_under_autocast() -> None:
    model = build("resnet18")
    report = precision_forward(model, inputs("resnet18", model))
    assert report.ok, report.problems
    assert report.found == {"output": (2, 5)}
    model.fc = HierarchicalHead(512, 5)
    only_problem(precision_forward(model, inputs("resnet18", model)), "under autocast torch.bfloat16 raised")


def test_autocast_takes_its_float32_shapes_from_the_channels_last_reference() -> None:
    model = build("squeezenet1_1", None)
    calls: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: calls.append(torch.is_autocast_cpu_enabled()))
    args = inputs("squeezenet1_1", model)
    eager = EagerForward(model, args)
    assert channels_last_equivalence(model, args, eager=eager).ok
    report = precision_forward(model, args, eager=eager)
    assert report.ok and report.expected == report.found == {"output": (2, 1000)}, report
    assert calls == [False, False, True]  # contiguous, channels_last, autocast: one eager forward
    with pytest.raises(ValueError, match="eager is an eval forward in float32"):
        precision_forward(model, args, eager=eager, train=True)


def test_precision_forward_catches_a_float32_head_on_a_converted_model() -> None:
    model = build("squeezenet1_1", None).to(torch.bfloat16)
    heads.replace_head(model, 5)  # the kit's replace_head keeps the replaced layer's dtype
    assert precision_forward(model, inputs("squeezenet1_1", model), autocast=False).ok
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, nn.Sequential)
    classifier[1] = nn.Conv2d(512, 5, 1)  # float32, as nn.Conv2d builds by default
    only_problem(
        precision_forward(model, inputs("squeezenet1_1", model), autocast=False),
        "forward in torch.bfloat16 raised",
    )


# -- meta device -------------------------------------------------------------------------------------


def test_every_check_skips_on_the_meta_device_with_its_reason() -> None:
    model = building.build_model("resnet18", structural=True)
    x = torch.empty(2, 3, 32, 32, device="meta")
    args: Inputs = ((x,), {})
    io = tasks.task_io("resnet18")
    reports = [
        training_step(model, args, io.score, must_train=set()),
        finite_outputs(model, args, train=False),
        full_backward(model, args, io.score),
        nonfinite_state(model),
        state_dict_round_trip(model, lambda: model, args),
        batch_equivalence(model, x),
        deployability(model, args, "export"),
        channels_last_equivalence(model, args),
        precision_forward(model, args),
    ]
    for report in reports:
        assert not report.ok and not report.problems
        assert report.skipped is not None and "needs tensor values" in report.skipped, report
