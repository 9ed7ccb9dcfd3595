"""The whole zoo, every task: family rows, head-matches-builder for all 121 builders, I/O, offline builds.

The head property runs on structural (meta) builds, so it covers every builder in the default run;
the forward checks of each task run once end to end, on the cheapest model of the task, through a
real pytest session.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torchvision.models import get_model, list_models

from pytest_zoo.conformance import converted
from pytest_zoo.conformance import task_io as tasks
from pytest_zoo.guards.network import NetworkAccessError, network_guard
from pytest_zoo.models import heads
from pytest_zoo.models.building import build_model, builder_kwargs
from pytest_zoo.zoo.families import FAMILIES, TASKS, find_family, task_of

ALL = list_models()


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_builder_has_a_row_of_the_right_task() -> None:
    """121 builders, none without a row; the tasks split as torchvision's modules do."""
    assert len(ALL) == 121
    assert [n for n in ALL if find_family(n) is None] == []
    counts = Counter(task_of(n) for n in ALL)
    assert counts == {
        "classification": 80,
        "detection": 12,
        "quantized": 12,
        "video": 9,
        "segmentation": 6,
        "optical_flow": 2,
    }
    import torchvision.models as tvm

    by_module = {
        "detection": tvm.detection,
        "segmentation": tvm.segmentation,
        "video": tvm.video,
        "optical_flow": tvm.optical_flow,
        "quantized": tvm.quantization,
    }
    for task, module in by_module.items():
        assert {n for n in ALL if task_of(n) == task} == set(list_models(module=module)), task
    assert set(counts) == set(TASKS)


@pytest.mark.parametrize("name", ALL)
def test_head_matches_builder_offline(name: str) -> None:
    """``replace_head(build(name), n)`` has the state_dict shapes of ``builder(num_classes=n)``, offline.

    Structural builds (meta device), so every builder fits the default run. The class count differs
    per builder and is never the default, so a head that ignores it (or a box regressor that forgets
    its 4 coordinates per class) shows. A builder that refuses ``num_classes`` must be one whose
    adapter says it has no class head. The network guard proves no build reaches for weights.
    """
    n = 3 + sum(map(ord, name)) % 97
    with network_guard() as guard:
        model = build_model(name, structural=True)
        try:
            expected = build_model(name, num_classes=n, structural=True)
        except TypeError:
            with pytest.raises(heads.NoHeadError):
                heads.replace_head(model, n)
            assert task_of(name) == "optical_flow"
            return
        model = heads.replace_head(model, n)
    assert guard.attempts == []
    found, wanted = _shapes(model), _shapes(expected)
    diff = {
        k: (found.get(k), wanted.get(k))
        for k in found.keys() | wanted.keys()
        if found.get(k) != wanted.get(k)
    }
    assert diff == {}, f"{name}: (replace_head, builder) shapes differ"


def test_offline_kwargs_are_what_keeps_detection_and_segmentation_offline() -> None:
    """The control: without the kit's ``weights_backbone=None`` the same builder reaches for the network."""
    assert builder_kwargs("fcn_resnet50")["weights_backbone"] is None
    assert "weights_backbone" not in builder_kwargs("resnet18")
    with network_guard() as guard, pytest.raises(NetworkAccessError, match=r"download\.pytorch\.org"):
        get_model("fcn_resnet50", weights=None)
    assert guard.attempts


def test_raft_says_it_has_no_head() -> None:
    """RAFT: the adapter declares no class head; replace_head and freeze_backbone refuse, model untouched."""
    from pytest_zoo import freeze_backbone

    model = build_model("raft_small", structural=True)
    adapter = heads.find_adapter(model)
    assert adapter is not None and adapter.heads == () and "no class head" in adapter.no_head
    with pytest.raises(heads.NoHeadError, match=r"RAFT has no class head.*predicts flow"):
        heads.replace_head(model, 10)
    with pytest.raises(heads.NoHeadError):
        freeze_backbone(model)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="num_classes"):
        build_model("raft_small", num_classes=3, structural=True)


def test_ssd_and_ssdlite_share_a_class_but_not_a_head_layout() -> None:
    """Both are ``SSD``; each gets the adapter whose head paths fit it, with its anchors per level."""
    ssd = heads.find_adapter(build_model("ssd300_vgg16", structural=True))
    lite = heads.find_adapter(build_model("ssdlite320_mobilenet_v3_large", structural=True))
    assert ssd is not None and lite is not None
    assert ssd.source == "family 'ssd'" and lite.source == "family 'ssdlite'"
    assert [ssd.multiple(p) for p in ssd.heads] == [4, 6, 6, 6, 4, 4]


def test_quantized_rows_mirror_their_float_families() -> None:
    for family in FAMILIES:
        if family.task != "quantized":
            continue
        base = find_family(family.builders[0].removeprefix("quantized_"))
        assert base is not None and (family.heads, family.inputs) == (base.heads, base.inputs), family.name
        assert family.build_kwargs["quantize"] is False


def test_converted_quantized_head_is_replaced_like_the_float_one() -> None:
    """The converted model's head is a quantized Linear; replacing it keeps the float builder's shapes."""
    model = build_model("quantized_shufflenet_v2_x0_5", quantize=True)
    expected = {"fc.weight": (7, 1024), "fc.bias": (7,)}
    example = tasks.Example(2, (64, 64), None, 0)
    head, output = converted.converted_quantized_problems(model, 7, example, expected, heads.replace_head)
    assert head.ok and output.ok, (head, output)
    assert (head.found, output.found) == (expected, {"logits": (2, 7)})


# -- task I/O verdicts: each must be able to fail ---------------------------------------------------


def _detections(k: int, labels: list[int], h: int = 40, w: int = 40) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0]] * k).reshape(k, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.full((k,), 0.5),
    }


def test_detection_verdict_catches_out_of_range_labels_and_missing_images() -> None:
    io = tasks.task_io("fasterrcnn_resnet50_fpn")
    example = tasks.Example(2, (40, 40))
    good = [_detections(2, [1, 4]), _detections(0, [], h=48)]
    assert io.check(good, example, 5, train=False).ok
    bad = io.check([_detections(2, [1, 5]), _detections(0, [])], example, 5, train=False)
    assert not bad.ok and any("outside [0, 5)" in p for p in bad.problems)
    assert not io.check(good[:1], example, 5, train=False).ok  # one dict per image


def test_detection_train_verdict_wants_finite_scalar_losses() -> None:
    io = tasks.task_io("retinanet_resnet50_fpn")
    example = tasks.Example(1, (40, 40))
    assert io.check({"classification": torch.tensor(1.0)}, example, 3, train=True).ok
    assert not io.check({"classification": torch.tensor(float("nan"))}, example, 3, train=True).ok
    assert not io.check({}, example, 3, train=True).ok


def test_detection_targets_lie_inside_their_images() -> None:
    model = build_model("keypointrcnn_resnet50_fpn", structural=True)
    example = tasks.Example(2, (40, 56), seed=7)
    (images, targets), _ = tasks.task_io("keypointrcnn_resnet50_fpn").inputs(
        model, example, 6, torch.device("cpu"), train=True
    )
    assert [tuple(i.shape) for i in images] == [(3, 40, 56), (3, 48, 56)]
    for (_, w), target in zip(example.image_sizes(), targets, strict=True):
        boxes = target["boxes"]
        assert bool((boxes[:, 2:] - boxes[:, :2] >= 4).all()) and float(boxes[:, 2].max()) <= w
        assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) < 6
        assert target["keypoints"].shape[1:] == (17, 3)
        assert bool((target["keypoints"][..., 0] >= boxes[:, None, 0]).all())


def test_segmentation_and_video_and_flow_verdicts() -> None:
    seg = tasks.task_io("fcn_resnet50")
    example = tasks.Example(2, (16, 24))
    assert seg.check({"out": torch.zeros(2, 4, 16, 24)}, example, 4, train=False).ok
    assert not seg.check({"out": torch.zeros(2, 4, 8, 12)}, example, 4, train=False).ok
    assert not seg.check(torch.zeros(2, 4, 16, 24), example, 4, train=False).ok

    video = tasks.task_io("r3d_18")
    s3d = find_family("s3d")
    assert s3d is not None and s3d.inputs.frames == (14, 16)
    assert video.check(torch.zeros(2, 9), tasks.Example(2, (16, 16), 3), 9, train=False).ok

    flow = tasks.task_io("raft_small")
    assert not flow.has_head
    flows = [torch.zeros(1, 2, 128, 136)] * flow.num_flow_updates  # type: ignore[attr-defined]
    assert flow.check(flows, tasks.Example(1, (128, 136)), 0, train=False).ok
    assert not flow.check(flows[:1], tasks.Example(1, (128, 136)), 0, train=False).ok


# -- the suite, end to end, one cheap model per task -------------------------------------------------

CHEAPEST = {
    "optical_flow": "raft_small",
    "segmentation": "lraspp_mobilenet_v3_large",
    "video": "mc3_18",
    "detection": "ssdlite320_mobilenet_v3_large",
    "quantized": "quantized_shufflenet_v2_x0_5",
}


def test_suite_runs_every_task(pytester: pytest.Pytester) -> None:
    """One real session over the cheapest model of each non-classification task: all checks pass."""
    models = ",".join(CHEAPEST.values())
    result = pytester.runpytest_subprocess(
        f"--zoo-models={models}",
        "--zoo-examples=2",
        "-k",
        "TestZoo and not Weights",
        "-v",
        "-p",
        "no:randomly",
    )
    checks = (
        "test_head_matches_builder",
        "test_forward_shape",
        "test_freeze_counts",
        "test_gradients_reach_head_only",
    )
    result.stdout.fnmatch_lines_random([f"*{c}[[]{m}[]] PASSED*" for c in checks for m in CHEAPEST.values()])
    assert result.ret == 0, result.stdout.str()[-3000:]


def test_zoo_tasks_selects_by_task(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(
        "--zoo-tasks=optical-flow", "--zoo-models=raft_small,resnet18", "--collect-only", "-q"
    )
    result.stdout.fnmatch_lines(["*test_forward_shape[[]raft_small[]]*"])
    result.stdout.no_fnmatch_line("*resnet18*")
    assert result.ret == 0

    alone = pytester.runpytest("--zoo-tasks=optical_flow", "--collect-only", "-q")  # every model of the task
    alone.stdout.fnmatch_lines(
        ["*test_forward_shape[[]raft_large[]]*", "*test_forward_shape[[]raft_small[]]*"]
    )
    alone.stdout.no_fnmatch_line("*resnet18*")


def test_zoo_tasks_ini_and_typos(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nzoo_tasks = video\nzoo_models = r3d_18,mc3_18,raft_small\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_forward_shape[[]mc3_18[]]*", "*test_forward_shape[[]r3d_18[]]*"])
    result.stdout.no_fnmatch_line("*raft_small*")

    typo = pytester.runpytest("--zoo-tasks=segmentaton")
    typo.stderr.fnmatch_lines(
        ["*--zoo-tasks='segmentaton'*did you mean 'segmentation'*Valid tasks: classification*"]
    )
    assert typo.ret == pytest.ExitCode.USAGE_ERROR

    empty = pytester.runpytest("--zoo-tasks=video", "--zoo-models=resnet18")
    empty.stderr.fnmatch_lines(["*--zoo-tasks=video leaves no model*classification*"])
    assert empty.ret == pytest.ExitCode.USAGE_ERROR
