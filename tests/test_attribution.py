"""Value checks attribute a wrong value before they blame a hook.

A planted layer plays torch 2.14.1's bfloat16 ``Conv3d``: under autocast it returns NaN at random,
from its own RNG, so that a rerun need not repeat it. In the backbone (a module no hook touched)
the check skips naming the module and torch; in the head ``replace_head`` builds, it fails naming
the hook. The same holds for the finite-outputs check (a train-mode NaN) and batch equivalence (a
layer that mixes samples). The models are tiny: the 20 repeats cost well under a second each.
"""

from __future__ import annotations

import re
import textwrap

import pytest
import torch

GATE = """
    import random

    import torch
    from torch import nn

    from pytest_zoo import ZooConformance

    class Flaky(nn.Module):
        \"\"\"NaN under autocast with probability 1/2, drawn from its own RNG; each draw logged.\"\"\"

        def __init__(self, name):
            super().__init__()
            self.name = name
            self.rng = random.Random()

        def forward(self, x):
            try:
                enabled = torch.is_autocast_enabled("cpu")
            except TypeError:  # torch < 2.4 takes no device type
                enabled = torch.is_autocast_cpu_enabled()
            if not enabled:
                return x
            nan = self.rng.random() < 0.5
            with open("draws.txt", "a") as log:
                log.write(f"{self.name} {'nan' if nan else 'ok'}\\n")
            return x * float("nan") if nan else x

    class NanInTraining(nn.Module):
        def forward(self, x):
            return x * float("nan") if self.training else x

    class MixesSamples(nn.Module):
        def forward(self, x):
            return x - x.mean(0, keepdim=True)

    def body(*layers):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), *layers, nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())

"""


CLASS = """
class Test{where}(ZooConformance):
    models = tuple(f"{where}_{{i}}" for i in range({repeats}))

    def build_model(self, name):
        return nn.Sequential(body({backbone}), nn.Linear(8, 10))

    def replace_head(self, model, num_classes):
        model[1] = nn.Sequential({head}, nn.Linear(8, num_classes))

    def freeze_backbone(self, model):
        model[0].requires_grad_(False)
"""


def gate(layer: str, repeats: int = 1) -> str:
    """The planted ``layer`` in the backbone of one gate class and in the head of another."""
    plain = "nn.Identity()"
    return "\n".join(
        [
            textwrap.dedent(GATE),
            CLASS.format(where="backbone", repeats=repeats, backbone=layer, head=plain),
            CLASS.format(where="head", repeats=repeats, backbone=plain, head=layer),
        ]
    )


def run(pytester: pytest.Pytester, source: str, check: str) -> pytest.RunResult:
    pytester.makepyfile(test_gate=source)
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", "-v", "-rs", "-k", check
    )


def outcomes(result: pytest.RunResult, check: str) -> dict[str, str]:
    """``{model name: PASSED/SKIPPED/FAILED}`` from the verbose lines."""
    pattern = re.compile(rf"::{check}\[(\w+)\] (PASSED|SKIPPED|FAILED)")
    return dict(m.groups() for m in map(pattern.search, result.outlines) if m)


def draws(pytester: pytest.Pytester) -> dict[str, str]:
    log = pytester.path / "draws.txt"
    lines = log.read_text().split("\n") if log.exists() else []
    return dict(line.split() for line in lines if line)


def test_a_random_autocast_nan_skips_naming_torch_in_the_backbone_and_fails_in_the_head(
    pytester: pytest.Pytester,
) -> None:
    check = "test_channels_last_and_autocast"
    result = run(pytester, gate("Flaky(self.model_name)", repeats=20), check)
    found, drawn = outcomes(result, check), draws(pytester)
    assert len(found) == len(drawn) == 40, result.stdout.str()[-3000:]
    # Each repeat is judged by what happened in it: no NaN drawn passes; a NaN drawn in the backbone
    # skips (20 of 20 never fail), the same NaN in the head fails.
    verdict = {"backbone": "SKIPPED", "head": "FAILED"}
    assert found == {m: verdict[m.split("_")[0]] if d == "nan" else "PASSED" for m, d in drawn.items()}
    for where in verdict:  # 20 fair draws all "ok": probability 2**-20
        assert any(d == "nan" for m, d in drawn.items() if m.startswith(where)), drawn
    reasons = [line for line in result.outlines if line.startswith("SKIPPED [")]  # -rs groups equal ones
    nans = [m for m, d in drawn.items() if d == "nan" and m.startswith("backbone")]
    assert sum(int(line.split("[")[1].split("]")[0]) for line in reasons) == len(nans)
    for reason in reasons:
        assert re.search(
            r"channels_last / autocast: the non-finite values start in '0\.2' \(Flaky, torch\.bfloat16\), "
            rf"a module the hooks did not introduce or change.*torch {re.escape(torch.__version__)}'s kernel "
            r"or the architecture's problem, not the hooks'",
            reason,
        ), reason
    result.stdout.fnmatch_lines(
        [
            "*head_*: channels_last / autocast: output 'output' under autocast torch.bfloat16 is not finite*",
            "*hook:*freeze_backbone -> Testhead.freeze_backbone (test_gate.py:*)",
            "*the non-finite values start in '1.0' (Flaky, torch.bfloat16), which replace_head or "
            "freeze_backbone introduced or changed*",
        ]
    )


def test_finite_outputs_and_batch_equivalence_attribute_before_blaming(pytester: pytest.Pytester) -> None:
    source = gate("NanInTraining()").replace("NanInTraining()", "NanInTraining(), MixesSamples()")
    result = run(pytester, source, "finite or batch")
    result.assert_outcomes(skipped=2, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*finite outputs and gradients: the non-finite values start in '0.2' (NanInTraining, "
            "torch.float32), a module the hooks did not introduce or change*",
            "*batch equivalence: the diverging values start in '0.3' (MixesSamples, torch.float32), "
            "a module the hooks did not introduce or change*",
            "*head_0: finite outputs and gradients: train-mode output 'output' is not finite*",
            "*the non-finite values start in '1.0' (NanInTraining, torch.float32), which replace_head "
            "introduced or changed*",
            "*head_0: batch equivalence:*the model mixes samples*",
            "*the diverging values start in '1.1' (MixesSamples, torch.float32), which replace_head or "
            "freeze_backbone introduced or changed*",
        ]
    )


def test_a_reused_sum_never_hides_an_in_place_write() -> None:
    """A tensor's sum is reused while its version counter stands still: the output of one module is
    the next one's input. A layer that writes NaN into its input in place (after that input was
    summed, as the previous layer's output) is still where the non-finite values start."""
    from torch import nn

    from pytest_zoo.conformance.attribution import Recorder, origin

    class Poison(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(float("nan"))

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Poison(), nn.Linear(4, 2))
    with torch.no_grad(), Recorder(model) as recorder:
        model(torch.randn(2, 4))
    start = origin(recorder, changed=())
    assert start is not None and (start.path, start.kind, start.what) == ("2", "Poison", "non-finite")
