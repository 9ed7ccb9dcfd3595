"""fastai's own fine-tuning code, judged by the gate: ``create_body`` + ``add_head`` on torchvision
models and ``Learner.freeze()`` with fastai's default ``train_bn=True``.

Two false failures used to come from it. A BatchNorm bias whose output reaches a train-mode
BatchNorm only through linear layers gets an exactly zero gradient (the next BatchNorm removes
any mean shift), so one SGD step leaves it where it was: it trains all the same, and "got no
gradient" is kept for a parameter the forward never uses. And fastai's head has a BatchNorm1d, so
a SqueezeNet (no BatchNorm of its own) needs train-mode batches of 2 once the hooks ran: the
inputs follow the model the hooks returned, not the family table.
"""

from __future__ import annotations

import textwrap

import pytest
import torch  # noqa: F401  (in-process pytester runs must not re-import torch)

pytest.importorskip("fastai")

FASTAI = """
    import torch
    from torch import nn
    from torchvision import models

    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.vision.learner import add_head, create_body, default_split, model_meta, num_features_model

    from pytest_zoo import NormPolicy, ZooConformance

    class TestFastai(ZooConformance):
        models = MODELS
        norm_policy = NormPolicy(affine="trainable")  # Learner's default train_bn=True
        # fastai builds its head in float32 and moves the Learner's model to the data's device.
        test_replace_head_keeps_dtype_and_device = None

        def meta(self):
            return model_meta.get(getattr(models, self.model_name), {})

        def build_model(self, name):
            # Whether the one BatchNorm bias's gradient rounds to exactly zero depends on the init
            # (a rounding error of 1e-9 moves it); seed 2 gives exactly zero, as users report it.
            torch.manual_seed(2)
            return models.get_model(name, weights=None)

        def replace_head(self, model, num_classes):
            body = create_body(model, pretrained=False, cut=self.meta().get("cut"))
            return add_head(body, num_features_model(body), num_classes)

        def freeze_backbone(self, model):
            splitter = self.meta().get("split", default_split)
            learn = Learner(DataLoaders(), model, loss_func=nn.CrossEntropyLoss(), splitter=splitter)
            learn.freeze()
"""


def run(
    pytester: pytest.Pytester, models: tuple[str, ...], *args: str, source: str = FASTAI
) -> pytest.RunResult:
    pytester.makepyfile(test_gate=textwrap.dedent(source.replace("MODELS", repr(models))))
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "--zoo-examples=3", *args
    )


def test_fastai_on_mobilenet_v3_small_trains_its_zero_gradient_batchnorm_bias(
    pytester: pytest.Pytester,
) -> None:
    """``0.0.11.block.3.1.bias`` gets an exactly zero gradient: it trains, it just cannot move."""
    result = run(pytester, ("mobilenet_v3_small",), "-k", "training_step or freeze_counts or gradients")
    result.assert_outcomes(passed=3)


def test_fastai_with_a_head_layer_the_forward_never_calls_fails_naming_it(pytester: pytest.Pytester) -> None:
    source = FASTAI.replace(
        "            return add_head(body, num_features_model(body), num_classes)",
        "            model = add_head(body, num_features_model(body), num_classes)\n"
        "            model[1][-1].spare = nn.Linear(4, 4)  # built, never called\n"
        "            return model",
    )
    result = run(pytester, ("mobilenet_v3_small",), "-k", "training_step", source=source)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the training step: 2 parameters (1.8.spare.bias, 1.8.spare.weight) that must train got no "
            "gradient at all: the forward does not use them*",
            "*hook:*freeze_backbone -> TestFastai.freeze_backbone (test_gate.py:*)",
        ]
    )


def test_fastai_on_squeezenet_trains_its_batchnorm1d_head_on_batches_of_two(
    pytester: pytest.Pytester,
) -> None:
    """SqueezeNet has no BatchNorm; fastai's head has a BatchNorm1d, so train mode needs 2 images."""
    result = run(pytester, ("squeezenet1_1",), "-k", "forward_shape or gradients or training_step")
    result.assert_outcomes(passed=3)


def test_fastai_on_squeezenet_without_a_freeze_fails_blaming_freeze_backbone(
    pytester: pytest.Pytester,
) -> None:
    source = FASTAI.replace("            learn.freeze()", "            pass  # forgot learn.freeze()")
    result = run(pytester, ("squeezenet1_1",), "-k", "gradients", source=source)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*a backward pass through the outputs*reached the wrong parameters*",
            "*hook:*freeze_backbone -> TestFastai.freeze_backbone (test_gate.py:*)",
            "*defect:*backbone parameters other than BatchNorm are trainable: freeze_backbone missed them*",
        ]
    )
