"""Measure deployability (export, compile, script, fx) and full backward over torchvision builders.

Usage: nice python benchmarks/deploy_sweep.py OUT.jsonl [fnmatch patterns...]
(``SWEEP_STEPS=export,script`` runs a subset of export, compile, script, fx, backward.)

One JSON line per (model, step): ok, seconds, the first line of the problem. This is what
``pytest_zoo.deployment.DEPLOY_EXCEPTIONS`` and the README's cost figures were read from. Inputs
are batch 1 (2 in train mode) at the smallest legal size of the kit's family table (at least 32 px).
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sys
import time
import warnings
from typing import cast

import torch
import torchvision

from pytest_zoo.conformance import strategies
from pytest_zoo.conformance import task_io as tasks
from pytest_zoo.conformance.deployment import METHODS, Method, deployability
from pytest_zoo.conformance.training import full_backward
from pytest_zoo.models import building


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout("timed out")


def example(name: str, *, train: bool) -> tasks.Example:
    spec = strategies.input_spec(name)
    low, high = spec.sizes(train=train)
    side = max(low, min(32, high) if high >= 32 else low)
    side = -(-side // spec.multiple) * spec.multiple
    frames = spec.frames[0] if spec.frames else None
    return tasks.Example(batch=2 if train else 1, size=(side, side), frames=frames, seed=0)


def main() -> None:
    out = open(sys.argv[1], "a")  # noqa: SIM115 (kept open for the whole sweep, flushed per line)
    patterns = sys.argv[2:] or ["*"]
    names = [n for n in torchvision.models.list_models() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    signal.signal(signal.SIGALRM, _alarm)
    warnings.simplefilter("ignore")
    for name in names:
        io = tasks.task_io(name)
        start = time.perf_counter()
        torch.manual_seed(0)
        model = building.build_model(name)
        record = {"model": name, "step": "build", "ok": True, "seconds": time.perf_counter() - start}
        out.write(json.dumps(record) + "\n")
        out.flush()
        n = 0
        steps = os.environ.get("SWEEP_STEPS", ",".join([*METHODS, "backward"])).split(",")
        for step in steps:
            start = time.perf_counter()
            signal.alarm(240)
            try:
                if step == "backward":
                    drawn = example(name, train=True)
                    report = full_backward(
                        model, io.inputs(model, drawn, n, torch.device("cpu"), train=True), io.score
                    )
                    for p in model.parameters():
                        p.grad = None
                else:
                    drawn = example(name, train=False)
                    args = io.inputs(model, drawn, n, torch.device("cpu"), train=False)
                    report = deployability(model, args, cast(Method, step))
                problems = list(report.problems)
            except _Timeout:
                problems = ["timed out after 240 s"]
            except Exception as error:  # the sweep itself must go on
                problems = [f"sweep error {type(error).__name__}: {error}"[:300]]
            finally:
                signal.alarm(0)
            record = {
                "model": name,
                "step": step,
                "ok": not problems,
                "seconds": round(time.perf_counter() - start, 2),
                "problem": problems[0][:400] if problems else "",
                "shape": list(drawn.shape),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
        del model


if __name__ == "__main__":
    main()
