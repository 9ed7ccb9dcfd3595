"""The head-inference fallback, proved on model classes the family table does not know.

``Untabled`` has the modules of torchvision's resnet18 (so ``resnet18(num_classes=n)`` is a valid
oracle) but is not a ``ResNet``: no adapter matches it along its MRO. ``Reordered`` registers its
head first, so "the last layer" is the wrong guess and verification against the builder must
refute it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import pytest_zoo.checks  # noqa: F401  (kept loaded: in-process pytester runs must see one ZooConformance)
from pytest_zoo.models import heads, inference
from pytest_zoo.models.building import build_model

MODELS = '''
import torch
import torchvision
from torch import nn


def _adopt(target, source):
    for name, child in source.named_children():
        target.add_module(name, child)


class Untabled(nn.Module):
    """resnet18's modules in a class of its own."""

    def __init__(self, num_classes=1000):
        super().__init__()
        _adopt(self, torchvision.models.resnet18(num_classes=num_classes))

    def forward(self, x):
        return torchvision.models.ResNet._forward_impl(self, x)


class Reordered(nn.Module):
    """The same modules, but the head registered first: the last layer is a convolution."""

    def __init__(self, num_classes=1000):
        super().__init__()
        base = torchvision.models.resnet18(num_classes=num_classes)
        self.fc = base.fc
        _adopt(self, base)

    def forward(self, x):
        return torchvision.models.ResNet._forward_impl(self, x)


class TinyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
'''

namespace: dict[str, object] = {"__name__": "zoo_fallback_models"}
exec(compile(MODELS, "zoo_fallback_models", "exec"), namespace)
Untabled: type[nn.Module] = namespace["Untabled"]  # type: ignore[assignment]
Reordered: type[nn.Module] = namespace["Reordered"]  # type: ignore[assignment]
TinyNet: type[nn.Module] = namespace["TinyNet"]  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _forget_inferred() -> Iterator[None]:
    """An inferred adapter is registered for its class; each test starts without one.

    Adapters are keyed by module and class name, so this also forgets the adapters inferred for
    the same-named classes that the in-process pytester sessions import from their own copy.
    """
    yield
    for cls in (Untabled, Reordered, TinyNet):
        heads.unregister_adapter(cls)


def test_infers_the_last_layer_and_uses_it() -> None:
    model = TinyNet()
    assert heads.find_adapter(model) is None
    inferred = inference.infer_head(model)
    assert (inferred.heads, inferred.aux_heads, inferred.classes) == (("classifier.1",), (), 10)
    adapter = inference.adopt(model)
    assert inference.is_inferred(adapter) and "unverified" in adapter.source
    heads.replace_head(model, 4)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_infers_aux_heads_and_num_classes_attrs() -> None:
    """GoogLeNet's aux classifiers close their own branches; SqueezeNet records its class count."""
    googlenet = build_model("googlenet", structural=True)
    assert inference.infer_head(googlenet).heads == ("fc",)
    assert inference.infer_head(googlenet).aux_heads == ("aux1.fc2", "aux2.fc2")
    squeezenet = build_model("squeezenet1_1", structural=True)
    inferred = inference.infer_head(squeezenet)
    assert (inferred.heads, inferred.num_classes_attrs) == (("classifier.1",), ("num_classes",))


@pytest.mark.parametrize(
    "name", ["googlenet", "squeezenet1_0", "inception_v3", "mobilenet_v3_small", "vit_b_16"]
)
def test_inference_agrees_with_the_declared_adapters(name: str) -> None:
    """Where the table knows the answer, inference finds it too, and the builder confirms it."""
    model = build_model(name, structural=True)
    adapter = heads.find_adapter(model)
    assert adapter is not None
    inferred = inference.verify_head(
        inference.infer_head(model),
        model,
        lambda n: build_model(name, num_classes=n, structural=True),
        builder=name,
    )
    assert (inferred.heads, inferred.aux_heads) == (adapter.heads, adapter.aux_heads)
    assert inferred.verified_against == name


def test_a_wrong_inference_is_refuted_by_the_builder_and_not_registered() -> None:
    model = Reordered()
    with pytest.raises(inference.HeadInferenceError) as caught:
        inference.adopt(model, build=lambda n: build_model("resnet18", num_classes=n, structural=True))
    message = str(caught.value)
    assert "took 'layer4.1.bn2'" not in message  # BatchNorm is never a candidate
    assert "took 'layer4.1.conv2'" in message and "fc.bias, fc.weight" in message
    assert "register_adapter(Reordered, heads=['fc'])" in message
    assert heads.find_adapter(model) is None


def test_nothing_to_infer_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(inference.HeadInferenceError, match=r"no Linear or Conv layer.*register_adapter"):
        inference.infer_head(nn.Sequential(nn.ReLU(), nn.Flatten()))


def _suite(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(zoo_fallback_models=MODELS)
    header = "from pytest_zoo import InputSpec, ZooConformance\nfrom zoo_fallback_models import *\n"
    pytester.makepyfile(test_fallback_suite=header + body)


def test_suite_infers_verifies_and_reports(pytester: pytest.Pytester) -> None:
    """A conformance class over a class no adapter knows: every check passes on the inferred head,
    which was verified against torchvision's resnet18(num_classes=n), and the report says so."""
    _suite(
        pytester,
        """
class TestUntabled(ZooConformance):
    models = ("resnet18",)

    def build_model(self, name):
        return Untabled()
""",
    )
    result = pytester.runpytest("--zoo-examples=2", "-p", "no:randomly", "-k", "not weights_metadata")
    result.assert_outcomes(passed=10, skipped=1)  # 5 shape checks, 5 value checks; not pretrained
    result.stdout.fnmatch_lines(
        [
            "*HeadInferredWarning: resnet18: head inferred for zoo_fallback_models.Untabled: head 'fc' "
            "(1000 outputs, the last Linear/Conv layer); "
            "verified against torchvision's resnet18(num_classes=n)*"
        ]
    )


def test_suite_fails_a_refuted_inference_with_the_fix(pytester: pytest.Pytester) -> None:
    _suite(
        pytester,
        """
class TestReordered(ZooConformance):
    models = ("resnet18",)

    def build_model(self, name):
        return Reordered()
""",
    )
    result = pytester.runpytest("-p", "no:randomly", "-k", "head_matches_builder or freeze_counts")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*inferred the head of zoo_fallback_models.Reordered wrongly: it took 'layer4.1.conv2'*"
            "changes exactly these parameters with num_classes: fc.bias, fc.weight*",
            "*register_adapter(Reordered, heads=[[]'fc'[]])*",
        ]
    )


def test_suite_without_a_builder_says_the_inference_is_unverified(pytester: pytest.Pytester) -> None:
    _suite(
        pytester,
        """
class TestTiny(ZooConformance):
    models = ("tinynet",)
    builder_oracle = False

    def build_model(self, name):
        return TinyNet()

    def input_spec(self, name):
        return InputSpec(3, span=8)
""",
    )
    result = pytester.runpytest(
        "--zoo-examples=2", "-p", "no:randomly", "-rs", "-k", "freeze_counts or forward_shape"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*HeadInferredWarning*head 'classifier.1'*unverified: no builder with num_classes*"]
    )
