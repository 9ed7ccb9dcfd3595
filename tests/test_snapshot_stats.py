"""Fingerprints compare distributions, not draws: a redraw passes, a changed initialiser is named.

The unit tests draw real tensors with ``torch.nn.init`` (the initialisers torchvision's builders
use) at the sizes of real layers; the session test plants initialiser changes into real builders
inside a pytester run and checks the snapshot comparison names each one, grouped by cause.
``benchmarks/seed_sweep.py`` measures the first half on the whole zoo.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from pytest_zoo.snapshot import diff_facts
from pytest_zoo.snapshot.stats import SIGMAS, cause, judge, scores, summarise

Init = Callable[[torch.Tensor], object]


def _drawn(init: Init, shape: tuple[int, ...], seed: int) -> list[float | str | None]:
    # not torch.manual_seed: it imports torch._dynamo on first use, which fails once an in-process
    # pytester run elsewhere in the session has restored sys.modules
    torch.random.default_generator.manual_seed(seed)
    tensor = torch.empty(shape)
    init(tensor)
    return summarise(tensor)


REDRAWN: dict[str, Init] = {
    "kaiming_normal fan_out": lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"),
    "kaiming_uniform a=sqrt5": lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)),
    "trunc_normal std=.02": lambda t: nn.init.trunc_normal_(t, std=0.02),
    "trunc_normal at 2 std": lambda t: nn.init.trunc_normal_(t, std=1.0, a=-2.0, b=2.0),
    "normal mean 1": lambda t: nn.init.normal_(t, mean=1.0, std=0.02),
    "sparse": lambda t: nn.init.sparse_(t.view(t.shape[0], -1), sparsity=0.3),
    "ones": nn.init.ones_,
}


@pytest.mark.parametrize("shape", [(16,), (10, 10), (64, 3, 7, 7), (256, 1024)], ids=str)
@pytest.mark.parametrize("init", list(REDRAWN), ids=str)
def test_a_redraw_from_the_same_initialiser_is_no_change(init: str, shape: tuple[int, ...]) -> None:
    if len(shape) < 2 and init.startswith(("kaiming", "sparse")):
        pytest.skip("fans and sparsity need a matrix")
    draws = [_drawn(REDRAWN[init], shape, seed) for seed in range(10 if math.prod(shape) < 10**5 else 3)]
    for before in draws:
        for after in draws:
            assert judge(before, after, list(shape)) == [], (before, after)
            assert all(z <= SIGMAS / 2 for z in scores(before, after, list(shape)).values())


def _kaiming(**kw: object) -> Init:
    return lambda t: nn.init.kaiming_normal_(t, **kw)  # type: ignore[arg-type]


# (before, after, shape, the kind the finding is grouped by, words its detail must say)
PLANTED: dict[str, tuple[Init, Init, tuple[int, ...], str, str]] = {
    "gain relu -> linear": (
        _kaiming(nonlinearity="relu"),
        _kaiming(nonlinearity="linear"),
        (128, 128, 3, 3),
        "std x0.71",
        "(x0.70",
    ),
    "fan_in -> fan_out": (
        _kaiming(mode="fan_in"),
        _kaiming(mode="fan_out"),
        (128, 64, 3, 3),
        "fan mode fan_in -> fan_out",
        "sqrt(64/128) = 0.7071: fan_in -> fan_out",
    ),
    "normal -> uniform, same std": (
        _kaiming(nonlinearity="relu"),
        lambda t: nn.init.kaiming_uniform_(t, nonlinearity="relu"),
        (128, 64, 3, 3),
        "distribution normal-like -> uniform-like",
        "kurtosis 3",
    ),
    "truncation at 3 std -> 2 std": (
        lambda t: nn.init.trunc_normal_(t, std=0.02, a=-0.06, b=0.06),
        lambda t: nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04),
        (768, 3, 16, 16),
        "range changed",
        "range [-0.06, 0.06] -> [-0.04, 0.04]",
    ),
    "constant 1 -> 0": (nn.init.ones_, nn.init.zeros_, (256,), "constant changed", "constant 1 -> 0"),
    "constant -> random": (
        nn.init.zeros_,
        lambda t: nn.init.normal_(t, std=1e-3),
        (1000,),
        "constant <-> random",
        "constant 0 -> random",
    ),
    "sparsity 0.1 -> 0.5": (
        lambda t: nn.init.sparse_(t, sparsity=0.1),
        lambda t: nn.init.sparse_(t, sparsity=0.5),
        (100, 100),
        "zeros changed",
        "fraction of zeros 10.000% -> 50.000%",
    ),
}


@pytest.mark.parametrize("case", list(PLANTED), ids=str)
def test_a_changed_initialiser_is_found_and_named(case: str) -> None:
    before_init, after_init, shape, kind, words = PLANTED[case]
    before, after = _drawn(before_init, shape, 0), _drawn(after_init, shape, 1)
    findings = judge(before, after, list(shape))
    assert kind in [f.kind for f in findings], findings
    assert any(words in f.detail for f in findings), findings
    # and through diff_facts, as a snapshot comparison sees it
    facts = [{"state_dict": {"w": list(shape)}, "fingerprint": {"params": {"w": s}}} for s in (before, after)]
    (change,) = diff_facts(*facts)
    assert change.path == ("fingerprint", "params", "w") and change.kind == cause(findings)


def test_a_format_1_summary_compares_by_mean_and_std_with_the_size_from_the_state_dict() -> None:
    """Snapshots recorded before format 2 hold ``[mean, std]``: still judged, as samples."""
    shape = [64, 3, 7, 7]
    old = _drawn(_kaiming(), (64, 3, 7, 7), 0)[:2]
    redraw, doubled = _drawn(_kaiming(), (64, 3, 7, 7), 1), _drawn(_kaiming(), (64, 3, 7, 7), 1)
    doubled[1] = float(doubled[1] or 0) * 2  # type: ignore[arg-type]
    assert judge(old, redraw, shape) == []
    assert [f.kind for f in judge(old, doubled, shape)] == ["std x2"]
    assert judge(old, doubled[:2], None) == []  # without a size there is no telling: no false alarm


PLANT_INITIALISERS = """
import math

from torch import nn
from torchvision.models import _api, mnasnet, shufflenetv2, squeezenet

import os

PLANT = os.environ.get("PLANT") == "1"


class TruncNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 256)
        self.fc = nn.Linear(256, num_classes)
        bound = 0.04 if PLANT else 0.06  # truncation at 2 std instead of 3
        nn.init.trunc_normal_(self.proj.weight, std=0.02, a=-bound, b=bound)

    def forward(self, x):
        return self.fc(self.proj(x.mean((2, 3)).repeat(1, 22)[:, :64]))


@_api.register_model(name="zoo_trunc_net")
def zoo_trunc_net(*, weights=None, progress=True, **kwargs):
    return TruncNet(**kwargs)


def wrap(cls, plant):
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if PLANT:
            plant(self)

    cls.__init__ = __init__


def fan_in(model):  # MNASNet initialises its convs with mode="fan_out"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


def normal_not_uniform(model):  # ShuffleNetV2 keeps torch's kaiming_uniform_(a=sqrt(5)): same std
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.weight[0].numel()
            nn.init.normal_(m.weight, std=1 / math.sqrt(3 * fan))


def biases(model):  # SqueezeNet's conv biases start at 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.bias, 0.01)


wrap(mnasnet.MNASNet, fan_in)
wrap(shufflenetv2.ShuffleNetV2, normal_not_uniform)
wrap(squeezenet.SqueezeNet, biases)
"""


def test_planted_initialiser_changes_in_real_builders_are_reported_by_cause(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(PLANT_INITIALISERS)
    select = ["-k", "(mnasnet0_5 or shufflenet_v2_x0_5 or squeezenet1_1 or zoo_trunc_net) and not quantized"]
    args = ["-p", "no:cacheprovider", "--zoo-snapshot=zoo.json", *select]
    pytester.runpytest_subprocess(*args, "--zoo-snapshot-update").assert_outcomes(passed=4)
    assert pytester.runpytest_subprocess(*args).ret == 0  # a second, identical draw

    monkeypatch.setenv("PLANT", "1")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(failed=4)
    # each model's failure names the tensors and what their statistics say
    result.stdout.fnmatch_lines(
        [
            "*mnasnet0_5 changed in * field(s): fingerprint (*)",
            "  fingerprint.params[[]layers.0.weight]: std * (x*, * standard errors; sqrt(3/16) = 2.309: "
            "fan_out -> fan_in)",
        ]
    )
    result.stdout.fnmatch_lines(["*kurtosis 1.8* -> 3* (uniform-like -> normal-like, * standard errors)*"])
    result.stdout.fnmatch_lines(["*fingerprint.params[[]features.0.bias]: constant 0 -> 0.01"])
    result.stdout.fnmatch_lines(
        # truncated at two standard deviations (0.02): the extremes of the draw sit just inside
        ["*fingerprint.params[[]proj.weight]: *range [[]-0.059*, 0.059*] -> [[]-0.0[34]*, 0.0[34]*]"]
    )
    # the summary: one line per cause, across models
    out = result.stdout.str()
    summary = out[out.index("by cause, across models") :]
    assert "fingerprint: constant changed [" in summary and "squeezenet1_1 (" in summary
    assert "fingerprint: distribution uniform-like -> normal-like" in summary
    assert "shufflenet_v2_x0_5" in summary
    assert (
        "fingerprint: std changed, distribution normal-like -> truncated-normal-like [1 tensor in 1 model]: "
        "zoo_trunc_net proj.weight" in summary
    )
    assert "fingerprint: fan mode fan_out -> fan_in [" in summary and "mnasnet0_5 (" in summary
