"""The gate judges real fine-tuning code by what it must guarantee, not by how the kit would write it.

Every case runs a real pytest session over a gate class, in a correct variant that must pass and a
broken one that must fail naming the defect and the hook to blame. Where the best proof is real
third-party code, it is used as is: timm's models and ``reset_classifier``/``freeze``, and
Lightning's ``BaseFinetuning.freeze(..., train_bn=True)``.
"""

from __future__ import annotations

import textwrap

import pytest
import torch  # noqa: F401  (in-process pytester runs must not re-import torch)

from pytest_zoo import InputSpec


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_gate=textwrap.dedent(source))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--zoo-examples=1", *args)


# A downstream project's model code, written the obvious way: torchvision's defaults, one head
# path per architecture, the new head created in place with nn.Linear/nn.Conv2d.
DOWNSTREAM = """
    import pytest
    from torch import nn
    from torchvision.models import get_model

    from pytest_zoo import ZooConformance

    HEADS = {
        "ResNet": "fc", "VGG": "classifier.6", "GoogLeNet": "fc", "Inception3": "fc",
        "SqueezeNet": "classifier.1", "VisionTransformer": "heads.head", "MobileNetV3": "classifier.3",
        "EfficientNet": "classifier.1", "DenseNet": "classifier",
    }

    def build(name):
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return get_model(name, weights=None, **kwargs)

    def swap_head(model, num_classes):
        path = HEADS[type(model).__name__]
        parent, _, attr = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = getattr(owner, attr) if not attr.isdigit() else owner[int(attr)]
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        else:
            new = nn.Linear(old.in_features, num_classes)
        if attr.isdigit():
            owner[int(attr)] = new
        else:
            setattr(owner, attr, new)
        return model

    def freeze(model):
        head = HEADS[type(model).__name__]
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(head + ".")

    class TestDownstream(ZooConformance):
        models = MODELS
        # We swap heads before moving the model to its device, so a float32 head is fine for us.
        test_replace_head_keeps_dtype_and_device = None

        def build_model(self, name):
            return build(name)

        def replace_head(self, model, num_classes):
            return swap_head(model, num_classes)

        def freeze_backbone(self, model):
            freeze(model)
"""

DOWNSTREAM_MODELS = (
    "resnet18",
    "vgg11",
    "googlenet",
    "inception_v3",
    "squeezenet1_1",
    "vit_b_32",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "densenet121",
)


def test_a_downstream_project_with_torchvision_defaults_passes(pytester: pytest.Pytester) -> None:
    """Case 1: built with plain ``get_model(name, weights=None)`` (ViT at 224, GoogLeNet and Inception
    without aux heads), the project passes every check, with one build per model."""
    source = DOWNSTREAM.replace("models = MODELS", f"models = {DOWNSTREAM_MODELS!r}")
    result = run(pytester, source, "-k", "not weights_metadata")
    # 4 shape checks, 5 value checks; test_pretrained_weights_reach_model skips (from scratch)
    result.assert_outcomes(passed=9 * len(DOWNSTREAM_MODELS), skipped=len(DOWNSTREAM_MODELS))
    result.stdout.fnmatch_lines([f"*pytest-zoo cache: {len(DOWNSTREAM_MODELS)} model build(s)*"])


def test_a_hard_coded_in_features_on_vit_fails_blaming_replace_head(pytester: pytest.Pytester) -> None:
    source = DOWNSTREAM.replace("models = MODELS", "models = ('vit_b_32',)").replace(
        "new = nn.Linear(old.in_features, num_classes)", "new = nn.Linear(512, num_classes)"
    )
    result = run(pytester, source, "-k", "head_matches")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*vit_b_32: the model's state_dict after replace_head differs from torchvision's "
            "vit_b_32(num_classes=n, image_size=224)*",
            "*hook:*replace_head -> TestDownstream.replace_head (test_gate.py:*)",
            "*heads.head.weight takes 512 input features where the layer it replaced took 768*",
        ]
    )


FUNCTIONAL = """
    import torch
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import ZooConformance

    class TestFunctional(ZooConformance):
        models = ("resnet18",)

        def build_model(self, name):
            return resnet18(weights=None)

        def replace_head(self, model, num_classes):
            body = nn.Sequential(*list(model.children())[:-1], nn.Flatten())
            head = nn.Linear(model.fc.in_features, num_classes, dtype=model.fc.weight.dtype)
            return nn.Sequential(body, head)

        def freeze_backbone(self, model):
            for parameter in model[0].parameters():
                parameter.requires_grad = False
"""


def test_a_functional_head_swap_is_the_model_every_check_uses(pytester: pytest.Pytester) -> None:
    """Case 2: ``replace_head`` returns a new ``nn.Sequential(body, head)`` reusing the body."""
    result = run(pytester, FUNCTIONAL, "-k", "not weights_metadata")
    result.assert_outcomes(passed=10, skipped=1)


def test_a_functional_swap_whose_freeze_freezes_the_new_head_fails(pytester: pytest.Pytester) -> None:
    broken = FUNCTIONAL.replace("model[0].parameters()", "model.parameters()")
    result = run(pytester, broken, "-k", "freeze_counts")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: the wrong parameters are trainable after freeze_backbone*",
            "*hook:*freeze_backbone -> TestFunctional.freeze_backbone (test_gate.py:*)",
            "*should train but frozen: 2 Linear parameters (1.bias, 1.weight)*",
            "*defect:*parameters replace_head introduced (the new head's layers) are frozen*",
            "*reproduce:*",
            "*model = t.replace_head(t.build_model('resnet18'), *); t.freeze_backbone(model)*",
        ]
    )


def test_a_functional_swap_that_ignores_num_classes_fails_blaming_replace_head(
    pytester: pytest.Pytester,
) -> None:
    broken = FUNCTIONAL.replace("model.fc.in_features, num_classes,", "model.fc.in_features, 10,")
    result = run(pytester, broken, "-k", "head_matches or forward_shape")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*replace_head(model, 3) and replace_head(model, 4) give models of identical shapes*",
            "*hook:*replace_head -> TestFunctional.replace_head*",
            "*defect:*replace_head ignores num_classes*",
        ]
    )
    result.stdout.fnmatch_lines(["*main output 'logits' has shape (*, 10): replace_head did not resize*"])


MULTI_LAYER = """
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import ZooConformance

    class TestMultiLayerHead(ZooConformance):
        models = ("resnet18",)
        test_replace_head_keeps_dtype_and_device = None

        def build_model(self, name):
            return resnet18(weights=None)

        def replace_head(self, model, num_classes):
            width = model.fc.in_features
            model.fc = nn.Sequential(
                nn.BatchNorm1d(width), nn.Dropout(0.25), nn.Linear(width, 256), nn.ReLU(),
                nn.Linear(256, num_classes),
            )
            return model

        def freeze_backbone(self, model):
            for name, parameter in model.named_parameters():
                parameter.requires_grad = name.startswith("fc.")
"""


def test_a_multi_layer_new_head_trains_whole(pytester: pytest.Pytester) -> None:
    """Case 3: only the last Linear follows the class count, but every new layer is head."""
    result = run(pytester, MULTI_LAYER, "-k", "not weights_metadata")
    result.assert_outcomes(passed=9, skipped=1)


def test_a_freeze_that_trains_only_the_last_layer_of_a_new_head_fails(pytester: pytest.Pytester) -> None:
    broken = MULTI_LAYER.replace('name.startswith("fc.")', 'name.startswith("fc.4.")')
    result = run(pytester, broken, "-k", "freeze_counts or gradients")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*should train but frozen: 2 BatchNorm1d affine parameters (fc.0.bias, fc.0.weight); "
            "2 Linear parameters (fc.2.bias, fc.2.weight)*",
            "*defect:*parameters replace_head introduced (the new head's layers) are frozen*",
        ]
    )


TRAIN_BN = """
    from pytorch_lightning.callbacks import BaseFinetuning
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import NormPolicy, ZooConformance

    class TestTrainBN(ZooConformance):
        models = ("resnet18",)
        norm_policy = NormPolicy(affine="trainable")

        def build_model(self, name):
            return resnet18(weights=None)

        def freeze_backbone(self, model):
            backbone = [module for name, module in model.named_children() if name != "fc"]
            BaseFinetuning.freeze(backbone, train_bn=TRAIN_BN)
"""


def test_a_declared_train_bn_policy_passes_with_lightnings_freeze(pytester: pytest.Pytester) -> None:
    """Case 4: Lightning's documented ``train_bn=True`` default, declared as the gate's policy."""
    result = run(pytester, TRAIN_BN.replace("TRAIN_BN)", "True)"), "-k", "freeze or gradients")
    result.assert_outcomes(passed=2)


def test_an_undeclared_train_bn_policy_fails_saying_how_to_declare_it(pytester: pytest.Pytester) -> None:
    source = TRAIN_BN.replace("TRAIN_BN)", "True)").replace(
        '    norm_policy = NormPolicy(affine="trainable")\n', ""
    )
    result = run(pytester, source, "-k", "freeze_counts")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*should be frozen but trainable: 40 BatchNorm2d affine parameters*",
            "*defect:*40 BatchNorm affine parameters (weight/bias) are still trainable*"
            "declare it: norm_policy = NormPolicy(affine='trainable')*",
        ]
    )


def test_a_declared_train_bn_policy_the_code_does_not_implement_fails(pytester: pytest.Pytester) -> None:
    result = run(pytester, TRAIN_BN.replace("TRAIN_BN)", "False)"), "-k", "freeze_counts")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*should train but frozen: 40 BatchNorm2d affine parameters*",
            "*defect:*the declared NormPolicy(affine='trainable') keeps the backbone's normalisation "
            "parameters trainable, but 40 of them are frozen*",
        ]
    )


FROZEN_STATS = """
    import timm
    from timm.utils import freeze
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import NormPolicy, ZooConformance

    class TestFrozenStats(ZooConformance):
        models = ("resnet18",)
        norm_policy = NormPolicy(stats="frozen")

        def build_model(self, name):
            return timm.create_model("resnet18", pretrained=False)

        def replace_head(self, model, num_classes):
            model.reset_classifier(num_classes)
            return model

        def freeze_backbone(self, model):
            FREEZE
"""

EVAL_ONCE = """for name, module in model.named_modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
            for name, parameter in model.named_parameters():
                parameter.requires_grad = name.startswith("fc.")"""


def test_frozen_statistics_with_timms_frozen_batchnorm_pass(pytester: pytest.Pytester) -> None:
    """Case 5, correct: timm's ``freeze`` converts the backbone's BatchNorm to FrozenBatchNorm2d
    (on timm's resnet18, whose state_dict is torchvision's, so torchvision's builder is the reference)."""
    source = FROZEN_STATS.replace(
        "FREEZE", 'freeze(model, [n for n, _ in model.named_children() if n != "fc"])'
    )
    result = run(pytester, source, "-k", "freeze or gradients or head_matches")
    result.assert_outcomes(passed=3)


def test_statistics_that_drift_under_a_declared_frozen_policy_fail(pytester: pytest.Pytester) -> None:
    """Case 5, broken: ``.eval()`` once on BatchNorm, undone by ``model.train()``: statistics move."""
    result = run(pytester, FROZEN_STATS.replace("FREEZE", EVAL_ONCE), "-k", "gradients")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: the running statistics of 20 backbone normalisation layers moved during one "
            "train-mode forward*",
            "*hook:*freeze_backbone -> TestFrozenStats.freeze_backbone (test_gate.py:*)",
            "*expected:*NormPolicy(affine='frozen', stats='frozen'): every backbone running_mean*",
            "*found:*moved: bn1.num_batches_tracked, bn1.running_mean, bn1.running_var*",
            "*defect:*requires_grad=False does not stop BatchNorm from updating*",
        ]
    )


OTHER_ZOO = """
    import timm
    from pytest_zoo import ZooConformance

    class TestTimm(ZooConformance):
        models = ("efficientnet_b0",)
        ORACLE
        test_replace_head_keeps_dtype_and_device = None  # reset_classifier builds float32 heads

        def build_model(self, name):
            return timm.create_model(name, pretrained=False)

        def replace_head(self, model, num_classes):
            model.reset_classifier(num_classes)
            return model

        def freeze_backbone(self, model):
            for name, parameter in model.named_parameters():
                parameter.requires_grad = name.startswith("classifier.")
"""


def test_another_zoos_model_under_a_torchvision_name_fails_once_saying_so(pytester: pytest.Pytester) -> None:
    """Case 6: timm's efficientnet_b0 is another network: one failure that says so, no hook blamed."""
    result = run(pytester, OTHER_ZOO.replace("ORACLE", ""), "-k", "not weights_metadata", "-v")
    result.assert_outcomes(failed=1, passed=1, skipped=8)
    result.stdout.fnmatch_lines(
        [
            "*efficientnet_b0: the model build_model returns is not torchvision's efficientnet_b0 "
            "architecture*",
            "*compared:*0 of * state_dict keys agree*first differences:*",
            "*way out:*set builder_oracle = False on TestTimm*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*SKIPPED*architecture differs from torchvision's efficientnet_b0; reported by*"]
    )
    result.stdout.no_fnmatch_line("*freeze_backbone missed them*")


def test_another_zoos_model_with_the_derived_reference_passes(pytester: pytest.Pytester) -> None:
    result = run(
        pytester, OTHER_ZOO.replace("ORACLE", "builder_oracle = False"), "-k", "not weights_metadata"
    )
    result.assert_outcomes(passed=9, skipped=1)


DERIVED = """
    from torch import nn
    from pytest_zoo import ZooConformance

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
            )
            self.classifier = nn.Linear(8, 5)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    class TestTiny(ZooConformance):
        models = ("tiny",)
        builder_oracle = False

        def build_model(self, name):
            return Tiny()

        def input_spec(self, name):
            from pytest_zoo import InputSpec
            return InputSpec(fixed=16)

        def replace_head(self, model, num_classes):
            assert self.model_name == "tiny"  # hooks know the model's name (case 8)
            model.classifier = nn.Linear(8, CLASSES, dtype=model.classifier.weight.dtype)
            return model

        def freeze_backbone(self, model):
            for name, parameter in model.named_parameters():
                parameter.requires_grad = name.startswith("classifier.")
"""


def test_the_derived_reference_passes_a_correct_head_swap(pytester: pytest.Pytester) -> None:
    """Cases 8 and 10: a hook reads ``self.model_name``; ``InputSpec(fixed=16)`` alone is valid."""
    result = run(pytester, DERIVED.replace("CLASSES", "num_classes"), "-k", "not weights_metadata")
    result.assert_outcomes(passed=10, skipped=1)


def test_the_derived_reference_does_not_learn_a_replace_head_that_ignores_num_classes(
    pytester: pytest.Pytester,
) -> None:
    """Case 7: the derived reference must not take the hook's bug as the truth."""
    result = run(pytester, DERIVED.replace("CLASSES", "10"), "-k", "head_matches or freeze_counts")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*tiny: replace_head(model, 3) and replace_head(model, 4) give models of identical shapes*",
            "*hook:*replace_head -> TestTiny.replace_head (test_gate.py:*)",
            "*defect:*replace_head ignores num_classes*",
            "*t = TestTiny(); t.model_name = 'tiny'*",
        ]
    )
    result.stdout.no_fnmatch_line("*freeze_backbone missed them*")


def test_hooks_that_need_the_architecture_read_model_name(pytester: pytest.Pytester) -> None:
    """Case 8: a per-architecture cut point chosen from ``self.model_name``, without tagging the model."""
    source = """
        from torch import nn
        from torchvision.models import get_model
        from pytest_zoo import ZooConformance

        CUT = {"resnet18": "fc", "mobilenet_v3_small": "classifier.3"}

        class TestByName(ZooConformance):
            models = ("resnet18", "mobilenet_v3_small")

            def build_model(self, name):
                return get_model(name, weights=None)

            def freeze_backbone(self, model):
                head = CUT[self.model_name]
                for name, parameter in model.named_parameters():
                    parameter.requires_grad = name.startswith(head + ".")
    """
    result = run(pytester, source, "-k", "freeze_counts")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_kwarg": "image_size"}, "give that size too: InputSpec(fixed=224, size_kwarg='image_size')"),
        ({"min_size": 0}, "min_size must be a positive int, got 0"),
        ({"fixed": 100, "multiple": 16}, "fixed=100 is not a multiple of multiple=16"),
    ],
)
def test_input_spec_errors_say_how_to_write_it(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="Examples: InputSpec") as error:
        InputSpec(**kwargs)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_input_spec_fixed_alone_is_a_fixed_size() -> None:
    assert InputSpec(fixed=224).sizes() == (224, 224)
    assert InputSpec(min_size=32, multiple=16, span=32).sizes() == (32, 64)


# -- the head's bias ------------------------------------------------------------------------------

BIAS = """
    from torch import nn
    from torchvision.models import get_model

    from pytest_zoo import ZooConformance

    HEADS = {"resnet18": "fc", "maxvit_t": "classifier.5"}

    class TestBias(ZooConformance):
        models = MODELS

        def build_model(self, name):
            return get_model(name, weights=None)

        def replace_head(self, model, num_classes):
            parent, _, attr = HEADS[self.model_name].rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            old = owner[int(attr)] if attr.isdigit() else getattr(owner, attr)
            new = nn.Linear(old.in_features, num_classes, BIAS)
            if attr.isdigit():
                owner[int(attr)] = new
            else:
                setattr(owner, attr, new)
            return model
"""


def bias_gate(models: tuple[str, ...], bias: str, declared: str = "") -> str:
    source = BIAS.replace("MODELS", repr(models)).replace("BIAS)", bias + ")")
    return source + (f"\n        head_bias = {declared}\n" if declared else "")


def test_a_head_swap_that_drops_the_builders_bias_fails_naming_it(pytester: pytest.Pytester) -> None:
    result = run(pytester, bias_gate(("resnet18",), "bias=False"), "-k", "head_matches", "--zoo-device=meta")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: a head layer of the builder's type, at the builder's place, differs in its bias "
            "from torchvision's resnet18(num_classes=n)*",
            "*hook:*replace_head -> TestBias.replace_head (test_gate.py:*)",
            "*expected:*{'fc': 'bias=True'}*",
            "*found:*{'fc': 'bias=False'}*",
            "*defect:*the head layer fc (nn.Linear) has no bias: fc.bias, which the builder's layer has, "
            "is missing*declare head_bias = False on TestBias*",
        ]
    )


def test_a_bias_free_head_passes_once_declared(pytester: pytest.Pytester) -> None:
    result = run(
        pytester, bias_gate(("resnet18",), "bias=False", "False"), "-k", "head_matches", "--zoo-device=meta"
    )
    result.assert_outcomes(passed=1)


def test_maxvits_bias_free_head_is_the_builders_and_a_bias_there_is_reported(
    pytester: pytest.Pytester,
) -> None:
    models = ("maxvit_t",)
    passed = run(pytester, bias_gate(models, "bias=False"), "-k", "head_matches", "--zoo-device=meta")
    passed.assert_outcomes(passed=1)
    result = run(pytester, bias_gate(models, "bias=True"), "-k", "head_matches", "--zoo-device=meta")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*defect:*the head layer classifier.5 (nn.Linear) has a bias (classifier.5.bias) that the "
            "builder's layer lacks*"
        ]
    )
