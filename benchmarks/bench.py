"""Naive way vs pytest-zoo, on the same models and example counts: wall time, peak memory, ratio.

Run from the repository root (never part of the default test run; nothing touches the network):

    python benchmarks/bench.py                      # every section, the defaults below
    python benchmarks/bench.py --sections import,collect
    python benchmarks/bench.py --examples 5 --naive-every 8

Sections, each a pair of fresh pytest processes measured from outside (``os.wait4``: wall time
and the peak resident memory of that process tree's largest process):

* ``structural``: every shape-only check (head vs builder, forward shapes through meta tensors,
  freeze counts, gradient reach, weights metadata ``num_params``/``_ops``...) over all 121
  builders. Naive: the same head/freeze/params checks with real builds (``weights=None``, real
  initialisation), a fresh build per example. Kit: ``--zoo-device=meta``.
* ``compute``: the four model checks (head, forward shapes, freeze counts, gradients) on CPU over
  the 80 classification builders. Naive: the seed's way, a fresh ``weights=None`` build per
  example and inputs at the native 224 (299 for inception_v3). Kit: ``--zoo-device=cpu``. The
  naive run is expensive (a build per example per check), so it runs on every ``--naive-every``-th
  model, and the kit runs on that same subset for the ratio, and on all 80 for the absolute time.
* ``collect``: ``--collect-only`` over the whole zoo; naive is a module parametrized over
  ``torchvision.models.list_models()``.
* ``import``: a run with no zoo feature (one trivial test): without the plugin (``-p no:zoo``),
  with it, and with a naive plugin that imports torchvision at load time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
STRUCTURAL_SKIP = "not test_transforms and not test_load_pretrained"  # these need values, not shapes
MODEL_CHECKS = (
    "test_head_matches_builder or test_forward_shape or test_freeze_counts or test_gradients_reach_head_only"
)

NAIVE_CONFTEST = """
import os
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

NAMES = os.environ["NAIVE_MODELS"].split(",")
SETTINGS = settings(
    max_examples=int(os.environ["NAIVE_EXAMPLES"]), deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)
"""

NAIVE_SHAPES = '''
"""Shape checks the naive way: a real build per example, real oracle builds, no meta device."""
import pytest, torch
from conftest import NAMES, SETTINGS, given, st
from torchvision.models import get_model, get_model_weights
from pytest_zoo.models.building import builder_kwargs
from pytest_zoo.models.heads import replace_head, head_parameter_names
from pytest_zoo.models.freezing import freeze_backbone, count_parameters

def build(name, **kw):
    offline = ("weights", "weights_backbone", "init_weights")
    kwargs = {k: v for k, v in builder_kwargs(name).items() if k in offline}
    kwargs.update(kw)
    return get_model(name, **kwargs)

def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(n=st.integers(1, 10_000))
def test_head_matches_builder(name, n):
    try:
        model = replace_head(build(name), n)
    except (LookupError, TypeError) as error:
        pytest.skip(str(error))
    assert shapes(model) == shapes(build(name, num_classes=n))

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(n=st.integers(1, 10_000))
def test_freeze_counts(name, n):
    try:
        model = replace_head(build(name), n)
    except (LookupError, TypeError) as error:
        pytest.skip(str(error))
    freeze_backbone(model)
    head = set(head_parameter_names(model))
    assert {k for k, p in model.named_parameters() if p.requires_grad} == head
    trainable = sum(p.numel() for k, p in model.named_parameters() if k in head)
    assert count_parameters(model).trainable == trainable

@pytest.mark.parametrize("name", NAMES)
def test_num_params(name):
    try:
        weights = get_model_weights(name).DEFAULT
    except (AttributeError, ValueError):
        pytest.skip("no weights")
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) > 0 and weights.meta.get("num_params")
'''

NAIVE_COMPUTE = '''
"""The seed's way: build with weights=None for every example, forward at the native size."""
import pytest, torch
from conftest import NAMES, SETTINGS, given, st
from torchvision.models import get_model
from pytest_zoo.models.building import builder_kwargs
from pytest_zoo.conformance.task_io import named_outputs
from pytest_zoo.models.heads import replace_head, head_parameter_names
from pytest_zoo.models.freezing import freeze_backbone

SIZE = {"inception_v3": 299}

def build(name, **kw):
    kwargs = {k: v for k, v in builder_kwargs(name).items() if k in ("weights", "init_weights")}
    kwargs.update(kw)
    return get_model(name, **kwargs)

def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

def image(name, batch=2):
    side = SIZE.get(name, 224)
    return torch.randn(batch, 3, side, side)

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(n=st.integers(1, 10_000))
def test_head_matches_builder(name, n):
    assert shapes(replace_head(build(name), n)) == shapes(build(name, num_classes=n))

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(n=st.integers(1, 10_000))
def test_forward_shape(name, n):
    model = replace_head(build(name), n)
    for train in (False, True):
        model.train(train)
        with torch.no_grad():
            outputs = named_outputs(model(image(name)))
        assert all(tuple(o.shape) == (2, n) for o in outputs.values())

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(n=st.integers(1, 10_000))
def test_freeze_counts(name, n):
    model = replace_head(build(name), n)
    freeze_backbone(model)
    assert {k for k, p in model.named_parameters() if p.requires_grad} == set(head_parameter_names(model))

@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(n=st.integers(1, 10_000))
def test_gradients_reach_head_only(name, n):
    model = replace_head(build(name), n)
    freeze_backbone(model)
    model.train()
    outputs = named_outputs(model(image(name)))
    sum(o.sum() for o in outputs.values()).backward()
    assert {k for k, p in model.named_parameters() if p.grad is not None} == set(head_parameter_names(model))
'''

NAIVE_COLLECT = """
import pytest
from torchvision.models import list_models

@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("check", ["head", "forward", "freeze", "gradients", "metadata"])
def test_model(name, check):
    pass
"""

TRIVIAL = "def test_nothing():\n    assert True\n"
NAIVE_PLUGIN = "import torchvision  # a plugin that loads its dependencies eagerly\n"


@dataclass
class Run:
    label: str
    wall: float
    peak_mb: float
    returncode: int
    tail: str


def measure(label: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``python -m pytest ARGS`` in ``cwd``; wall time and the peak RSS that os.wait4 reports."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read back after the process is reaped
    start = time.perf_counter()
    process = subprocess.Popen(
        [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    lines = out.read().decode(errors="replace").strip().splitlines()
    summary = next(
        (line for line in reversed(lines) if " in " in line and "=" in line), lines[-1] if lines else ""
    )
    run = Run(label, wall, usage.ru_maxrss / 1024, process.returncode, summary.strip("= "))
    print(f"  {label:<44} {wall:8.1f} s  {run.peak_mb:8.0f} MB  rc={run.returncode}  {run.tail}", flush=True)
    return run


def cell(run: Run) -> str:
    failed = "" if run.returncode == 0 else f" (exit {run.returncode}: {run.tail})"
    return f"{run.wall:.1f} s / {run.peak_mb:.0f} MB{failed}"


def ratio(naive: Run, kit: Run) -> str:
    return f"{naive.wall / kit.wall:.1f}x faster" if kit.wall > 0 else "n/a"


def _list_models(module: str) -> list[str]:
    """Builder names, listed in a child process: importing torchvision here would raise this
    process's resident memory, which every child inherits into its ``ru_maxrss`` across exec."""
    code = f"import torchvision; print(','.join(torchvision.models.list_models({module})))"
    return (
        subprocess.run([PYTHON, "-c", code], check=True, capture_output=True, text=True)
        .stdout.strip()
        .split(",")
    )


def classification() -> list[str]:
    return _list_models("module=torchvision.models")


def every_builder() -> list[str]:
    return _list_models("")


def section_structural(work: Path, examples: int, every: int, xdist: bool) -> list[str]:
    names = every_builder()
    subset = names[::every]
    print(
        f"structural sweep: {len(names)} builders, {examples} example(s) per check; "
        f"naive on every {every}th: {', '.join(subset)}"
    )
    (work / "conftest.py").write_text(NAIVE_CONFTEST)
    (work / "test_naive_shapes.py").write_text(NAIVE_SHAPES)
    env = {"NAIVE_MODELS": ",".join(subset), "NAIVE_EXAMPLES": str(examples)}
    naive = measure(f"naive, {len(subset)} builders (real builds)", ["-q", "test_naive_shapes.py"], work, env)
    (work / "conftest.py").unlink()
    (work / "test_naive_shapes.py").unlink()
    kit_args = ["-q", "--zoo-device=meta", f"--zoo-examples={examples}", "-k", STRUCTURAL_SKIP]
    kit_subset = measure(
        f"kit --zoo-device=meta, the same {len(subset)}",
        [*kit_args, "--zoo-models=" + ",".join(subset)],
        work,
    )
    kit = measure(f"kit --zoo-device=meta, all {len(names)}", [*kit_args, "--zoo-models=*"], work)
    rows = [
        f"| structural, {len(subset)} of {len(names)} builders (every {every}th) | {cell(naive)} | "
        f"{cell(kit_subset)} | {ratio(naive, kit_subset)} |",
        f"| structural, all {len(names)} builders | not run (see the subset) | {cell(kit)} | |",
    ]
    if xdist:
        parallel = measure(
            f"kit --zoo-device=meta, all {len(names)}, -n 2", [*kit_args, "--zoo-models=*", "-n", "2"], work
        )
        rows.append(
            f"| structural, all {len(names)} builders, `-n 2` | | "
            f"{parallel.wall:.1f} s / {parallel.peak_mb:.0f} MB | |"
        )
    return rows


def section_compute(work: Path, examples: int, every: int) -> list[str]:
    names = classification()
    subset = names[::every]
    print(
        f"compute sweep: {len(names)} classification builders, {examples} example(s) per check; "
        f"naive on every {every}th: {', '.join(subset)}"
    )
    kit_args = [
        "-q",
        "--zoo-device=cpu",
        f"--zoo-examples={examples}",
        "-k",
        f"TestZoo and not Weights and ({MODEL_CHECKS})",
    ]
    (work / "conftest.py").write_text(NAIVE_CONFTEST)
    (work / "test_naive_compute.py").write_text(NAIVE_COMPUTE)
    env = {"NAIVE_MODELS": ",".join(subset), "NAIVE_EXAMPLES": str(examples)}
    naive = measure(f"naive, {len(subset)} models", ["-q", "test_naive_compute.py"], work, env)
    (work / "conftest.py").unlink()
    (work / "test_naive_compute.py").unlink()
    kit_subset = measure(
        f"kit, the same {len(subset)} models", [*kit_args, f"--zoo-models={','.join(subset)}"], work
    )
    kit_all = measure(f"kit, all {len(names)} models", [*kit_args, "--zoo-models=" + ",".join(names)], work)
    return [
        f"| compute, {len(subset)} of the 80 (every {every}th) | {cell(naive)} | "
        f"{cell(kit_subset)} | {ratio(naive, kit_subset)} |",
        f"| compute, all {len(names)} classification | not run (see the subset) | "
        f"{kit_all.wall:.1f} s / {kit_all.peak_mb:.0f} MB | |",
    ]


def section_collect(work: Path) -> list[str]:
    print("--collect-only over the whole zoo")
    (work / "test_naive_collect.py").write_text(NAIVE_COLLECT)
    naive = measure(
        "naive (parametrized over list_models())", ["-q", "--collect-only", "test_naive_collect.py"], work
    )
    (work / "test_naive_collect.py").unlink()
    kit = measure("kit --zoo-models='*' --collect-only", ["-q", "--collect-only", "--zoo-models=*"], work)
    return [
        f"| `--collect-only`, 121 builders | {naive.wall:.1f} s / {naive.peak_mb:.0f} MB | "
        f"{kit.wall:.1f} s / {kit.peak_mb:.0f} MB | {ratio(naive, kit)} |"
    ]


def section_import(work: Path) -> list[str]:
    print("a run with no zoo feature (one trivial test)")
    (work / "test_trivial.py").write_text(TRIVIAL)
    bare = measure("without the plugin (-p no:zoo)", ["-q", "-p", "no:zoo", "test_trivial.py"], work)
    kit = measure("with pytest-zoo installed", ["-q", "test_trivial.py"], work)
    (work / "conftest.py").write_text(NAIVE_PLUGIN)
    naive = measure("naive plugin (imports torchvision)", ["-q", "-p", "no:zoo", "test_trivial.py"], work)
    (work / "conftest.py").unlink()
    (work / "test_trivial.py").unlink()
    return [
        f"| plugin load, no zoo feature used | {naive.wall:.1f} s / {naive.peak_mb:.0f} MB | "
        f"{kit.wall:.1f} s / {kit.peak_mb:.0f} MB (no plugin: {bare.wall:.1f} s / {bare.peak_mb:.0f} MB) | "
        f"{ratio(naive, kit)} |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="import,collect,structural,compute")
    parser.add_argument("--examples", type=int, default=5, help="Hypothesis examples per check (both sides)")
    parser.add_argument("--structural-examples", type=int, default=None, help="default: --examples")
    parser.add_argument("--naive-every", type=int, default=8, help="naive runs on every N-th model only")
    parser.add_argument("--xdist", action="store_true", help="structural: also time the kit with -n 2")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}")
    rows = ["| section | naive: wall / peak RSS | kit: wall / peak RSS | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        work = Path(tmp)
        for section in sections:
            if section == "import":
                rows += section_import(work)
            elif section == "collect":
                rows += section_collect(work)
            elif section == "structural":
                examples = args.structural_examples or args.examples
                rows += section_structural(work, examples, args.naive_every, args.xdist)
            elif section == "compute":
                rows += section_compute(work, args.examples, args.naive_every)
            else:
                parser.error(f"unknown section {section!r}: choose from import, collect, structural, compute")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print(textwrap.dedent("\n".join(rows)))


if __name__ == "__main__":
    main()
