"""Shared pieces of the real-session tests: a tiny gate, project layouts, output parsing.

Every session runs in a subprocess (torch cannot be imported twice in one process). The gate
checks a 3-layer model of its own (``builder_oracle = False``), so a session costs the torch
import and little else.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

# Imported once, at collection: a first import of torch later, after another test file's in-process
# pytester run restored sys.modules, fails inside torch._C.
import torch  # noqa: F401

TINY_GATE = """
import pytest
from torch import nn

from pytest_zoo import ZooConformance


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.features(x))


class TestTiny(ZooConformance):
    models = {models!r}
    builder_oracle = False

    def build_model(self, name):
        model = Tiny()
        model.bad = "bad" in name  # "tinybad" forgets the dtype/device: one failing check
        return model

    def replace_head(self, model, num_classes):
        old = model.fc.weight
        like = {{}} if model.bad else dict(dtype=old.dtype, device=old.device)
        model.fc = nn.Linear(4, num_classes, **like)
        return model

    def freeze_backbone(self, model):
        for p in model.features.parameters():
            p.requires_grad_(False)
"""


def gate_checks() -> list[str]:
    """The checks every ``ZooConformance`` subclass runs (read from the class: the list grows).

    ``test_deployability`` is defined on every class but collected only where something is to be
    deployed (the class's ``deploy`` or ``--zoo-deploy``), so it is not among them.
    """
    from pytest_zoo.checks import ZooConformance

    return sorted(
        n
        for n in dir(ZooConformance)
        if n.startswith("test_") and n != "test_deployability" and getattr(ZooConformance, n)
    )


def expected_gate(models: tuple[str, ...] = ("tinya", "tinybad"), cls: str = "TestTiny") -> dict[str, str]:
    """``{Class::check[model]: outcome}`` of the tiny gate: every check passes but two.

    ``test_default_weights_metadata`` skips (``builder_oracle = False``), so does
    ``test_pretrained_weights_reach_model`` (built from scratch), and ``tinybad``'s head,
    built without the model's dtype, fails ``test_replace_head_keeps_dtype_and_device``.
    """
    found = {f"{cls}::{check}[{model}]": "PASSED" for check in gate_checks() for model in models}
    for model in models:
        found[f"{cls}::test_default_weights_metadata[{model}]"] = "SKIPPED"
        found[f"{cls}::test_pretrained_weights_reach_model[{model}]"] = "SKIPPED"  # from scratch
        if "bad" in model:
            found[f"{cls}::test_replace_head_keeps_dtype_and_device[{model}]"] = "FAILED"
    return found


def tiny_gate(models: tuple[str, ...] = ("tinya", "tinybad")) -> str:
    return TINY_GATE.format(models=models)


_OUTCOME = r"(PASSED|FAILED|SKIPPED|XFAIL|XPASS|ERROR|RERUN)"


def outcomes(lines: list[str]) -> dict[str, str]:
    """``{nodeid: outcome}`` from a ``-v`` run, with or without xdist (``[gw0] PASSED id``)."""
    found = {}
    for line in lines:
        match = re.search(rf"^(?:\[gw\d+\] \[\s*\d+%\] )?{_OUTCOME} (\S+::\S+)\s*$", line)
        if match is None:
            match = re.search(rf"^(\S+::\S+) {_OUTCOME}", line)
            if match is not None:
                found[match.group(1)] = match.group(2)
            continue
        found[match.group(2)] = match.group(1)
    return found


def workers_by_model(text: str) -> dict[str, set[str]]:
    """Which xdist workers ran each model's tests, from a ``-v`` run's ``[gwN] ... id[model]`` lines."""
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, model in re.findall(r"\[(gw\d+)\] \[\s*\d+%\] \w+ \S+\[(\w+)\S*\]", text):
        workers[model].add(worker)
    return workers


def assert_clean(result: pytest.RunResult) -> None:
    """No INTERNALERROR, no traceback of the kit's own making, on stdout or stderr."""
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text, text[-4000:]
    assert "Traceback" not in result.stderr.str(), result.stderr.str()[-4000:]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
