"""A downstream project's factory gate, pretrained (``weights="DEFAULT"``) against from scratch.

Run from the repository root (never part of the test run; nothing touches the network):

    python benchmarks/pretrained_gate.py                        # the ten architectures, every check
    python benchmarks/pretrained_gate.py --models resnet18,vgg11 -k "pretrained_weights or freeze"

The project is what a team writes: one ``create_model(name, num_classes, pretrained)`` that builds
with ``get_model(name, weights="DEFAULT" if pretrained else None)``, freezes everything and swaps
the head, gated with ``create_model`` (``pretrained = True`` on the pretrained side). Each
architecture runs as its own fresh ``pytest`` process per side, from an empty ``TORCH_HOME`` and an
empty ``HOME`` (so nothing cached helps, and nothing is left behind: checked after each run), with
the pretrained checkpoint fabricated on first request. Measured from outside: wall time, user+system
CPU time, and the peak resident memory ``os.wait4`` reports. The two sides run alternately, model by
model, so a busy machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HEADS = {
    "resnet18": "fc",
    "vgg11": "classifier.6",
    "densenet121": "classifier",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "convnext_tiny": "classifier.2",
    "vit_b_16": "heads.head",
    "swin_t": "head",
    "regnet_y_400mf": "fc",
    "googlenet": "fc",
}

PROJECT = """
from torch import nn
from torchvision.models import get_model

HEADS = {heads!r}


def create_model(name, num_classes, pretrained=True):
    extra = {{"aux_logits": False, "init_weights": True}} if name == "googlenet" and not pretrained else {{}}
    model = get_model(name, weights="DEFAULT" if pretrained else None, **extra)
    for parameter in model.parameters():
        parameter.requires_grad = False
    parent, _, attr = HEADS[name].rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = owner[int(attr)] if attr.isdigit() else getattr(owner, attr)
    new = nn.Linear(old.in_features, num_classes)
    if attr.isdigit():
        owner[int(attr)] = new
    else:
        setattr(owner, attr, new)
    return model
"""

GATE = """
from pytest_zoo import ZooConformance

from project import create_model


class TestProject(ZooConformance):
    models = ({model!r},)
    pretrained = {pretrained}

    def create_model(self, name, num_classes):
        return create_model(name, num_classes, pretrained={pretrained})
"""


def measure(model: str, pretrained: bool, args: argparse.Namespace) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, outcome line) of one fresh pytest process."""
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        root = Path(tmp)
        (root / "project.py").write_text(textwrap.dedent(PROJECT.format(heads=HEADS)))
        (root / "test_gate.py").write_text(GATE.format(model=model, pretrained=pretrained))
        env = dict(os.environ, HOME=str(root / "home"), TORCH_HOME=str(root / "torch-home"))
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), str(root)])
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
        command += ["--zoo-examples", str(args.examples), "test_gate.py"]
        command += ["-k", args.k] if args.k else []
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        left = [p for p in (root / "home").rglob("*") if p.is_file()] + [
            p for p in (root / "torch-home").rglob("*.pth")
        ]
        if left:
            raise SystemExit(f"{model}: files left in HOME/TORCH_HOME: {left}")
        outcome = next((line for line in reversed(output.splitlines()) if " in " in line), "?")
        if os.waitstatus_to_exitcode(status) != 0:
            print(output[-4000:], file=sys.stderr)
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, outcome.strip("= ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(HEADS), help="comma-separated, from: " + ", ".join(HEADS)
    )
    parser.add_argument("-k", default="", help="pytest -k expression (default: every check)")
    parser.add_argument("--examples", type=int, default=1, help="--zoo-examples (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="OMP/MKL threads of each run (0: torch's)")
    args = parser.parse_args()
    print(f"{'model':<20} {'side':<11} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9}  outcome")
    totals = {True: [0.0, 0.0, 0.0], False: [0.0, 0.0, 0.0]}
    for model in args.models.split(","):
        for pretrained in (False, True):
            wall, cpu, peak, outcome = measure(model, pretrained, args)
            total = totals[pretrained]
            total[0] += wall
            total[1] += cpu
            total[2] = max(total[2], peak)
            side = "pretrained" if pretrained else "scratch"
            print(f"{model:<20} {side:<11} {wall:7.1f} {cpu:7.1f} {peak:9.0f}  {outcome}", flush=True)
    for pretrained in (False, True):
        wall, cpu, peak = totals[pretrained]
        side = "pretrained" if pretrained else "scratch"
        print(f"{'all':<20} {side:<11} {wall:7.1f} {cpu:7.1f} {peak:9.0f}  (peak: the largest single run)")


if __name__ == "__main__":
    main()
