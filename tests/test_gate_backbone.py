"""A model that names its own ``backbone`` has that module as its backbone.

The standard segmentation recipe freezes ``model.backbone`` (the ResNet encoder of DeepLabV3/FCN)
and trains the decoder (ASPP, the conv stack) with new last convs ``classifier[4]`` and
``aux_classifier[4]``; the standard detection recipe freezes ``model.backbone`` and trains the RPN
and ROI heads with a new ``FastRCNNPredictor``. Both are correct, and a recipe that forgets the
freeze is not. A classifier, which names no backbone, keeps "everything but the class layers".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from torch import nn

from pytest_zoo.models.building import build_model
from pytest_zoo.models.freezing import backbone_prefix, freeze_backbone

SEGMENTATION = """
    class SEGMENTER(ZooConformance):
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

DETECTION = """
    class DETECTOR(ZooConformance):
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

IMPORTS = """
    from torch import nn
    from torchvision.models import get_model
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    from pytest_zoo import ZooConformance
"""

BOTH = ("deeplabv3_resnet50", "fcn_resnet50")
ONLY_HEAD = (
    "for name, p in model.named_parameters():\n"
    '                p.requires_grad = name.startswith(("classifier.4.", "aux_classifier.4."))'
)


def segmenter(cls: str, models: tuple[str, ...], freeze: str, declared: str = "pass") -> str:
    source = SEGMENTATION.replace("SEGMENTER", cls).replace("MODELS", repr(models))
    return source.replace("FREEZE", freeze).replace("DECLARED", declared)


def detector(cls: str, frozen: str, declared: str = "pass") -> str:
    return DETECTION.replace("DETECTOR", cls).replace("FROZEN", frozen).replace("DECLARED", declared)


#: Every gate class of this module's cases, in one test file: one session per device instead of
#: one per case (each session pays for importing torchvision and building the ResNet-50s).
GATES = "".join(
    textwrap.dedent(part)
    for part in (
        IMPORTS,
        segmenter("TestRecipe", BOTH, "model.backbone.requires_grad_(False)"),
        segmenter("TestForgot", ("fcn_resnet50",), "pass  # forgot the freeze"),
        segmenter("TestOnlyHead", ("fcn_resnet50",), ONLY_HEAD),
        segmenter("TestOnlyHeadDeclared", ("fcn_resnet50",), ONLY_HEAD, "backbone_module = None"),
        detector("TestDetection", "backbone"),
        detector("TestDetectionBody", "backbone.body"),
        detector("TestDetectionBodyDeclared", "backbone.body", 'backbone_module = "backbone.body"'),
    )
)


def session(tmp_path_factory: pytest.TempPathFactory, *args: str) -> pytest.LineMatcher:
    path = tmp_path_factory.mktemp("backbone")
    (path / "test_gate.py").write_text(GATES)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-rA", *args]
    done = subprocess.run(command, cwd=path, capture_output=True, text=True, timeout=900, check=False)
    return pytest.LineMatcher((done.stdout + done.stderr).splitlines())


@pytest.fixture(scope="module")
def structural(tmp_path_factory: pytest.TempPathFactory) -> pytest.LineMatcher:
    """The shape checks, on the meta device: seconds for a ResNet-50 encoder."""
    return session(
        tmp_path_factory, "--zoo-device=meta", "--zoo-examples=2", "-k", "freeze_counts or gradients"
    )


@pytest.fixture(scope="module")
def on_cpu(tmp_path_factory: pytest.TempPathFactory) -> pytest.LineMatcher:
    """The training step needs values, and a detector's train-mode forward samples proposals, which
    the meta device cannot: the correct recipes, on CPU, one example."""
    return session(
        tmp_path_factory,
        "--zoo-examples=1",
        "-k",
        "(TestRecipe and training_step) or (TestDetection and not Body and "
        "(freeze_counts or gradients or training_step))",
    )


def test_the_segmentation_recipe_that_freezes_model_backbone_passes(
    structural: pytest.LineMatcher, on_cpu: pytest.LineMatcher
) -> None:
    for name in BOTH:
        structural.fnmatch_lines([f"PASSED test_gate.py::TestRecipe::test_freeze_counts[[]{name}[]]"])
        structural.fnmatch_lines(
            [f"PASSED test_gate.py::TestRecipe::test_gradients_reach_head_only[[]{name}[]]"]
        )
        on_cpu.fnmatch_lines([f"PASSED test_gate.py::TestRecipe::test_training_step[[]{name}[]]"])


def test_a_segmentation_recipe_that_forgets_to_freeze_the_backbone_fails(
    structural: pytest.LineMatcher,
) -> None:
    structural.fnmatch_lines(
        [
            "*fcn_resnet50: the wrong parameters are trainable after freeze_backbone*",
            "*hook:*freeze_backbone -> TestForgot.freeze_backbone (test_gate.py:*)",
            "*should train but frozen: none*",
            "*should be frozen but trainable:*(backbone.*",
            "*defect:*BatchNorm affine parameters (weight/bias) are still trainable*",
            "*backbone parameters (the model's backbone module) other than BatchNorm are trainable: "
            "freeze_backbone missed them*",
        ]
    )
    structural.fnmatch_lines(["FAILED test_gate.py::TestForgot::test_freeze_counts[[]fcn_resnet50[]]*"])
    structural.fnmatch_lines(
        ["FAILED test_gate.py::TestForgot::test_gradients_reach_head_only[[]fcn_resnet50[]]*"]
    )


def test_training_only_the_class_layers_of_a_segmentation_model_needs_declaring(
    structural: pytest.LineMatcher,
) -> None:
    """The old reading of "backbone" (everything but the class layers) is a recipe too, once declared."""
    structural.fnmatch_lines(
        [
            "*hook:*freeze_backbone -> TestOnlyHead.freeze_backbone (test_gate.py:*)",
            "*parameters outside the model's backbone module are frozen (its decoder, RPN or ROI heads, or "
            "its head)*declare backbone_module = None*",
        ]
    )
    structural.fnmatch_lines(["FAILED test_gate.py::TestOnlyHead::test_freeze_counts[[]fcn_resnet50[]]*"])
    structural.fnmatch_lines(
        ["PASSED test_gate.py::TestOnlyHeadDeclared::test_freeze_counts[[]fcn_resnet50[]]"]
    )
    structural.fnmatch_lines(
        ["PASSED test_gate.py::TestOnlyHeadDeclared::test_gradients_reach_head_only[[]fcn_resnet50[]]"]
    )


def test_the_detection_recipe_that_freezes_model_backbone_trains_rpn_and_roi_heads(
    structural: pytest.LineMatcher, on_cpu: pytest.LineMatcher
) -> None:
    for check in ("freeze_counts", "gradients_reach_head_only", "training_step"):
        on_cpu.fnmatch_lines(
            [f"PASSED test_gate.py::TestDetection::test_{check}[[]fasterrcnn_resnet50_fpn[]]"]
        )
    structural.fnmatch_lines(
        ["PASSED test_gate.py::TestDetection::test_freeze_counts[[]fasterrcnn_resnet50_fpn[]]"]
    )


def test_freezing_only_the_detection_backbones_body_is_judged_by_the_same_definition(
    structural: pytest.LineMatcher,
) -> None:
    """The FPN is part of ``model.backbone``: left training, it is named, unless declared."""
    structural.fnmatch_lines(
        [
            "*hook:*freeze_backbone -> TestDetectionBody.freeze_backbone (test_gate.py:*)",
            "*should be frozen but trainable:*(backbone.fpn.*",
            "*backbone parameters (the model's backbone module) other than BatchNorm are trainable*",
        ]
    )
    structural.fnmatch_lines(
        ["FAILED test_gate.py::TestDetectionBody::test_freeze_counts[[]fasterrcnn_resnet50_fpn[]]*"]
    )
    structural.fnmatch_lines(
        ["PASSED test_gate.py::TestDetectionBodyDeclared::test_freeze_counts[[]fasterrcnn_resnet50_fpn[]]"]
    )


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
