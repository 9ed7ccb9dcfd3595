"""How much of a zoo run is model compute: a pytest plugin that times every outermost module forward
and every backward, per test, in process CPU time, and the summary ``bench.py --sections share`` prints.

Why it exists: issue 23's whole-zoo targets are CPU-seconds, and a profile says where a run's time
goes but not how much of it no scheduling, caching or sharing of builds can remove. The forwards and
backwards the checks run are that part. The summary also bounds what sharing forwards between checks
could give: per model, each forward key (top module class, train or eval, grad mode, autocast, input
shapes, dtypes and memory formats) counted only as often as the one test that runs it most. That is an
optimistic bound: two checks' forwards with equal keys may still differ in weights (a frozen or
trained model, another head initialisation) or in input values.

Loaded by name (``-p compute_share``, with ``benchmarks/`` on ``PYTHONPATH``); under pytest-xdist
every worker loads it and writes its own ``<worker>.jsonl`` into ``$ZOO_SHARE_DIR``. Forwards on the
meta device (structural probes, FLOP counting) are not compute and are not counted. Each module call
pays one Python wrapper call (``nn.Module.__call__``, about a microsecond) for the measurement.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

DIR_VARIABLE = "ZOO_SHARE_DIR"


def _signature(args: object) -> str | None:
    """The inputs' shapes, dtypes and memory formats; ``None`` for a forward on the meta device."""
    import torch

    from pytest_zoo.conformance.reports import named_leaves

    parts = []
    for tensor in named_leaves(args).values():
        if tensor.is_meta:
            return None
        channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        layout = "cl" if channels_last and not tensor.is_contiguous() else ""
        parts.append(f"{tuple(tensor.shape)}{str(tensor.dtype)[6:]}{layout}")
    return ",".join(parts)


class _Meter:
    """The current test's compute: forwards by key, backwards, in process CPU seconds."""

    def __init__(self) -> None:
        self.depth = 0  # module calls open: only the outermost is timed
        self.busy = False  # inside a timed backward: nothing nested is timed again
        self.forwards: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.backward = 0.0

    def reset(self) -> None:
        self.depth = 0
        self.forwards.clear()
        self.counts.clear()
        self.backward = 0.0

    def key(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        import torch

        signature = _signature((args, kwargs))
        if signature is None:
            return None
        autocast = torch.is_autocast_enabled("cpu") if hasattr(torch, "get_autocast_dtype") else False
        mode = "train" if module.training else "eval"
        grad = "grad" if torch.is_grad_enabled() else "nograd"
        return f"{type(module).__qualname__} {mode} {grad} {'amp ' if autocast else ''}{signature}"

    def forward(self, original: Any) -> Any:
        """``nn.Module.__call__``, timed at the outermost call. Not a global forward hook: the kit
        spares a round trip's train-mode forward only where no global hook runs."""

        def call(module: Any, *args: Any, **kwargs: Any) -> Any:
            key = None if self.depth or self.busy else self.key(module, args, kwargs)
            started = time.process_time()
            self.depth += 1
            try:
                return original(module, *args, **kwargs)
            finally:
                self.depth -= 1
                if key is not None:
                    self.forwards[key] += time.process_time() - started
                    self.counts[key] += 1

        return call

    def timed(self, original: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if self.busy or self.depth:
                return original(*args, **kwargs)
            self.busy = True
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.backward += time.process_time() - started
                self.busy = False

        return run


class ComputeShare:
    """The plugin object: hooks installed at configure, one JSON line per test."""

    def __init__(self, directory: Path) -> None:
        self.meter = _Meter()
        self.path = directory / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl"

    def install(self) -> None:
        import torch

        self.originals = (torch.nn.Module.__call__, torch.autograd.backward, torch.autograd.grad)
        torch.nn.Module.__call__ = self.meter.forward(torch.nn.Module.__call__)  # type: ignore[method-assign]
        torch.autograd.backward = self.meter.timed(torch.autograd.backward)  # Tensor.backward calls it
        torch.autograd.grad = self.meter.timed(torch.autograd.grad)

    def pytest_unconfigure(self) -> None:
        import torch

        torch.nn.Module.__call__, torch.autograd.backward, torch.autograd.grad = self.originals  # type: ignore[method-assign]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        self.meter.reset()
        started, before = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        yield
        after = resource.getrusage(resource.RUSAGE_SELF)
        record = {
            "nodeid": item.nodeid,
            "cpu": time.process_time() - started,
            "sys": after.ru_stime - before.ru_stime,  # the kernel's part: page faults, file writes
            "faults": after.ru_minflt - before.ru_minflt,
            "backward": self.meter.backward,
            "forwards": {k: [self.meter.counts[k], v] for k, v in self.meter.forwards.items()},
        }
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    directory = os.environ.get(DIR_VARIABLE)
    controller = not hasattr(config, "workerinput") and config.getoption("numprocesses", None)
    if not directory or controller:
        return  # the xdist controller runs no tests: its workers measure
    plugin = ComputeShare(Path(directory))
    plugin.install()
    config.pluginmanager.register(plugin, "compute-share")


def _check_and_model(nodeid: str) -> tuple[str, str]:
    name, _, param = nodeid.rpartition("::")[2].partition("[")
    return name, param.rstrip("]").split("-")[0]


def summarise(directory: Path) -> dict[str, Any]:
    """Per check: test CPU, forward CPU, backward CPU; with the same totals over the run, and
    ``shared_forwards``: the forwards if each key of a model ran only as often as the one test that
    runs it most (a round trip's two eval forwards stay two; the same forward in two checks, one)."""
    checks: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"tests": 0, "cpu": 0.0, "sys": 0.0, "forward": 0.0, "backward": 0.0}
    )
    most: dict[tuple[str, str], tuple[int, float]] = {}  # (model, key): most runs in a test, least per run
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            check, model = _check_and_model(record["nodeid"])
            row = checks[check]
            row["tests"] += 1
            row["cpu"] += record["cpu"]
            row["sys"] += record["sys"]
            row["backward"] += record["backward"]
            for key, (count, seconds) in record["forwards"].items():
                row["forward"] += seconds
                runs, each = most.get((model, key), (0, float("inf")))
                most[(model, key)] = (max(runs, count), min(each, seconds / count))
    fields = ("tests", "cpu", "sys", "forward", "backward")
    total = {k: sum(row[k] for row in checks.values()) for k in fields}
    shared = sum(runs * each for runs, each in most.values())
    return {"checks": dict(checks), "total": total, "shared_forwards": shared}
