"""Weights metadata conformance (issue 4): enumeration, oracles, declared exceptions, offline loading.

The default run sweeps a handful of enums chosen for their traps (GoogLeNet's dropped aux heads,
ViT's image_size from meta, a quantized model, a detector, VGG16's feature-only weights). The
sweep over all 166 enums is opt-in: ``pytest -m zoo_sweep tests/test_weights.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models import list_models

from pytest_zoo import weights as W
from pytest_zoo.guards.network import NetworkAccessError
from pytest_zoo.weights import loading

pytest_plugins = ["pytester"]

QUIET = ["-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", "-W", "ignore::UserWarning"]


def test_every_builder_weights_enum_is_enumerated_with_selectable_ids() -> None:
    cases = W.weights_cases(list_models())
    ids = [case.id for case in cases]
    assert len(cases) == 166
    assert len(set(ids)) == len(ids)
    assert {case.model for case in cases} == set(list_models())
    assert all(re.fullmatch(r"[a-z0-9_]+-[A-Z0-9_]+", i) for i in ids)
    assert "resnet50-IMAGENET1K_V2" in ids
    assert {case.task for case in cases} == set(W.TASK_FIELDS)


def test_weights_ids_resolve_and_bad_ids_say_what_is_valid() -> None:
    case = W.resolve_weights_id("resnet50-IMAGENET1K_V2")
    assert (case.model, case.weights.name, case.task) == ("resnet50", "IMAGENET1K_V2", "classification")
    with pytest.raises(
        LookupError, match=r"resnet50 has no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1, IMAGENET1K_V2"
    ):
        W.resolve_weights_id("resnet50-IMAGENET1K_V9")
    with pytest.raises(LookupError, match=r"expected '<builder>-<WEIGHTS_NAME>'"):
        W.resolve_weights_id("resnet50")


@pytest.mark.parametrize(
    ("weights_id", "attribute", "value"),
    [
        ("googlenet-IMAGENET1K_V1", "aux1", None),  # the builder drops the aux heads after loading
        ("vit_b_16-IMAGENET1K_SWAG_E2E_V1", "image_size", 384),  # image_size comes from meta
        ("vit_h_14-IMAGENET1K_SWAG_E2E_V1", "image_size", 518),
        ("inception_v3-IMAGENET1K_V1", "transform_input", True),
    ],
)
def test_builds_with_weights_follow_the_builders_own_rules(
    weights_id: str, attribute: str, value: object
) -> None:
    built = W.build_with_weights(W.resolve_weights_id(weights_id))
    assert getattr(built.model, attribute) == value
    assert all(p.device.type == "meta" for p in built.model.parameters())


def test_googlenet_checkpoint_layout_is_the_load_time_model_with_aux_heads() -> None:
    built = W.build_with_weights(W.resolve_weights_id("googlenet-IMAGENET1K_V1"))
    assert any(k.startswith("aux1.") for k in built.checkpoint)
    assert not any(k.startswith("aux1.") for k in built.model.state_dict())


def test_output_count_is_derived_from_shapes_for_every_task() -> None:
    counts = {
        weights_id: W.output_count(W.resolve_weights_id(weights_id))
        for weights_id in (
            "resnet18-IMAGENET1K_V1",
            "fasterrcnn_mobilenet_v3_large_320_fpn-COCO_V1",  # box deltas: 4 per class
            "keypointrcnn_resnet50_fpn-COCO_V1",
            "lraspp_mobilenet_v3_large-COCO_WITH_VOC_LABELS_V1",
            "r3d_18-KINETICS400_V1",
        )
    }
    assert list(counts.values()) == [1000, 91, 2, 21, 400]


def test_gflops_match_torchvisions_published_figure_for_resnet18() -> None:
    case = W.resolve_weights_id("resnet18-IMAGENET1K_V1")
    inputs = W.reference_inputs(case)
    assert tuple(inputs[0].shape) == (1, 3, 224, 224)
    assert W.count_gflops(W.built(case).model, inputs) == pytest.approx(1.814, abs=0.0005)


# The default sweep: a few enums, each check a test, through the plugin as a user runs it.
FEW = "resnet18,googlenet,vgg16,vit_b_32,quantized_shufflenet_v2_x0_5,ssdlite320_mobilenet_v3_large"


def test_metadata_checks_pass_for_a_few_enums_and_report_the_declared_exception(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest_subprocess(
        *QUIET, f"--zoo-models={FEW}", "-k", "TestZooWeights and not load_pretrained", "-rx"
    )
    # 7 enums x 9 checks; VGG16_Weights.IMAGENET1K_FEATURES has no categories and NaN metrics.
    result.assert_outcomes(passed=61, xfailed=2)
    result.stdout.fnmatch_lines(
        ["*XFAIL*test_categories?vgg16-IMAGENET1K_FEATURES?*declared exception (feature-extraction*"]
    )


CORRUPT = """
import torchvision.models as M
M.ResNet18_Weights.IMAGENET1K_V1.meta["num_params"] = 12345
M.ResNet34_Weights.IMAGENET1K_V1.meta["_ops"] = 2.5
M.AlexNet_Weights.IMAGENET1K_V1.meta["categories"] = M.AlexNet_Weights.IMAGENET1K_V1.meta["categories"][:999]
M.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["extra"] = 1
"""


def test_a_corrupted_metadata_value_fails_naming_model_weights_field_expected_found(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CORRUPT)
    result = pytester.runpytest_subprocess(
        *QUIET,
        "--zoo-models=resnet18,resnet34,alexnet,squeezenet1_1",
        "-k",
        "TestZooWeights and (num_params or ops or categories or schema)",
    )
    # alexnet fails twice: its builder sizes the head from the 999 names, so num_params disagrees too.
    result.assert_outcomes(failed=5, passed=11)
    e = "E * {} with {}_Weights.IMAGENET1K_V1: meta?'{}'? expected {}".format
    result.stdout.fnmatch_lines_random(
        [
            e("resnet18", "ResNet18", "num_params", "11,689,512 *found 12,345"),
            e(
                "resnet34",
                "ResNet34",
                "_ops",
                "3.664 GFLOPs (FlopCounterMode / 2 at input (1, 3, 224, 224), tolerance 0.1%*found 2.5",
            ),
            e("alexnet", "AlexNet", "categories", "1000 names*found 999 names"),
            e("alexnet", "AlexNet", "num_params", "*the head parameters of exactly 1 class(es)*"),
            e("squeezenet1_1", "SqueezeNet1_1", "extra", "only torchvision's permitted keys*"),
        ]
    )


def test_a_declared_exception_that_no_longer_applies_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "import torchvision.models as M\n"
        "names = list(M.VGG16_Weights.IMAGENET1K_V1.meta['categories'])\n"
        "M.VGG16_Weights.IMAGENET1K_FEATURES.meta['categories'] = names\n"
    )
    result = pytester.runpytest_subprocess(
        *QUIET, "--zoo-models=vgg16", "-k", "TestZooWeights and test_categories and FEATURES"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*the declared exception for 'categories' no longer applies*DECLARED_EXCEPTIONS*"]
    )


def test_wrong_transforms_normalisation_fails_with_expected_and_found(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "import functools, torchvision.models as M\n"
        "w = M.ResNet18_Weights.IMAGENET1K_V1\n"
        "t = w.value.transforms\n"
        "class Broken(t.func):\n"
        "    def forward(self, img):\n"
        "        return super().forward(img) * 1.01\n"
        "object.__setattr__(w.value, 'transforms', functools.partial(Broken, **t.keywords))\n"
    )
    result = pytester.runpytest_subprocess(
        *QUIET, "--zoo-models=resnet18", "-k", "TestZooWeights and test_transforms"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*transforms() on a * image of colour *: channel ? expected * everywhere (mean *"]
    )


def test_transforms_give_the_documented_tensor_for_pil_and_tensor_images(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        *QUIET,
        "--zoo-models=resnet18,fcn_resnet50,r3d_18,raft_small,retinanet_resnet50_fpn",
        "--zoo-examples=15",
        "-k",
        "TestZooWeights and test_transforms",
    )
    result.assert_outcomes(passed=6)


def test_loading_reads_the_fabricated_checkpoint_then_swaps_head_and_freezes(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest_subprocess(
        *QUIET,
        "--zoo-models=resnet18,googlenet,quantized_shufflenet_v2_x0_5",
        "-k",
        "test_load_pretrained",
        "-v",
    )
    result.assert_outcomes(passed=3)


def test_partial_weights_that_leave_a_nan_layer_fail_the_loading_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VGG16's IMAGENET1K_FEATURES ships a NaN classifier: swapping only its last layer leaves NaN."""
    fabricate = W.fabricate_checkpoint

    def with_nan_classifier(
        case: W.WeightsCase, torch_home: Path, **kwargs: object
    ) -> dict[str, torch.Tensor]:
        state = fabricate(case, torch_home, **kwargs)
        state["classifier.0.weight"] = torch.full_like(state["classifier.0.weight"], float("nan"))
        torch.save(state, W.checkpoint_path(case.weights, torch_home))
        return state

    # check_loading looks fabricate_checkpoint up in the module that defines both.
    monkeypatch.setattr(loading, "fabricate_checkpoint", with_nan_classifier)
    case = next(c for c in W.weights_cases(["vgg11"]) if c.weights.name == "IMAGENET1K_V1")
    with pytest.raises(W.MetadataMismatch, match=r"hold NaN or inf, in 1 layers \(classifier\.0\)"):
        W.check_loading(case, tmp_path, 7)
    assert not any(tmp_path.rglob("*.pth"))  # a failed check leaves no checkpoint behind either


def test_the_loading_check_leaves_no_checkpoint_behind(tmp_path: Path) -> None:
    """pytest keeps the last sessions' tmp_path directories: a checkpoint per enum over the zoo
    filled a disk (41 GB) before the check removed its own."""
    case = W.resolve_weights_id("squeezenet1_1-IMAGENET1K_V1")
    assert "loaded" in W.check_loading(case, tmp_path, 7)
    assert not any(tmp_path.rglob("*.pth"))


def test_loading_without_a_checkpoint_is_a_network_error_naming_the_url(tmp_path: Path) -> None:
    case = W.resolve_weights_id("squeezenet1_1-IMAGENET1K_V1")
    with pytest.raises(NetworkAccessError, match=re.escape(case.weights.url)):
        W.load_pretrained_offline(case, tmp_path)
    assert not any(tmp_path.rglob("*.pth"))


def test_fabricated_checkpoint_lands_where_torch_hub_looks(tmp_path: Path) -> None:
    case = W.resolve_weights_id("squeezenet1_1-IMAGENET1K_V1")
    state = W.fabricate_checkpoint(case, tmp_path)
    path = tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert path.is_file() and not list(path.parent.glob(".*"))  # no temporary left (atomic.py names it)
    model = W.load_pretrained_offline(case, tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.zoo_sweep
def test_full_metadata_sweep_over_every_weights_enum(
    pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    """Opt-in (``-m zoo_sweep``): every metadata check of all 166 enums, about 2 minutes on 2 cores."""
    if "zoo_sweep" not in (request.config.getoption("markexpr") or ""):
        pytest.skip(
            "the full sweep over 166 weights enums is opt-in: pytest -m zoo_sweep tests/test_weights.py"
        )
    result = pytester.runpytest_subprocess(
        *QUIET, "--zoo-models=*", "-k", "TestZooWeights and not load_pretrained", "-rfx"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    # 166 enums x 9 checks; skipped: categories of the 8 RAFT enums; xfailed: the declared exceptions.
    found = {key: outcomes.get(key, 0) for key in ("passed", "skipped", "xfailed")}
    assert found == {"passed": 166 * 9 - 8 - 5, "skipped": 8, "xfailed": 5}


def test_fabricated_values_are_seeded_by_the_key_finite_and_the_same_for_any_layout() -> None:
    """A block of drawn values per key, repeated over a large tensor: still distinct per key, and
    the rows of a large matrix are not copies of each other (the block length is a prime)."""
    from pytest_zoo.weights.serving import FABRICATED_BLOCK, fabricated_values

    def filled(key: str, *shape: int) -> torch.Tensor:
        tensor = torch.full(shape, float("nan"))
        fabricated_values(key, tensor)
        return tensor

    large = filled("fc.weight", 64, FABRICATED_BLOCK // 32)
    assert torch.isfinite(large).all() and large.abs().max() <= 3**0.5 * large.shape[1] ** -0.5
    assert torch.equal(large, filled("fc.weight", 64, FABRICATED_BLOCK // 32))
    assert not torch.equal(large, filled("head.weight", 64, FABRICATED_BLOCK // 32))
    assert len({tuple(row.tolist()) for row in large}) == large.shape[0]
    transposed = torch.full((large.shape[1], 64), float("nan")).t()  # not contiguous: same values
    fabricated_values("fc.weight", transposed)
    assert torch.equal(transposed, large)
    scale, shift = filled("bn.weight", 5), filled("bn.bias", 5)
    assert ((scale >= 0.5) & (scale <= 1.5)).all() and (shift.abs() <= 0.1).all() and not (shift == 0).any()
    fabricated_values("empty.weight", torch.empty(0, 3))  # nothing to fill, no error


def test_the_builds_with_weights_live_and_go_with_the_models_cache_group() -> None:
    from pytest_zoo.models.cache import active_cache

    case = W.resolve_weights_id("squeezenet1_1-IMAGENET1K_V1")
    first = W.built(case)
    assert W.built(case) is first and case.model in active_cache().groups
    active_cache().release()
    assert W.built(case) is not first


def test_transforms_under_the_meta_dispatch_modes_give_what_they_give_outside() -> None:
    from pytest_zoo.models.meta import meta_fast_paths

    case = W.resolve_weights_id("resnet18-IMAGENET1K_V1")
    image = torch.full((3, 40, 30), 90, dtype=torch.uint8)
    with meta_fast_paths():
        W.check_transformed(case, image, (90, 90, 90), 40, 30)
        inputs = W.reference_inputs(case)
    assert inputs[0].device.type == "meta" and tuple(inputs[0].shape) == (1, 3, 224, 224)


def test_a_fabricated_checkpoint_is_a_scratch_file_never_flushed_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flushing wrote gigabytes per enum to the disk only for the check to delete them at once."""

    def no_flush(fd: int) -> None:
        raise AssertionError("a served checkpoint was flushed to disk")

    monkeypatch.setattr("os.fsync", no_flush)
    case = W.resolve_weights_id("squeezenet1_1-IMAGENET1K_V1")
    state = W.fabricate_checkpoint(case, tmp_path)
    model = W.load_pretrained_offline(case, tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_consecutive_enums_that_load_the_same_state_write_one_checkpoint_kept_with_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAFT's enums (regnet's, ResNet's V1 and V2) load the same state: the file the previous check
    was done with is moved on, not written again, and goes when the model's cache group does."""
    import gc

    from pytest_zoo.models.cache import active_cache, reset_active_cache
    from pytest_zoo.weights import serving

    saved: list[object] = []
    save = serving.save_unchecked
    monkeypatch.setattr(serving, "save_unchecked", lambda state, f: saved.append(f) or save(state, f))
    reset_active_cache()
    first, second = (W.resolve_weights_id(f"raft_small-{name}") for name in ("C_T_V1", "C_T_V2"))
    assert "loaded" in W.check_loading(first, tmp_path / "a", 7)
    assert "loaded" in W.check_loading(second, tmp_path / "b", 7)
    assert len(saved) == 1 and not any(path for home in "ab" for path in (tmp_path / home).rglob("*.pth"))
    kept = list(tmp_path.glob(f"pytest-zoo-kept-{os.getpid()}-*"))  # beside the torch homes
    assert len(kept) == 1
    active_cache().release()
    gc.collect()
    assert not kept[0].exists()
    assert "loaded" in W.check_loading(first, tmp_path / "c", 7)
    assert len(saved) == 2, "a released model's checkpoint was used again"


def test_fabricated_signatures_tell_apart_any_computed_value_and_any_layout() -> None:
    """A fabricated tensor's values follow from its key and layout; everything else counts by value."""
    from pytest_zoo.weights.serving import fabricated_signature

    def signature(weight: torch.Tensor, index: torch.Tensor, fabricated: frozenset[str]) -> bytes:
        return fabricated_signature({"w": weight, "index": index}, fabricated)

    same = signature(torch.zeros(3, 2), torch.arange(4), frozenset({"w"}))
    assert same == signature(torch.ones(3, 2), torch.arange(4), frozenset({"w"}))
    assert same != signature(torch.zeros(3, 2), torch.arange(4).flip(0), frozenset({"w"}))
    assert same != signature(torch.zeros(2, 3), torch.arange(4), frozenset({"w"}))
    assert same != signature(torch.zeros(3, 2).t().contiguous().t(), torch.arange(4), frozenset({"w"}))
    assert same != signature(torch.zeros(3, 2), torch.arange(4), frozenset())


def test_a_tensor_the_load_never_reaches_is_still_poisoned_when_the_others_fills_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poisoned build's fills are held until the load (models/deferred.py): the load's copies
    replace them unread, and a layer it silently skips is filled with NaN at the end all the same."""
    load_state_dict = torch.nn.Module.load_state_dict

    def skips_a_layer(self: torch.nn.Module, state: Any, strict: bool = True, assign: bool = False) -> Any:
        state = {k: v for k, v in state.items() if k != "features.3.weight"}
        return load_state_dict(self, state, strict=False, assign=assign)  # the bug users write

    case = next(c for c in W.weights_cases(["vgg11"]) if c.weights.name == "IMAGENET1K_V1")
    checkpoint = W.fabricate_checkpoint(case, tmp_path)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", skips_a_layer)
    state = W.load_pretrained_offline(case, tmp_path).state_dict()
    assert torch.isnan(state["features.3.weight"]).all()
    assert all(torch.equal(state[k], v) for k, v in checkpoint.items() if k != "features.3.weight")
    with pytest.raises(W.MetadataMismatch, match=r"differing \['features\.3\.weight'\]"):
        W.check_loading(case, tmp_path, 7)


def test_a_fabricated_checkpoint_holds_cpu_values_whatever_the_default_device(tmp_path: Path) -> None:
    """The build enters a ``torch.device("cpu")`` mode only where CPU is not the default already."""
    case = W.resolve_weights_id("squeezenet1_1-IMAGENET1K_V1")
    with torch.device("meta"):
        under_meta = W.fabricate_checkpoint(case, tmp_path / "meta")
    state = W.fabricate_checkpoint(case, tmp_path / "cpu")
    assert all(v.device.type == "cpu" for v in under_meta.values())
    assert state.keys() == under_meta.keys() and all(torch.equal(v, under_meta[k]) for k, v in state.items())


def test_quantized_loading_calibrates_both_builds_on_the_smallest_legal_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's ranges overwrite what the loading build calibrates; the fabricating build's
    are only what the file holds: neither needs torchvision's 299 x 299 image."""
    sides: list[int] = []
    rand = torch.rand

    def recording_rand(*size: Any, **kwargs: Any) -> torch.Tensor:
        if len(size) == 4 and size[:2] == (1, 3):  # torchvision's calibration image
            sides.append(size[-1])
        return rand(*size, **kwargs)

    monkeypatch.setattr(torch, "rand", recording_rand)
    case = W.resolve_weights_id("quantized_shufflenet_v2_x0_5-IMAGENET1K_FBGEMM_V1")
    assert "quantized" in W.check_loading(case, tmp_path, 7)
    assert sides == [64, 64], sides  # the fabricating build, the loading build


def test_a_fabricated_checkpoint_overwrites_every_parameter_the_builder_loads_into(tmp_path: Path) -> None:
    """Its build spares parameters the NaN fill: every one must get :func:`fabricated_values`, the
    load-time aux heads GoogLeNet drops afterwards included, or the file holds what memory held."""
    from pytest_zoo.weights.serving import fabricated_values

    case = W.resolve_weights_id("googlenet-IMAGENET1K_V1")
    state = W.fabricate_checkpoint(case, tmp_path)
    floating = {k: v for k, v in state.items() if v.is_floating_point()}
    assert any(k.startswith("aux1.") for k in floating)
    for key, value in floating.items():
        expected = torch.empty_like(value)
        fabricated_values(key, expected)
        assert torch.equal(value, expected), key
