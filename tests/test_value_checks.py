"""The value checks in real sessions: each passes a correct user implementation and fails a broken one.

The broken implementations are the ones fine-tuning projects really ship: a freeze whose BatchNorm
statistics keep moving, a freeze that ``model.train()`` undoes, a head kept outside the state_dict,
a ``.view`` head that breaks on channels_last, a head with data-dependent control flow, a head from
uninitialised memory, a head that mixes samples across the batch. The check bodies themselves are
unit-tested in ``tests/test_training.py``; here the gate runs them through the user's hooks.
"""

from __future__ import annotations

import textwrap

import pytest
import torch  # noqa: F401  (in-process pytester runs must not re-import torch)

GATE = """
    import torch
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import InputSpec, NormPolicy, ZooConformance

    class Head(nn.Module):
        \"\"\"A functional head for a ResNet body that stops before pooling.\"\"\"

        def __init__(self, features, num_classes):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(features * 4, num_classes)

        def forward(self, x):
            x = self.pool(x)
            return self.fc(FLATTEN)

    class TestGate(ZooConformance):
        models = ("resnet18",)
        test_replace_head_keeps_dtype_and_device = None
        POLICY

        def build_model(self, name):
            return resnet18(weights=None)

        def replace_head(self, model, num_classes):
            body = nn.Sequential(*list(model.children())[:-2])
            return nn.Sequential(body, Head(512, num_classes))

        def freeze_backbone(self, model):
            FREEZE
"""

FREEZE = "model[0].requires_grad_(False)"


def gate(**changes: str) -> str:
    source = textwrap.dedent(GATE)
    defaults = {"FLATTEN": "x.flatten(1)", "POLICY": "", "FREEZE": FREEZE}
    for key, value in {**defaults, **changes}.items():
        assert key in source, key
        source = source.replace(key, value)
    return source


def run(pytester: pytest.Pytester, source: str, check: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_gate=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--zoo-examples=1", "-k", check, *args)


VALUE_CHECKS = "training_step or finite or round_trip or batch_equivalence or channels_last"


def test_a_correct_functional_gate_passes_every_value_check(pytester: pytest.Pytester) -> None:
    result = run(pytester, gate(), VALUE_CHECKS)
    result.assert_outcomes(passed=5)


def test_statistics_that_move_under_a_declared_frozen_policy_fail_the_training_step(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, gate(POLICY='norm_policy = NormPolicy(stats="frozen")'), "training_step")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: the training step: running statistics moved in 20 backbone normalisation layers "
            "(0.1, 0.4.0.bn1, *) under a frozen-statistics policy*",
            "*hook:*freeze_backbone -> TestGate.freeze_backbone (test_gate.py:*)",
        ]
    )


def test_a_freeze_that_model_train_undoes_fails_the_training_step(pytester: pytest.Pytester) -> None:
    """``.eval()`` on the backbone once, as many freezes do: the check calls ``model.train()`` first."""
    frozen_by_eval = "model[0].eval(); model[0].requires_grad_(False)"
    policy = 'norm_policy = NormPolicy(stats="frozen")'
    result = run(pytester, gate(POLICY=policy, FREEZE=frozen_by_eval), "training_step")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*model.train() put them back in train mode*"])
    hooked = (
        "model[0].requires_grad_(False)\n"
        "        for m in model[0].modules():\n"
        "            if isinstance(m, nn.BatchNorm2d):\n"
        "                m.register_forward_pre_hook(lambda module, args: setattr(module, 'training', False))"
    )
    result = run(pytester, gate(POLICY=policy, FREEZE=hooked), "training_step")
    result.assert_outcomes(passed=1)


def test_a_freeze_that_leaves_the_backbone_trainable_fails_the_training_step(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, gate(FREEZE="model[0][0].requires_grad_(False)"), "training_step")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*that must stay frozen changed in one SGD step over model.parameters()*"])


def test_a_head_kept_outside_the_state_dict_fails_the_round_trip(pytester: pytest.Pytester) -> None:
    source = gate().replace(
        "return nn.Sequential(body, Head(512, num_classes))",
        "wrapper = nn.Sequential(body, nn.Identity())\n"
        "        wrapper.heads = [Head(512, num_classes)]  # a plain list: not in the state_dict\n"
        "        wrapper.forward = lambda x: wrapper.heads[0](body(x))\n"
        "        return wrapper",
    )
    result = run(pytester, source, "round_trip")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*the state_dict round trip:*some state the outputs depend on is not in state_dict*"]
    )


def test_a_view_head_fails_on_channels_last(pytester: pytest.Pytester) -> None:
    # Inputs of 64 pixels: the body's feature map is then 2x2 and channels_last really permutes it.
    sized = "def input_spec(self, name):\n        return InputSpec(min_size=64, span=0)"
    result = run(pytester, gate(FLATTEN="x.flatten(1)", POLICY=sized), "channels_last")
    result.assert_outcomes(passed=1)
    result = run(pytester, gate(FLATTEN="x.view(x.size(0), -1)", POLICY=sized), "channels_last")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*channels_last / autocast:*view size is not compatible*"])


def test_a_head_with_data_dependent_control_flow_fails_to_export(pytester: pytest.Pytester) -> None:
    opt_in = 'deploy = ("export",)'
    result = run(pytester, gate(POLICY=opt_in), "deployability")
    result.assert_outcomes(passed=1)
    gated = "(x.flatten(1) if x.sum() > 0 else -x.flatten(1))"
    result = run(pytester, gate(POLICY=opt_in, FLATTEN=gated), "deployability")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*resnet18: deployability: export raised*"])


def test_deployability_is_collected_only_when_a_class_opts_in(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=gate())
    result = pytester.runpytest_subprocess("--co", "-q", "-p", "no:cacheprovider")
    result.stdout.no_fnmatch_line("*test_deployability*")
    result.stdout.fnmatch_lines(["*test_training_step[[]resnet18[]]*"])


def test_a_head_from_uninitialised_memory_fails_the_finite_check(pytester: pytest.Pytester) -> None:
    source = gate().replace(
        "self.fc = nn.Linear(features * 4, num_classes)",
        "self.fc = nn.Linear(features * 4, num_classes)\n"
        "        self.fc.weight = nn.Parameter(torch.empty(num_classes, features * 4))",
    )
    result = run(pytester, source, "finite")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*finite outputs and gradients: 1 parameters/buffers hold NaN or inf*1.fc*"])


def test_a_head_that_mixes_samples_fails_batch_equivalence(pytester: pytest.Pytester) -> None:
    result = run(pytester, gate(FLATTEN="(x - x.mean(0, keepdim=True)).flatten(1)"), "batch_equivalence")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*batch equivalence:*the model mixes samples*"])


def test_value_checks_skip_on_the_meta_device_with_their_reason(pytester: pytest.Pytester) -> None:
    result = run(pytester, gate(), VALUE_CHECKS, "--zoo-device=meta", "-rs")
    result.assert_outcomes(skipped=5)
    result.stdout.fnmatch_lines(
        ["*the training step needs tensor values, which --zoo-device=meta does not have*"]
    )


RESNET_PROJECT = """
    import torch
    from torch import nn
    from torchvision.models import resnet18

    from pytest_zoo import ZooConformance

    def pooling(pool):
        class Pool(nn.Module):
            def forward(self, x):
                return pool(x, *x.shape[:2])

        return Pool()

    class Project(ZooConformance):
        models = ("resnet18",)
        pool = None

        def build_model(self, name):
            return resnet18(weights=None)

        def replace_head(self, model, num_classes):
            model.avgpool = pooling(type(self).pool)
            model.fc = nn.Linear(512, num_classes)

    class TestMergesBatchAndChannels(Project):
        pool = staticmethod(lambda x, b, c: x.view(b * c, -1).mean(1).view(b, c))

    class TestKeepsChannels(Project):
        pool = staticmethod(lambda x, b, c: x.view(b, c, -1).mean(-1))

    class TestAdaptive(Project):
        pool = staticmethod(lambda x, b, c: torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    class TestMixesBatchAndSpace(Project):
        pool = staticmethod(lambda x, b, c: x.flatten(2).transpose(1, 2).reshape(-1, b, c).mean(0))
"""


def test_layout_and_batch_checks_feed_a_resnet_maps_larger_than_1x1(pytester: pytest.Pytester) -> None:
    """At 32 pixels a ResNet's last map is 1x1, where every layout is contiguous, any ``.view``
    succeeds and a reshape cannot mix samples with positions: the checks widen the input (to 33
    pixels) so that the last map is 2x2. A ``.view`` merging channels with anything else then fails
    on channels_last; one that keeps the channel dimension whole (``x.view(B, C, -1).mean(-1)``) is
    layout-safe and passes like the adaptive pool; a reshape that pools across the batch fails
    batch equivalence. On main's 32-pixel inputs all four passed both checks."""
    pytester.makepyfile(test_gate=textwrap.dedent(RESNET_PROJECT))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "-k", "channels_last or batch_equivalence"
    )
    result.assert_outcomes(failed=2, passed=6)
    result.stdout.fnmatch_lines_random(
        [
            "*TestMergesBatchAndChannels::test_channels_last_and_autocast[[]resnet18[]] FAILED*",
            "*TestMixesBatchAndSpace::test_batch_equivalence[[]resnet18[]] FAILED*",
            "*channels_last / autocast: the torch.channels_last forward raised RuntimeError: view size is "
            "not compatible*; a .view on a non-contiguous channels_last tensor*",
            "*batch equivalence:*the model mixes samples*",
            "*the diverging values start in 'avgpool' (Pool, torch.float32), which replace_head or "
            "freeze_backbone introduced or changed*",
            "*input shape=(2, 3, 33, 33)*",
        ]
    )


def test_the_round_trip_moves_running_statistics_before_saving(pytester: pytest.Pytester) -> None:
    """A statistic kept outside the state_dict equals a fresh model's until training moves it: the
    round trip runs one train-mode forward first, as fine-tuning would."""
    source = (
        gate()
        .replace(
            "self.fc = nn.Linear(features * 4, num_classes)",
            "self.fc = nn.Linear(features * 4, num_classes)\n"
            "        self.register_buffer('center', torch.zeros(features * 4), persistent=False)",
        )
        .replace(
            "return self.fc(x.flatten(1))",
            "x = x.flatten(1)\n"
            "        if self.training:\n"
            "            self.center.mul_(0.9).add_(0.1 * x.mean(0))\n"
            "        return self.fc(x - self.center)",
        )
    )
    result = run(pytester, source, "round_trip")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*the state_dict round trip:*some state the outputs depend on is not in state_dict*"]
    )


SQUEEZENET = """
    import torch
    from torch import nn
    from torchvision.models import squeezenet1_1

    from pytest_zoo import ZooConformance

    class Centered(nn.Module):
        def __init__(self, channels, num_classes):
            super().__init__()
            self.conv = nn.Conv2d(channels, num_classes, 1)
            self.register_buffer("center", torch.zeros(num_classes, 1, 1), persistent=False)

        def forward(self, x):
            x = self.conv(x)
            if self.training:
                self.center.mul_(0.9).add_(0.1 * x.mean((0, 2, 3))[:, None, None])
            return x - self.center

    def shifted(num_classes):
        conv = nn.Conv2d(512, num_classes, 1)
        conv.shift = torch.zeros(())  # a plain attribute: not in the state_dict

        def shift(module, args, output):
            if module.training:
                module.shift = output.detach().mean()
            return output + module.shift

        conv.register_forward_hook(shift)
        return conv

    class TestGate(ZooConformance):
        models = ("squeezenet1_1",)

        def build_model(self, name):
            return squeezenet1_1(weights=None)

        def replace_head(self, model, num_classes):
            model.classifier[1] = HEAD
            return model
"""


@pytest.mark.parametrize(
    ("head", "outcome"),
    [
        ("nn.Conv2d(512, num_classes, 1)", "passed"),
        ("Centered(512, num_classes)", "failed"),  # a class of the user's: its code may keep state
        ("shifted(num_classes)", "failed"),  # torch's own class, with a hook that keeps state
    ],
)
def test_a_model_without_statistics_still_gets_its_hidden_state_moved(
    pytester: pytest.Pytester, head: str, outcome: str
) -> None:
    """A BatchNorm-free model of torch's and torchvision's own classes skips the train-mode
    forward before the round trip (it provably writes nothing); code of the user's never does."""
    result = run(pytester, textwrap.dedent(SQUEEZENET).replace("HEAD", head), "round_trip")
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(
            ["*the state_dict round trip:*some state the outputs depend on is not in state_dict*"]
        )
