"""pytest-zoo against a fair naive suite and against the floor: wall time, CPU time, peak memory, ratios.

Run from the repository root (never part of the default test run; nothing touches the network):

    python benchmarks/bench.py                                  # import, collect, structural, compute
    python benchmarks/bench.py --sections compute --examples 5 --naive-every 20 --subset-only
    python benchmarks/bench.py --sections peak                  # opt-in: minutes
    python benchmarks/bench.py --sections full --models='resnet1*'   # opt-in: '*' takes 15-20 min
    python benchmarks/bench.py --sections share                 # opt-in: the whole zoo's compute, 8 min

Every measurement is a fresh process measured from outside: wall time, user+system CPU time, and the
peak resident memory that ``os.wait4`` reports (that of the largest single process of the tree;
``full`` and ``structural --xdist`` also sample ``/proc`` every 0.5 s for the summed RSS of the tree,
which is what ``-n 2`` costs in memory). ``--models`` (comma-separated fnmatch globs, ``!glob``
excludes, as ``--zoo-models``) narrows every section to the matching builders. On a machine that is
busy with anything else, pass ``--threads 1`` (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` of every
measured process): torch's default intra-op threads wait for each other whenever another process
holds a core, which made the same compute run 2-5x slower and its ratios noise.

Equal work. Every side draws exactly the same examples: the kit runs with ``--hypothesis-seed=SEED``
(``--seed``, default 0), and the naive suites and the floor draw from the kit's own strategies
(``TaskIO.num_classes``/``TaskIO.examples``) with ``@seed(SEED)`` and the kit's settings (as many
examples as ``--zoo-examples``, no shrinking), so the n, batch sizes and input sizes of the kit's
forward-shape check are, value for value, those of the naive and of the floor. The inputs are the kit's
legal geometry (e.g. 1..33 px for a ResNet, 299 px for inception_v3 in train mode, 224 for maxvit_t),
never 224 for everything. Vary ``--seed`` to see how much the draws weigh.

The fair naive is what a competent user writes without the kit: a plain pytest module (run with
``-p no:zoo``), one Hypothesis test per model, and per example ONE build, ``get_model(name,
**builder_kwargs(name))`` (``weights=None`` and the kit's cheap offline arguments, e.g. ViT at
``image_size=32``), with every check run on that build. It calls the same head/freeze code
(``pytest_zoo.replace_head``/``freeze_backbone`` stand for the user's own) and reads head paths and
class ranges from the kit's family table, as a user knows them for their models. Its head check
compares each head layer with the head formula (``k * n`` outputs, the old input width), which needs
no second build; ``--naive-oracle builder`` compares the whole state_dict with a real
``builder(num_classes=n)`` instead, the second real build per example that checking against
torchvision's builder costs without the meta device. The formula is the default because it is the
cheaper naive: the kit's ratio to it is a lower bound.

The floor is the least any suite running those checks can do: one plain ``python`` process (no
pytest) that imports torch, torchvision and Hypothesis, builds each model once, and per example swaps
the head (the forwards must produce ``n`` classes), runs the forwards and the backward the checks
need, and nothing else. Each example starts from the model's as-built buffers, as in the kit (its
cache restores them) and the naive (a fresh build): BatchNorm statistics left drifting over earlier
train-mode forwards on 1x1 inputs made later forwards 2-3x slower.

Sections:

* ``compute``: the four model checks on CPU over the 80 classification builders (kit: ``-k``
  ``test_head_matches_builder``, ``test_forward_shape``, ``test_freeze_counts``,
  ``test_gradients_reach_head_only``, ``--zoo-device=cpu``). Fair naive, per example: build, head vs
  formula, eval forward (no grad), freeze and the counts, train forward (every output, aux heads
  included) with one backward, ``.grad`` exactly on the head. Floor, per example of the kit's
  forward-shape check (n, eval input A, train input B): swap, eval forward at A, freeze, train forward
  and backward at B: what the forward-shape and gradient checks need together. A second floor row,
  "the kit's own forwards", runs exactly the forwards the kit runs (A, then the gradient check's own
  draws C with a backward, on which the kit also asserts the train-mode shapes): kit minus that row
  is the kit's overhead outside forwards. Naive, floors and kit run on every ``--naive-every``-th
  selected model for the ratios (goal: the kit >= 2x faster than the naive, <= 1.5x the floor), and
  the kit alone on all selected models for the absolute time (``--subset-only`` skips that run).
  The kit's freeze check also runs one explicit example at the builder's own class count, and
  checks that the backbone outweighs the head there; the naive does neither (a cheaper naive again).
* ``structural``: the checks the naive can do without forwards (head vs builder, freeze counts,
  weights metadata) over every builder of every task. Naive: real builds, one per example, head
  formula, freeze counts, ``len(categories)`` against the head; kit: the same three checks with
  ``--zoo-device=meta``; floor: one structural (meta) build per model and a head swap per example.
  Then the whole-zoo sweep exactly as the issue states it, ``pytest --zoo-models='*'
  --zoo-device=meta`` (``--models`` replaces ``'*'``), against its 30 s target; ``--xdist`` adds it
  with ``-n 2``.
* ``collect``: ``--collect-only`` over the selected builders; naive is a module parametrized over them.
* ``import``: a run with no zoo feature (one trivial test): without the plugin (``-p no:zoo``, the
  floor), with it, and with a naive plugin that imports torchvision at load time.
* ``peak`` (opt-in, minutes): the kit's default checks (``pytest --zoo-models=NAME``) for the
  ``--peak-count`` (5) largest selected builders by parameter count (the DEFAULT weights' ``num_params``,
  else counted on a structural build, in a child process), each in its own process: params, wall,
  peak RSS, and that peak over the size of the fp32 weights.
* ``full`` (opt-in, 15-20 minutes for the whole zoo): ``pytest --zoo-models=GLOB`` (default ``'*'``,
  ``--models`` overrides), serial and with ``-n 2``: wall, CPU, peak RSS, the speed-up.
* ``share`` (opt-in, 7-8 minutes for the whole zoo): the same ``-n 2`` run with ``compute_share.py``'s
  hooks, which time every outermost forward and every backward: per check, how much of its CPU is the
  model compute the checks exist to run, and what running once every forward that two checks of a
  model repeat would leave (the bound on sharing forwards between checks).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = sys.executable
MODEL_CHECKS = (
    "test_head_matches_builder or test_forward_shape or test_freeze_counts or test_gradients_reach_head_only"
)
STRUCTURAL_CHECKS = "test_head_matches_builder or test_freeze_counts or test_default_weights_metadata"
STRUCTURAL_TARGET_S = 30.0
#: ``--threads N``: the intra-op threads of every measured process (steadier on a shared machine).
THREADS: dict[str, str] = {}
NAIVE_GOAL = 2.0  # the kit at least this many times faster than the fair naive
FLOOR_GOAL = 1.5  # the kit at most this many times the floor

NAIVE_COMMON = '''
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from torch import nn
from torchvision.models import get_model

# The code under test: the user's own replace_head/freeze_backbone would stand here.
from pytest_zoo import count_parameters, freeze_backbone, replace_head
# What a user knows about their models anyway: cheap offline builder arguments (weights=None, a
# small ViT image_size), head paths, legal input sizes and class ranges. Taken from the kit only so
# that both sides build the same models and draw the same examples (the kit's strategies, the seed).
from pytest_zoo.models.building import builder_kwargs
from pytest_zoo.zoo.families import find_family
from pytest_zoo.conformance.strategies import input_spec
from pytest_zoo.conformance.task_io import task_io

NAMES = os.environ["BENCH_MODELS"].split(",")
ORACLE = os.environ.get("NAIVE_ORACLE", "formula")
SEED = seed(int(os.environ["BENCH_SEED"]))
SETTINGS = settings(
    max_examples=int(os.environ["BENCH_EXAMPLES"]),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # the kit's phases: no shrinking
)


def build(name, **overrides):
    return get_model(name, **builder_kwargs(name, **overrides))


def widths(layer):
    """(outputs, inputs) of a Linear or Conv head layer."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    return layer.out_channels, layer.in_channels


def head_paths(name, model):
    family = find_family(name)
    present = []
    for path in (*family.heads, *family.aux_heads):
        try:
            model.get_submodule(path)
        except AttributeError:
            continue
        present.append(path)
    return present


def check_head(name, model, n, before):
    """Every head layer has its formula's outputs at n classes and kept its input width."""
    if ORACLE == "builder":  # a second real build: what comparing with torchvision's builder costs
        reference = build(name, num_classes=n)
        found = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert found == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        return
    multiples = find_family(name).head_multiples
    for path, (_, inputs) in before.items():
        assert widths(model.get_submodule(path)) == (multiples.get(path, 1) * n, inputs), path


def check_freeze(model, head):
    params = dict(model.named_parameters())
    assert {k for k, p in params.items() if p.requires_grad} == head
    counts = count_parameters(model)
    trainable = sum(params[k].numel() for k in head)
    assert (counts.trainable, counts.frozen) == (trainable, counts.total - trainable)


def one_test_per_model(make):
    """test_<name> for every model: each draws from its own model's strategies, as the kit does."""
    return {f"test_{name}": make(name) for name in NAMES}
'''

NAIVE_COMPUTE = '''
"""A fair naive compute suite: per model, per example, ONE build and every check on it."""
from naive_common import *  # noqa: F403

#: Models with BatchNorm train on batches of 2 or more (the user knows which; the bench tells here).
BATCH_NORM = set(os.environ["NAIVE_BATCH_NORM"].split(","))


def outputs(output):
    """Every class-score tensor: a tensor, or googlenet/inception's named tuple with aux outputs."""
    if isinstance(output, torch.Tensor):
        return [output]
    return [o for o in output if isinstance(o, torch.Tensor)]


def make(name):
    io, spec = task_io(name), input_spec(name)
    probe = nn.BatchNorm2d(1) if name in BATCH_NORM else nn.Identity()  # for the train batch rule only

    @SEED
    @SETTINGS
    @given(
        n=io.num_classes(), eval_example=io.examples(spec), train_example=io.examples(spec, probe, train=True)
    )
    def test(n, eval_example, train_example):
        model = build(name)  # the one build of this example
        before = {path: widths(model.get_submodule(path)) for path in head_paths(name, model)}
        model = replace_head(model, n)
        check_head(name, model, n, before)
        head = {f"{p}.{k}" for p in before for k, _ in model.get_submodule(p).named_parameters()}

        model.eval()  # forward shape, eval mode
        batch = eval_example.batch
        with torch.no_grad():
            found = outputs(model(torch.randn(eval_example.shape)))
        assert found and all(tuple(o.shape) == (batch, n) for o in found)

        freeze_backbone(model)  # freeze counts
        check_freeze(model, head)

        model.train()  # forward shape in train mode (aux outputs too), then gradient reach
        batch = train_example.batch
        found = outputs(model(torch.randn(train_example.shape)))
        assert found and all(tuple(o.shape) == (batch, n) for o in found)
        sum(o.sum() for o in found).backward()
        assert {k for k, p in model.named_parameters() if p.grad is not None} == head

    return test


globals().update(one_test_per_model(make))
'''

NAIVE_SHAPES = '''
"""A fair naive shape suite for every task: per model, per example, ONE real build, no forwards."""
from naive_common import *  # noqa: F403
from torchvision.models import get_model_weights


def make(name):
    io = task_io(name)

    @SEED
    @SETTINGS
    @given(n=io.num_classes())
    def test(n):
        if not find_family(name).heads:
            pytest.skip("no class head (optical flow)")
        model = build(name)  # the one build of this example
        before = {path: widths(model.get_submodule(path)) for path in head_paths(name, model)}
        try:  # the DEFAULT weights describe the model the builder makes (read offline)
            categories = get_model_weights(name).DEFAULT.meta["categories"]
        except (AttributeError, ValueError):
            categories = None
        if categories is not None:
            first = find_family(name).heads[0]
            assert len(categories) == before[first][0] // find_family(name).head_multiples.get(first, 1)
        model = replace_head(model, n)
        check_head(name, model, n, before)
        freeze_backbone(model)
        head = {f"{p}.{k}" for p in before for k, _ in model.get_submodule(p).named_parameters()}
        if hasattr(model, "backbone"):  # segmentation, detection: everything outside model.backbone trains
            head = {k for k, _ in model.named_parameters() if not k.startswith("backbone.")}
        check_freeze(model, head)

    return test


globals().update(one_test_per_model(make))
'''

FLOOR = '''
"""The floor: import, one build per model, per example a head swap and the forwards/backward the
checks need, nothing else. Plain python, no pytest; the kit's strategies and seed draw the examples.

FLOOR_MODE=compute: per example of the kit's forward-shape check (n, eval A, train B): swap, eval
forward at A, freeze, train forward and backward at B. FLOOR_MODE=kit: exactly the forwards the kit
runs: that check's eval A (its train-mode shapes are asserted on the gradient check's forward), then
the gradient check's own examples (n, C): swap, freeze, train forward and backward at C.
FLOOR_MODE=structural: a meta build, a swap per example.
"""
import os
import time

start = time.perf_counter()
import torch  # noqa: E402
import torchvision  # noqa: E402, F401
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from torchvision.models import get_model  # noqa: E402

from pytest_zoo import freeze_backbone, replace_head  # noqa: E402
from pytest_zoo.conformance import strategies  # noqa: E402
from pytest_zoo.conformance import task_io as tasks  # noqa: E402
from pytest_zoo.models import building  # noqa: E402

NAMES = os.environ["BENCH_MODELS"].split(",")
MODE = os.environ["FLOOR_MODE"]
DEVICE = torch.device("meta" if MODE == "structural" else "cpu")
SEED = seed(int(os.environ["BENCH_SEED"]))
SETTINGS = settings(
    max_examples=int(os.environ["BENCH_EXAMPLES"]),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
imported = time.perf_counter() - start
built = ran = 0.0
forwards = backwards = 0


def run(model, inputs, *, backward):
    global forwards, backwards
    args, kwargs = inputs
    forwards += 1
    if not backward:
        with torch.no_grad():
            return model(*args, **kwargs)
    backwards += 1
    return model(*args, **kwargs)


for name in NAMES:
    io = tasks.task_io(name)
    t = time.perf_counter()
    if DEVICE.type == "meta":
        model = building.build_model(name, structural=True)
    else:
        model = get_model(name, **building.builder_kwargs(name))
    spec = strategies.input_spec(name, model)
    # Every example starts from the model as built, as in the kit (its cache restores buffers) and
    # the naive (a fresh build): BatchNorm statistics that drifted over earlier train-mode forwards
    # at 1x1 inputs make later forwards slow (denormals), which no suite pays.
    as_built = {k: b.clone() for k, b in model.named_buffers()}
    built += time.perf_counter() - t
    t = time.perf_counter()

    def reset(model=model, as_built=as_built):
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in as_built:
                    b.copy_(as_built[k])

    @SEED
    @SETTINGS
    @given(n=io.num_classes())
    def swaps(n):
        if io.has_head:
            replace_head(model, n)

    @SEED
    @SETTINGS
    @given(
        n=io.num_classes(), eval_example=io.examples(spec), train_example=io.examples(spec, model, train=True)
    )
    def forward_shape(n, eval_example, train_example):
        reset()
        replace_head(model, n)
        model.eval()
        run(model, io.inputs(model, eval_example, n, DEVICE, train=False), backward=False)
        if MODE == "kit":
            return
        model.train()
        freeze_backbone(model)
        output = run(model, io.inputs(model, train_example, n, DEVICE, train=True), backward=True)
        io.score(output).backward()

    @SEED
    @SETTINGS
    @given(n=io.num_classes(), drawn=io.examples(spec, model, train=True))
    def gradients(n, drawn):
        reset()
        replace_head(model, n)
        freeze_backbone(model)
        model.train()
        io.score(run(model, io.inputs(model, drawn, n, DEVICE, train=True), backward=True)).backward()

    if MODE == "structural":
        swaps()
    else:
        forward_shape()
        if MODE == "kit":
            gradients()
    ran += time.perf_counter() - t
    del model
print(
    f"floor: import {imported:.1f} s, builds {built:.1f} s, examples {ran:.1f} s "
    f"({len(NAMES)} models, {forwards} forwards, {backwards} backwards)"
)
'''

NAIVE_COLLECT = """
import os
import pytest
from torchvision.models import list_models  # a naive suite lists the zoo's names from torchvision

SELECTED = set(os.environ["BENCH_MODELS"].split(","))

@pytest.mark.parametrize("name", [name for name in list_models() if name in SELECTED])
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
    #: User plus system CPU time of the process tree: steadier than wall time on a busy machine.
    cpu: float = 0.0
    #: The summed RSS of the whole process tree at its largest, when sampled (``tree=True``).
    tree_mb: float | None = None


def _tree_rss_mb(root: int) -> float:
    """The summed resident memory of ``root`` and all its descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    pages: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        pages[int(entry)] = int(fields[21])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(pages.get(pid, 0) for pid in tree) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(
    label: str,
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    *,
    command: list[str] | None = None,
    tree: bool = False,
) -> Run:
    """Run ``python -m pytest ARGS`` (or ``command``) in ``cwd``: wall time, os.wait4's peak RSS."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read back after the process is reaped
    argv = command if command is not None else [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, cwd=cwd, env={**os.environ, **THREADS, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
    )
    summed = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            summed[0] = max(summed[0], _tree_rss_mb(process.pid))

    sampler = threading.Thread(target=sample, daemon=True) if tree else None
    if sampler is not None:
        sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    if sampler is not None:
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    lines = out.read().decode(errors="replace").strip().splitlines()
    counts = re.compile(r"\d+ (passed|failed|error)")  # pytest's last summary line, with or without -q
    found = (line for line in reversed(lines) if " in " in line and counts.search(line))
    summary = next(found, lines[-1] if lines else "")
    cpu = usage.ru_utime + usage.ru_stime
    tail = summary.strip("= ")
    peak = usage.ru_maxrss / 1024
    # The sampled sum can miss a short peak; it is never below the largest process's exact peak.
    run = Run(label, wall, peak, process.returncode, tail, cpu, max(summed[0], peak) if tree else None)
    summed_text = f" (tree {run.tree_mb:.0f} MB)" if run.tree_mb is not None else ""
    print(
        f"  {label:<48} {wall:7.1f} s  cpu {cpu:7.1f} s  {run.peak_mb:6.0f} MB{summed_text}  "
        f"rc={run.returncode}  {tail}",
        flush=True,
    )
    if run.returncode not in (0, 5):
        print("    " + "\n    ".join(lines[-15:]), flush=True)
    return run


def cell(run: Run | None) -> str:
    if run is None:
        return ""
    failed = "" if run.returncode == 0 else f" (exit {run.returncode}: {run.tail})"
    return f"{run.wall:.1f} s (cpu {run.cpu:.1f} s) / {run.peak_mb:.0f} MB{failed}"


def faster(naive: Run | None, kit: Run) -> str:
    return f"{naive.wall / kit.wall:.2f}x faster" if naive is not None and kit.wall > 0 else ""


def of_floor(kit: Run, floor: Run | None) -> str:
    return f"{kit.wall / floor.wall:.2f}x the floor" if floor is not None and floor.wall > 0 else ""


def row(section: str, naive: Run | None, kit: Run, floor: Run | None) -> str:
    return (
        f"| {section} | {cell(naive)} | {cell(kit)} | {cell(floor)} | {faster(naive, kit)} | "
        f"{of_floor(kit, floor)} |"
    )


def goals(what: str, naive: Run, kit: Run, floor: Run) -> list[str]:
    speedup, over = naive.wall / kit.wall, kit.wall / floor.wall
    return [
        f"{what}: the kit is {speedup:.2f}x faster than the fair naive (goal >= {NAIVE_GOAL:g}x: "
        f"{'met' if speedup >= NAIVE_GOAL else 'NOT met'}) and {over:.2f}x the floor "
        f"(goal <= {FLOOR_GOAL:g}x: {'met' if over <= FLOOR_GOAL else 'NOT met'}); "
        f"kit - floor = {kit.wall - floor.wall:.1f} s of overhead; by CPU time "
        f"{naive.cpu / kit.cpu:.2f}x faster and {kit.cpu / floor.cpu:.2f}x the floor",
        f"{what}: the ceiling, naive / floor = {naive.wall / floor.wall:.2f}x (cpu "
        f"{naive.cpu / floor.cpu:.2f}x): a kit at the floor is this much faster than the naive, no more",
    ]


@dataclass
class Report:
    rows: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.rows += other.rows
        self.notes += other.notes
        self.tables += other.tables


def _child_json(code: str) -> object:
    """Run ``code`` in a child python and parse its last stdout line: importing torchvision here would
    raise this process's resident memory, which every child inherits into its ``ru_maxrss``."""
    stdout = subprocess.run([PYTHON, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(stdout.strip().splitlines()[-1])


def _list_models(module: str) -> list[str]:
    code = f"import json, torchvision; print(json.dumps(torchvision.models.list_models({module})))"
    names = _child_json(code)
    assert isinstance(names, list)
    return [str(name) for name in names]


def select(names: list[str], globs: str | None) -> list[str]:
    """``names`` matching the comma-separated fnmatch ``globs`` (``!glob`` excludes), as ``--zoo-models``."""
    if not globs:
        return names
    patterns = [g.strip() for g in globs.split(",") if g.strip()]
    include = [p for p in patterns if not p.startswith("!")] or ["*"]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    return [
        name
        for name in names
        if any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    ]


def classification(globs: str | None) -> list[str]:
    return select(_list_models("module=torchvision.models"), globs)


def every_builder(globs: str | None) -> list[str]:
    return select(_list_models(""), globs)


def _written(work: Path, files: dict[str, str], run: Callable[[], Run]) -> Run:
    for name, text in files.items():
        (work / name).write_text(text)
    try:
        return run()
    finally:
        for name in files:
            (work / name).unlink()


def _floor(work: Path, label: str, mode: str, env: dict[str, str]) -> Run:
    return _written(
        work,
        {"floor.py": FLOOR},
        lambda: measure(label, [], work, {**env, "FLOOR_MODE": mode}, command=[PYTHON, "floor.py"]),
    )


def _subset(names: list[str], every: int) -> list[str]:
    if not names:
        raise SystemExit("--models matches none of this section's builders")
    return names[::every]


BATCH_NORM = """
import json, sys
from pytest_zoo.models.building import build_model
from pytest_zoo.conformance.strategies import min_train_batch
names = sys.argv[1].split(",")
print(json.dumps([n for n in names if min_train_batch(build_model(n, structural=True)) > 1]))
"""


def _batch_norm(names: list[str]) -> list[str]:
    """The models with BatchNorm (they train on batches of 2 or more), from structural builds in a child."""
    found = subprocess.run(
        [PYTHON, "-c", BATCH_NORM, ",".join(names)], check=True, capture_output=True, text=True
    ).stdout
    return list(json.loads(found.strip().splitlines()[-1]))


def section_compute(
    work: Path, examples: int, every: int, globs: str | None, oracle: str, seed: int, subset_only: bool
) -> Report:
    names = classification(globs)
    subset = _subset(names, every)
    print(
        f"compute: {len(names)} classification builders, {examples} example(s) per check, seed {seed}; "
        f"naive, floor and kit on every {every}th: {', '.join(subset)} (naive head oracle: {oracle})"
    )
    kit_args = [
        "-q",
        "--zoo-device=cpu",
        f"--zoo-examples={examples}",
        f"--hypothesis-seed={seed}",
        "-k",
        f"TestZoo and not Weights and ({MODEL_CHECKS})",
    ]
    env = {
        "BENCH_MODELS": ",".join(subset),
        "BENCH_EXAMPLES": str(examples),
        "BENCH_SEED": str(seed),
        "NAIVE_ORACLE": oracle,
        "NAIVE_BATCH_NORM": ",".join(_batch_norm(subset)),
    }
    files = {"naive_common.py": NAIVE_COMMON, "test_naive_compute.py": NAIVE_COMPUTE}
    naive = _written(
        work,
        files,
        lambda: measure(
            f"fair naive, {len(subset)} models", ["-q", "-p", "no:zoo", "test_naive_compute.py"], work, env
        ),
    )
    floor = _floor(work, f"floor, {len(subset)} models", "compute", env)
    kit_forwards = _floor(work, f"the kit's own forwards only, {len(subset)} models", "kit", env)
    kit = measure(
        f"kit, the same {len(subset)} models", [*kit_args, f"--zoo-models={','.join(subset)}"], work
    )
    label = f"compute, {len(subset)} of {len(names)} classification (every {every}th)"
    report = Report(
        [
            row(label, naive, kit, floor),
            row(f"{label}: floor = the kit's own forwards", None, kit, kit_forwards),
        ],
        goals("compute", naive, kit, floor),
    )
    report.notes.append(
        f"compute: the kit's forwards alone take {kit_forwards.wall:.1f} s ({kit_forwards.tail}); "
        f"the minimal floor {floor.wall:.1f} s ({floor.tail})"
    )
    if len(subset) < len(names) and not subset_only:
        kit_all = measure(
            f"kit, all {len(names)} models", [*kit_args, "--zoo-models=" + ",".join(names)], work
        )
        report.rows.append(row(f"compute, all {len(names)} classification", None, kit_all, None))
    return report


def section_structural(
    work: Path, examples: int, every: int, globs: str | None, xdist: bool, seed: int
) -> Report:
    names = every_builder(globs)
    subset = _subset(names, every)
    print(
        f"structural: {len(names)} builders, {examples} example(s) per check, seed {seed}; naive, floor "
        f"and kit on every {every}th: {', '.join(subset)}"
    )
    env = {"BENCH_MODELS": ",".join(subset), "BENCH_EXAMPLES": str(examples), "BENCH_SEED": str(seed)}
    files = {"naive_common.py": NAIVE_COMMON, "test_naive_shapes.py": NAIVE_SHAPES}
    naive = _written(
        work,
        files,
        lambda: measure(
            f"fair naive, {len(subset)} builders (real builds)",
            ["-q", "-p", "no:zoo", "test_naive_shapes.py"],
            work,
            env,
        ),
    )
    floor = _floor(work, f"floor, {len(subset)} builders (meta)", "structural", env)
    kit_args = [
        "-q",
        "--zoo-device=meta",
        f"--zoo-examples={examples}",
        f"--hypothesis-seed={seed}",
        "-k",
        f"TestZoo and not Weights and ({STRUCTURAL_CHECKS})",
    ]
    kit = measure(
        f"kit --zoo-device=meta, the same {len(subset)}",
        [*kit_args, "--zoo-models=" + ",".join(subset)],
        work,
    )
    label = f"structural (head, freeze, metadata), {len(subset)} of {len(names)} builders (every {every}th)"
    report = Report([row(label, naive, kit, floor)])
    glob = globs or "*"
    sweep = measure(
        f"kit --zoo-models='{glob}' --zoo-device=meta",
        ["-q", f"--zoo-models={glob}", "--zoo-device=meta", f"--hypothesis-seed={seed}"],
        work,
    )
    report.rows.append(
        row(f"`--zoo-models='{glob}' --zoo-device=meta` ({len(names)} builders)", None, sweep, None)
    )
    if glob == "*":
        met = sweep.wall <= STRUCTURAL_TARGET_S and sweep.returncode == 0
        verdict = f"target <= {STRUCTURAL_TARGET_S:g} s: {'met' if met else 'NOT met'}"
    else:
        verdict = f"the {STRUCTURAL_TARGET_S:g} s target is for all of '*'; this is {len(names)} builders"
    report.notes.append(
        f"structural sweep --zoo-models='{glob}' --zoo-device=meta: {sweep.wall:.1f} s, "
        f"cpu {sweep.cpu:.1f} s ({verdict})"
    )
    if xdist:
        parallel = measure(
            f"kit --zoo-models='{glob}' --zoo-device=meta -n 2",
            ["-q", f"--zoo-models={glob}", "--zoo-device=meta", f"--hypothesis-seed={seed}", "-n", "2"],
            work,
            tree=True,
        )
        report.rows.append(row(f"`--zoo-models='{glob}' --zoo-device=meta -n 2`", None, parallel, None))
        report.notes.append(
            f"structural sweep -n 2: {parallel.wall:.1f} s ({sweep.wall / parallel.wall:.2f}x serial)"
        )
    return report


def section_collect(work: Path, globs: str | None) -> Report:
    names = every_builder(globs)
    print(f"--collect-only over {len(names)} builders")
    naive = _written(
        work,
        {"test_naive_collect.py": NAIVE_COLLECT},
        lambda: measure(
            "naive (parametrized over the names)",
            ["-q", "--collect-only", "-p", "no:zoo", "test_naive_collect.py"],
            work,
            {"BENCH_MODELS": ",".join(names)},
        ),
    )
    glob = globs or "*"
    kit = measure(
        f"kit --zoo-models='{glob}' --collect-only", ["-q", "--collect-only", f"--zoo-models={glob}"], work
    )
    return Report([row(f"`--collect-only`, {len(names)} builders", naive, kit, None)])


def section_import(work: Path) -> Report:
    print("a run with no zoo feature (one trivial test)")
    (work / "test_trivial.py").write_text(TRIVIAL)
    try:
        bare = measure("without the plugin (-p no:zoo)", ["-q", "-p", "no:zoo", "test_trivial.py"], work)
        kit = measure("with pytest-zoo installed", ["-q", "test_trivial.py"], work)
        naive = _written(
            work,
            {"conftest.py": NAIVE_PLUGIN},
            lambda: measure(
                "naive plugin (imports torchvision)", ["-q", "-p", "no:zoo", "test_trivial.py"], work
            ),
        )
    finally:
        (work / "test_trivial.py").unlink()
    return Report([row("plugin load, no zoo feature used (floor: no plugin)", naive, kit, bare)])


PARAMS = """
import json, sys
from torchvision.models import get_model_weights
from pytest_zoo.models.building import build_model
counts = {}
for name in sys.argv[1].split(","):
    try:
        counts[name] = int(get_model_weights(name).DEFAULT.meta["num_params"])
    except (AttributeError, KeyError, ValueError):
        counts[name] = sum(p.numel() for p in build_model(name, structural=True).parameters())
print(json.dumps(counts))
"""


def section_peak(work: Path, globs: str | None, count: int, seed: int) -> Report:
    names = every_builder(globs)
    stdout = subprocess.run(
        [PYTHON, "-c", PARAMS, ",".join(names)], check=True, capture_output=True, text=True
    ).stdout
    params: dict[str, int] = json.loads(stdout.strip().splitlines()[-1])
    largest = sorted(names, key=lambda name: -params[name])[:count]
    print(f"peak: the kit's default checks for the {len(largest)} largest of {len(names)} builders")
    code = "import torch, torchvision, hypothesis, pytest"
    baseline = measure(f"baseline: python -c '{code}'", [], work, command=[PYTHON, "-c", code])
    table = [
        f"`pytest --zoo-models=NAME` (default checks and examples), the {len(largest)} largest builders; "
        f"above baseline = peak RSS minus the {baseline.peak_mb:.0f} MB of importing torch and torchvision:",
        "",
        "| model | params | fp32 weights | wall | CPU | peak RSS | above baseline / weights | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in largest:
        run = measure(
            f"kit --zoo-models={name}", ["-q", f"--zoo-models={name}", f"--hypothesis-seed={seed}"], work
        )
        weights_mb = params[name] * 4 / 2**20
        above = (run.peak_mb - baseline.peak_mb) / weights_mb
        table.append(
            f"| {name} | {params[name] / 1e6:.1f}M | {weights_mb:.0f} MB | {run.wall:.1f} s | "
            f"{run.cpu:.1f} s | {run.peak_mb:.0f} MB | {above:.1f}x | "
            f"rc={run.returncode}: {run.tail} |"
        )
    return Report(tables=["\n".join(table)])


def section_full(work: Path, globs: str | None, seed: int) -> Report:
    glob = globs or "*"
    print(f"full: pytest --zoo-models='{glob}', serial and -n 2")
    args = ["-q", f"--zoo-models={glob}", f"--hypothesis-seed={seed}"]
    serial = measure(f"kit --zoo-models='{glob}'", args, work, tree=True)
    parallel = measure(f"kit --zoo-models='{glob}' -n 2", [*args, "-n", "2"], work, tree=True)
    table = [
        f"`pytest --zoo-models='{glob}'`, default checks and examples:",
        "",
        "| run | wall | CPU | peak RSS (largest process) | peak RSS (tree, summed) | result |",
        "|---|---|---|---|---|---|",
    ]
    for label, run in (("serial", serial), ("`-n 2`", parallel)):
        table.append(
            f"| {label} | {run.wall:.1f} s | {run.cpu:.1f} s | {run.peak_mb:.0f} MB | "
            f"{run.tree_mb or 0:.0f} MB | rc={run.returncode}: {run.tail} |"
        )
    notes = [f"full run --zoo-models='{glob}': -n 2 is {serial.wall / parallel.wall:.2f}x the serial speed"]
    return Report(notes=notes, tables=["\n".join(table)])


def section_share(work: Path, globs: str | None, seed: int) -> Report:
    """How much of ``pytest --zoo-models=GLOB -n 2`` is model compute (``compute_share.py``'s hooks)."""
    import compute_share  # beside this script

    glob = globs or "*"
    print(f"share: pytest --zoo-models='{glob}' -n 2, every forward and backward timed")
    out = work / "share"
    out.mkdir()
    paths = [str(Path(__file__).resolve().parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths), compute_share.DIR_VARIABLE: str(out)}
    args = ["-q", f"--zoo-models={glob}", f"--hypothesis-seed={seed}", "-n", "2", "-p", "compute_share"]
    run = measure(f"kit --zoo-models='{glob}' -n 2, timed", args, work, env, tree=True)
    summary = compute_share.summarise(out)
    table = [
        f"`pytest --zoo-models='{glob}' -n 2`, process CPU seconds inside each test (hooks included):",
        "",
        "| check | tests | CPU | of which the kernel's | forwards | backwards | compute share |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = sorted(summary["checks"].items(), key=lambda item: -item[1]["cpu"])
    for check, c in [*rows, ("all tests", summary["total"])]:
        compute = c["forward"] + c["backward"]
        table.append(
            f"| {check} | {c['tests']:.0f} | {c['cpu']:.1f} | {c['sys']:.1f} | {c['forward']:.1f} | "
            f"{c['backward']:.1f} | {compute / c['cpu']:.0%} |"
        )
    total = summary["total"]
    compute = total["forward"] + total["backward"]
    shared = summary["shared_forwards"] + total["backward"]
    notes = [
        f"share --zoo-models='{glob}' -n 2: {run.cpu:.1f} CPU-s for the run, {total['cpu']:.1f} inside tests "
        f"({run.cpu - total['cpu']:.1f} start-up, collection and scheduling); forwards and backwards "
        f"{compute:.1f} ({compute / run.cpu:.0%} of the run); with every forward that two checks of a model "
        f"repeat run once, {shared:.1f} (a bound on sharing forwards between checks)",
    ]
    return Report(notes=notes, tables=["\n".join(table)])


SECTIONS = ("import", "collect", "structural", "compute", "peak", "full", "share")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections",
        default="import,collect,structural,compute",
        help=f"comma-separated, of {', '.join(SECTIONS)} (peak, full and share are opt-in: minutes)",
    )
    parser.add_argument("--examples", type=int, default=5, help="Hypothesis examples per check (every side)")
    parser.add_argument("--structural-examples", type=int, default=None, help="default: --examples")
    parser.add_argument("--naive-every", type=int, default=8, help="naive and floor on every N-th model only")
    parser.add_argument(
        "--models", default=None, help="fnmatch globs, as --zoo-models: narrows every section"
    )
    parser.add_argument(
        "--naive-oracle",
        choices=("formula", "builder"),
        default="formula",
        help="compute: the naive checks the head by its formula, or against a real builder(num_classes=n)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Hypothesis seed of every side (the kit's --hypothesis-seed): the same examples everywhere",
    )
    parser.add_argument("--peak-count", type=int, default=5, help="peak: how many of the largest builders")
    parser.add_argument(
        "--subset-only",
        action="store_true",
        help="compute: skip the kit's run over all selected models (the absolute time)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP/MKL threads of every measured process (default: torch's own choice)",
    )
    parser.add_argument("--xdist", action="store_true", help="structural: also time the sweep with -n 2")
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.threads is not None:
        THREADS.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    print(
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}, "
        f"threads {args.threads or 'default'}, seed {args.seed}"
    )
    load = os.getloadavg()[0]
    if load > 0.5 and args.threads is None:
        print(
            f"warning: load average {load:.1f}: torch's default intra-op threads wait on each other when "
            "another process holds a core (wall times 2-5x worse here); --threads 1 is steadier",
            flush=True,
        )
    report = Report(
        [
            "| section | naive: wall / peak RSS | kit: wall / peak RSS | floor: wall / peak RSS "
            "| kit vs naive | kit vs floor |",
            "|---|---|---|---|---|---|",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        work = Path(tmp)
        for section in sections:
            if section == "import":
                report.add(section_import(work))
            elif section == "collect":
                report.add(section_collect(work, args.models))
            elif section == "structural":
                examples = args.structural_examples or args.examples
                report.add(
                    section_structural(work, examples, args.naive_every, args.models, args.xdist, args.seed)
                )
            elif section == "compute":
                report.add(
                    section_compute(
                        work,
                        args.examples,
                        args.naive_every,
                        args.models,
                        args.naive_oracle,
                        args.seed,
                        args.subset_only,
                    )
                )
            elif section == "peak":
                report.add(section_peak(work, args.models, args.peak_count, args.seed))
            elif section == "full":
                report.add(section_full(work, args.models, args.seed))
            elif section == "share":
                report.add(section_share(work, args.models, args.seed))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    if len(report.rows) > 2:
        print("\n".join(report.rows) + "\n")
    for table in report.tables:
        print(table + "\n")
    for note in report.notes:
        print(note)


if __name__ == "__main__":
    main()
