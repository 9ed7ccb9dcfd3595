"""The CI gate, end to end: the example downstream project passes, and broken copies of its code fail.

Each broken copy changes one line of ``examples/acme_vision/acme_vision/models.py`` the way people
actually get head swaps and freezes wrong, runs the project's own tests (which only subclass
``ZooConformance``) in a real pytest session, and asserts that the failure names the defect.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported once here: in-process pytester runs must not re-import torch)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "acme_vision"
MODELS = Path("acme_vision") / "models.py"
HOOKS = "tests/test_conformance.py"


def copy_example(pytester: pytest.Pytester) -> Path:
    shutil.copytree(
        EXAMPLE,
        pytester.path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache"),
    )
    return pytester.path


def break_code(root: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence, so a drifted example fails here instead of testing nothing."""
    path = root / MODELS
    text = path.read_text()
    assert text.count(old) == 1, f"the example no longer contains {old!r}; update this test"
    path.write_text(text.replace(old, new))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: torch registers native operator namespaces once per process, and an in-process
    # run's sys.modules restore makes the next run import (and register) them a second time.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_example_project_passes_its_own_gate(pytester: pytest.Pytester) -> None:
    copy_example(pytester)
    result = run(pytester, "-v")
    # 3 torchvision models x 12 tests, acmenet x 11 (no torchvision weights to check: skipped), and
    # the fine-tuning recipe (functional multi-layer head, train_bn policy) on 2 ResNets x 11; every
    # model's test_pretrained_weights_reach_model skips (built from scratch, not declared pretrained).
    result.assert_outcomes(passed=69, skipped=7)
    for line in (
        "*TestAcmeModels::test_head_matches_builder[[]googlenet[]] PASSED*",
        "*TestAcmeModels::test_replace_head_keeps_dtype_and_device[[]resnet18[]] PASSED*",
        "*TestAcmeModels::test_build_classifier[[]mobilenet_v3_small[]] PASSED*",
        "*TestAcmeNet::test_freeze_counts[[]acmenet[]] PASSED*",
        "*TestAcmeNet::test_head_matches_builder[[]acmenet[]] PASSED*",
        "*TestAcmeFineTuning::test_freeze_counts[[]resnet34[]] PASSED*",
    ):
        result.stdout.fnmatch_lines([line])


def test_a_recipe_that_does_not_implement_its_declared_norm_policy(pytester: pytest.Pytester) -> None:
    root = copy_example(pytester)
    break_code(root, "train_bn: bool = True", "train_bn: bool = False")
    result = run(pytester, "-k", "FineTuning and resnet18 and (freeze or gradients)")
    result.assert_outcomes(failed=2, passed=0)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: the wrong parameters are trainable after freeze_backbone*",
            f"*hook:*freeze_backbone -> TestAcmeFineTuning.freeze_backbone ({HOOKS}:*)",
            "*should train but frozen: 40 BatchNorm2d affine parameters (0.1.bias, 0.1.weight, *",
            "*defect:*the declared NormPolicy(affine='trainable') keeps the backbone's normalisation "
            "parameters trainable, but 40 of them are frozen*",
        ]
    )


def test_head_swap_that_forgets_the_aux_heads(pytester: pytest.Pytester) -> None:
    root = copy_example(pytester)
    break_code(root, '"GoogLeNet": ("fc", "aux1.fc2", "aux2.fc2"),', '"GoogLeNet": ("fc",),')
    result = run(pytester, "--zoo-examples=1", "-k", "googlenet and (head_matches or forward_shape)")
    result.assert_outcomes(failed=2, passed=0)
    result.stdout.fnmatch_lines(
        [
            "*googlenet: the model's state_dict after replace_head differs from torchvision's googlenet*",
            f"*hook:*replace_head -> TestAcmeModels.replace_head ({HOOKS}:*)",
            "*aux1.fc2.weight: expected (*, 1024), found (1000, 1024)*",
            "*defect:*auxiliary head 'aux1.fc2' still has 1000 outputs, not num_classes=*"
            "replace_head must swap the auxiliary heads too*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*googlenet: an output does not have the shape*",
            "*inputs:*model=googlenet, num_classes=*, batch=*, input shape=(*, 3, *, *), train mode*",
            "*defect:*auxiliary output 'aux_logits2' has shape (*, 1000): replace_head must swap the "
            "auxiliary heads too (aux1.fc2, aux2.fc2)*",
            "*reproduce:*import torch",
            "*from test_conformance import TestAcmeModels",
            "*model = t.replace_head(t.build_model('googlenet'), *); model.train()*",
        ]
    )


def test_forgotten_aux_heads_with_the_gradient_check_selected(pytester: pytest.Pytester) -> None:
    """Where the gradient check runs too, the train-mode shapes are asserted on its forward: the
    forward-shape check runs eval mode only (no aux outputs there) and the gradient check reports
    the train-mode shape defect, with the same problem and defect lines."""
    root = copy_example(pytester)
    break_code(root, '"GoogLeNet": ("fc", "aux1.fc2", "aux2.fc2"),', '"GoogLeNet": ("fc",),')
    result = run(pytester, "--zoo-examples=1", "-v", "-k", "googlenet and (forward_shape or gradients)")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*TestAcmeModels::test_forward_shape[[]googlenet[]] PASSED*",
            "*TestAcmeModels::test_gradients_reach_head_only[[]googlenet[]] FAILED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*googlenet: an output does not have the shape a classification model with * classes gives, "
            "in train mode*",
            f"*hook:*replace_head -> TestAcmeModels.replace_head ({HOOKS}:*)",
            "*inputs:*model=googlenet, num_classes=*, batch=*, input shape=(*, 3, *, *), train mode*",
            "*the train-mode output shapes (aux outputs included) of test_forward_shape, checked on this "
            "test's own train-mode forward*",
            "*defect:*auxiliary output 'aux_logits2' has shape (*, 1000): replace_head must swap the "
            "auxiliary heads too (aux1.fc2, aux2.fc2)*",
            "*model = t.replace_head(t.build_model('googlenet'), *); t.freeze_backbone(model)",
            "*model.train(); outputs = model(torch.randn(*))",
        ]
    )


def test_freeze_that_leaves_batchnorm_affine_parameters_trainable(pytester: pytest.Pytester) -> None:
    root = copy_example(pytester)
    break_code(
        root,
        """    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(path + ".") for path in heads))
""",
        """    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in heads:
            module.requires_grad_(False)
""",
    )
    result = run(pytester, "--zoo-examples=1", "-k", "resnet18 and (freeze or gradients) and not FineTuning")
    result.assert_outcomes(failed=2, passed=0)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: the wrong parameters are trainable after freeze_backbone*",
            f"*hook:*freeze_backbone -> TestAcmeModels.freeze_backbone ({HOOKS}:*)",
            "*should be frozen but trainable: 40 BatchNorm2d affine parameters (bn1.bias, bn1.weight, *",
            "*defect:*40 BatchNorm affine parameters (weight/bias) are still trainable*",
        ]
    )
    result.stdout.fnmatch_lines(["*backbone parameters with .grad: 40 BatchNorm2d affine parameters*"])


def test_hard_coded_in_features(pytester: pytest.Pytester) -> None:
    root = copy_example(pytester)
    break_code(root, "nn.Linear(old.in_features, num_classes,", "nn.Linear(512, num_classes,")
    result = run(
        pytester,
        "--zoo-examples=1",
        "-k",
        "(head_matches or (mobilenet and forward_shape)) and not FineTuning",
    )
    # resnet18's head really takes 512 features, so the hard-coded value passes there, and only there.
    result.assert_outcomes(failed=4, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*classifier.3.weight takes 512 input features where the layer it replaced took 1024: "
            "a hard-coded in_features?*",
        ]
    )
    # acmenet has no torchvision builder: the hook-derived oracle catches the same defect.
    result.stdout.fnmatch_lines(
        [
            "*acmenet: the model's state_dict after replace_head differs from the hook-derived oracle*",
            "*classifier.weight takes 512 input features where the layer it replaced took 32*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*the forward pass raised RuntimeError: mat1 and mat2 shapes cannot be multiplied*",
            "*defect:*a head's in_features does not match the features that reach it*",
        ]
    )


def test_head_built_without_the_models_dtype_and_device(pytester: pytest.Pytester) -> None:
    root = copy_example(pytester)
    break_code(
        root,
        "nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)",
        "nn.Linear(old.in_features, num_classes)",
    )
    result = run(pytester, "--zoo-examples=1", "-k", "resnet18 and dtype and not FineTuning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: replace_head made 2 tensors with another dtype or device than the model*",
            "*expected:*torch.float64 on cpu, like the rest of the model*",
            "*found:*fc.bias: torch.float32 on cpu, fc.weight: torch.float32 on cpu*",
            "*defect:*the new head is not created on the old head's dtype/device*",
        ]
    )


FREE_FORM = """
import pytest
from hypothesis import given
from torch import nn

from pytest_zoo import ZooConformance


@pytest.mark.parametrize("zoo_model_name", ["vit_b_16", "inception_v3"])
def test_legal_train_shapes(zoo_model_name, zoo_strategies, zoo_hypothesis_settings):
    low, high = zoo_strategies.spec.sizes(train=True)

    @zoo_hypothesis_settings
    @given(shape=zoo_strategies.input_shapes(train=True))
    def check(shape):
        b, c, h, w = shape
        assert b >= 2 and c == 3 and low <= h <= high and low <= w <= high
        assert h % zoo_strategies.spec.multiple == 0

    check()


class TestMine(ZooConformance):
    models = ("mynet",)
    builder_oracle = False

    def build_model(self, name):
        model = nn.Linear(4, 2)
        model.built_by = "hook"
        return model

    def replace_head(self, model, num_classes):
        return nn.Linear(4, num_classes)

    def freeze_backbone(self, model):
        pass

    def test_zoo_model_comes_from_the_hook(self, zoo_model_name, zoo_model, zoo_device):
        assert zoo_model_name == "mynet" and zoo_model.built_by == "hook"
        assert zoo_model.weight.device.type == zoo_device.type
"""


def test_fixtures_for_free_form_tests(pytester: pytest.Pytester) -> None:
    """Explicitly parametrized model names get bound strategies; a class's own tests get its hook's model."""
    pytester.makepyfile(test_free=FREE_FORM)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "--zoo-examples=10", "-k", "legal_train_shapes or comes_from_the_hook"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_legal_train_shapes[[]inception_v3[]] PASSED*"])
