"""A model that names its own ``backbone`` has that module as its backbone.

The standard segmentation recipe freezes ``model.backbone`` (the ResNet encoder of DeepLabV3/FCN)
and trains the decoder (ASPP, the conv stack) with new last convs ``classifier[4]`` and
``aux_classifier[4]``; the standard detection recipe freezes ``model.backbone`` and trains the RPN
and ROI heads with a new ``FastRCNNPredictor``. Both are correct, and a recipe that forgets the
freeze is not. A classifier, which names no backbone, keeps "everything but the class layers".
"""

from __future__ import annotations

import textwrap

import pytest
import torch  # noqa: F401  (in-process pytester runs must not re-import torch)
from torch import nn

from pytest_zoo.models.building import build_model
from pytest_zoo.models.freezing import backbone_prefix, freeze_backbone

CHECKS = ("-k", "freeze_counts or gradients or training_step")

SEGMENTATION = """
    from torch import nn
    from torchvision.models import get_model

    from pytest_zoo import ZooConformance

    class TestSegmentation(ZooConformance):
        models = MODELS
        test_replace_head_keeps_dtype_and_device = None
        DECLARED

        def build_model(self, name):
            return get_model(name, weights=None, weights_backbone=None, aux_loss=True)

        def replace_head(self, model, num_classes):
            model.classifier[4] = nn.Conv2d(model.classifier[4].in_channels, num_classes, 1)
            model.aux_classifier[4] = nn.Conv2d(model.aux_classifier[4].in_channels, num_classes, 1)
            return model

        def freeze_backbone(self, model):
            FREEZE
"""

FREEZE_BACKBONE = "model.backbone.requires_grad_(False)"


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_gate=textwrap.dedent(source))
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "--zoo-examples=2", *args
    )


def segmentation(models: tuple[str, ...], freeze: str = FREEZE_BACKBONE, declared: str = "") -> str:
    source = SEGMENTATION.replace("MODELS", repr(models)).replace("FREEZE", freeze)
    return source.replace("DECLARED", declared or "pass")


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "fcn_resnet50"])
def test_the_segmentation_recipe_that_freezes_model_backbone_passes(
    pytester: pytest.Pytester, name: str
) -> None:
    result = run(pytester, segmentation((name,)), *CHECKS)
    result.assert_outcomes(passed=3)


def test_a_segmentation_recipe_that_forgets_to_freeze_the_backbone_fails(pytester: pytest.Pytester) -> None:
    result = run(
        pytester, segmentation(("fcn_resnet50",), "pass  # forgot the freeze"), "-k", "freeze_counts"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*fcn_resnet50: the wrong parameters are trainable after freeze_backbone*",
            "*hook:*freeze_backbone -> TestSegmentation.freeze_backbone (test_gate.py:*)",
            "*should train but frozen: none*",
            "*should be frozen but trainable:*(backbone.*",
            "*defect:*BatchNorm affine parameters (weight/bias) are still trainable*",
            "*backbone parameters (the model's backbone module) other than BatchNorm are trainable: "
            "freeze_backbone missed them*",
        ]
    )


def test_training_only_the_class_layers_of_a_segmentation_model_needs_declaring(
    pytester: pytest.Pytester,
) -> None:
    """The old reading of "backbone" (everything but the class layers) is a recipe too, once declared."""
    only_head = (
        "for name, p in model.named_parameters():\n"
        '                p.requires_grad = name.startswith(("classifier.4.", "aux_classifier.4."))'
    )
    undeclared = run(pytester, segmentation(("fcn_resnet50",), only_head), "-k", "freeze_counts")
    undeclared.assert_outcomes(failed=1)
    undeclared.stdout.fnmatch_lines(
        [
            "*parameters outside the model's backbone module are frozen (its decoder, RPN or ROI heads, or "
            "its head)*declare backbone_module = None*"
        ]
    )
    declared = run(pytester, segmentation(("fcn_resnet50",), only_head, "backbone_module = None"), *CHECKS)
    declared.assert_outcomes(passed=3)


DETECTION = """
    from torchvision.models import get_model
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from pytest_zoo import ZooConformance

    class TestDetection(ZooConformance):
        models = ("fasterrcnn_resnet50_fpn",)
        test_replace_head_keeps_dtype_and_device = None
        DECLARED

        def build_model(self, name):
            return get_model(name, weights=None, weights_backbone=None, min_size=64, max_size=96)

        def replace_head(self, model, num_classes):
            in_features = model.roi_heads.box_predictor.cls_score.in_features
            model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
            return model

        def freeze_backbone(self, model):
            model.FROZEN.requires_grad_(False)
"""


def detection(frozen: str, declared: str = "pass") -> str:
    return DETECTION.replace("FROZEN", frozen).replace("DECLARED", declared)


def test_the_detection_recipe_that_freezes_model_backbone_trains_rpn_and_roi_heads(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, detection("backbone"), *CHECKS)
    result.assert_outcomes(passed=3)


def test_freezing_only_the_detection_backbones_body_is_judged_by_the_same_definition(
    pytester: pytest.Pytester,
) -> None:
    """The FPN is part of ``model.backbone``: left training, it is named, unless declared."""
    undeclared = run(pytester, detection("backbone.body"), "-k", "freeze_counts")
    undeclared.assert_outcomes(failed=1)
    undeclared.stdout.fnmatch_lines(
        [
            "*should be frozen but trainable:*(backbone.fpn.*",
            "*backbone parameters (the model's backbone module) other than BatchNorm are trainable*",
        ]
    )
    declared = run(pytester, detection("backbone.body", 'backbone_module = "backbone.body"'), *CHECKS)
    declared.assert_outcomes(passed=3)


# -- the kit's own freeze_backbone follows the same definition ---------------------------------------


def trainable(model: nn.Module) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}


def test_the_kits_freeze_backbone_freezes_a_named_backbone_and_trains_the_rest() -> None:
    segmenter = build_model("deeplabv3_resnet50", num_classes=3, structural=True)
    freeze_backbone(segmenter)
    assert trainable(segmenter) == {"classifier", "aux_classifier"}
    assert all(not p.requires_grad for p in segmenter.backbone.parameters())
    assert all(p.requires_grad for p in segmenter.classifier[0].parameters())  # the ASPP trains

    detector = build_model("fasterrcnn_resnet50_fpn", num_classes=3, structural=True)
    freeze_backbone(detector)
    assert trainable(detector) == {"rpn", "roi_heads"}  # the FPN is part of model.backbone
    freeze_backbone(detector, norm_affine="trainable")
    assert {n for n, p in detector.backbone.named_parameters() if p.requires_grad} == {
        n
        for n, m in detector.backbone.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for n in (f"{n}.weight", f"{n}.bias")
    }

    classifier = build_model("resnet18", structural=True)
    assert backbone_prefix(name for name, _ in classifier.named_parameters()) is None
    freeze_backbone(classifier)
    assert trainable(classifier) == {"fc"}


def test_the_kits_freeze_backbone_without_a_named_backbone_trains_the_class_layers_alone() -> None:
    segmenter = build_model("fcn_resnet50", num_classes=3, structural=True)
    freeze_backbone(segmenter, backbone=None)
    assert {n for n, p in segmenter.named_parameters() if p.requires_grad} == {
        "classifier.4.weight",
        "classifier.4.bias",
        "aux_classifier.4.weight",
        "aux_classifier.4.bias",
    }
