"""pytest-xdist: the same tests everywhere, each model on one worker, the same outcomes as serial.

xdist refuses to run when workers collect different tests, so a run that completes is itself the
check of identical collection; the rest is read from the verbose report (``[gwN] PASSED id``).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("xdist")

ARGS = ("--zoo-models=squeezenet1_1,resnet18,mobilenet_v3_small", "--zoo-device=meta", "--zoo-examples=1")


def _outcomes_by_test(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.search(r"(PASSED|FAILED|SKIPPED|XFAIL|XPASS|ERROR) (pytest-zoo::\S+?)()\s*$", line)
        if match is None:
            match = re.search(r"(pytest-zoo::\S+?)() (PASSED|FAILED|SKIPPED|XFAIL|XPASS|ERROR)", line)
            if match is not None:
                found[match.group(1)] = match.group(3)
            continue
        found[match.group(2)] = match.group(1)
    return found


def test_two_workers_keep_each_model_together_and_match_the_serial_run(pytester: pytest.Pytester) -> None:
    parallel = pytester.runpytest_subprocess(*ARGS, "-n", "2", "-v")
    text = parallel.stdout.str()
    assert "Different tests were collected" not in text
    parallel.stdout.fnmatch_lines(["scheduling tests via ZooModelScheduling"])
    # the ids are the serial ids: nothing appended for grouping (which broke --lf and pasted ids)
    assert not [line for line in parallel.outlines if "pytest-zoo::" in line and "@" in line]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, model in re.findall(r"\[(gw\d)\] \[\s*\d+%\] \w+ pytest-zoo::\S+\[(\w+)\S*\]", text):
        workers[model].add(worker)
    assert set(workers) == {"squeezenet1_1", "resnet18", "mobilenet_v3_small"}, text
    assert all(len(w) == 1 for w in workers.values()), f"a model's tests ran on several workers: {workers}"
    # one build per model across both workers: no worker rebuilt another's model
    parallel.stdout.fnmatch_lines(["pytest-zoo cache: 3 model build(s),*(summed over 2 xdist workers)"])

    serial = pytester.runpytest_subprocess(*ARGS, "-v")
    assert parallel.parseoutcomes() == serial.parseoutcomes()
    assert _outcomes_by_test(parallel.outlines) == _outcomes_by_test(serial.outlines)
    assert len(_outcomes_by_test(serial.outlines)) > 3 * 5


#: Largest first by the estimate: vgg11 (133M parameters), resnet50, mobilenet_v3_large, squeezenet1_1.
#: xdist's own order (most tests first) would start with resnet50 and mobilenet_v3_large, which
#: have two weights enums each, and leave vgg11 for last.
BY_SIZE = ("vgg11", "resnet50", "mobilenet_v3_large", "squeezenet1_1")

PLAIN_TESTS = """
def test_plain_first():
    pass

def test_plain_second():
    assert 1 + 1 == 3
"""


def _blocks(lines: list[str]) -> list[str]:
    """The run's order: one entry per run of consecutive results of the same model (or plain test)."""
    order: list[str] = []
    for line in lines:
        match = re.search(r"\[gw\d\] \[\s*\d+%\] \w+ (\S+)", line)
        if match is None:
            continue
        model = re.search(r"\[(\w+)[\]-]", match.group(1))
        key = model.group(1) if model else match.group(1)
        if not order or order[-1] != key:
            order.append(key)
    return order


def test_workers_hand_out_the_largest_model_first_and_other_tests_after(pytester: pytest.Pytester) -> None:
    """One worker runs the scopes in the order the controller hands them out: the models largest
    first, each once, then the other tests in their collection order; outcomes are the serial run's."""
    pytester.makepyfile(test_plain=PLAIN_TESTS)
    args = (f"--zoo-models={','.join(sorted(BY_SIZE))}", "--zoo-device=meta", "--zoo-examples=1", "-v")
    one = pytester.runpytest_subprocess(*args, "-n", "1")
    one.stdout.fnmatch_lines(["scheduling tests via ZooModelScheduling"])
    assert _blocks(one.outlines) == [
        *BY_SIZE,
        "test_plain.py::test_plain_first",
        "test_plain.py::test_plain_second",
    ], one.stdout.str()

    serial = pytester.runpytest_subprocess(*args)
    assert one.parseoutcomes() == serial.parseoutcomes()
    assert _outcomes_by_test(one.outlines) == _outcomes_by_test(serial.outlines)
    # the serial order is the collection's, each model's tests together: nothing sorted by size
    assert [m for m in BY_SIZE if f"[{m}]" in serial.stdout.str()] == list(BY_SIZE)
    first = {m: serial.stdout.str().index(f"[{m}]") for m in BY_SIZE}
    assert sorted(first, key=first.__getitem__) == sorted(BY_SIZE)


def test_two_workers_start_with_the_two_largest_models(pytester: pytest.Pytester) -> None:
    """Each worker's first scope is one of the first two the controller hands out: the two largest."""
    result = pytester.runpytest_subprocess(
        f"--zoo-models={','.join(BY_SIZE)}", "--zoo-device=meta", "--zoo-examples=1", "-v", "-n", "2"
    )
    assert result.ret == 0
    first: dict[str, str] = {}
    for worker, model in re.findall(
        r"\[(gw\d)\] \[\s*\d+%\] \w+ pytest-zoo::\S+\[(\w+)\S*\]", result.stdout.str()
    ):
        first.setdefault(worker, model)
    assert sorted(first.values()) == sorted(BY_SIZE[:2]), result.stdout.str()


def test_the_estimate_ranks_by_size_and_puts_unknown_models_first() -> None:
    """The order comes from torchvision's published metadata, nothing is built; a model it has no
    weights for (a user's own) has no estimate and goes first, where it cannot lengthen the tail."""
    from pytest_zoo.zoo.cost import UNKNOWN, estimate

    checks = [("test_forward_shape", None), ("test_load_pretrained", "*"), ("test_schema", "*")]
    names = ["squeezenet1_1", "regnet_y_128gf", "resnet18", "my_own_net", "vit_l_16", "mvit_v2_s", "s3d"]
    costs = estimate((name, check, weights) for name in names for check, weights in checks)
    assert costs["my_own_net"] == UNKNOWN
    assert sorted(costs, key=lambda n: -costs[n]) == [
        "my_own_net",
        "regnet_y_128gf",
        "vit_l_16",
        "mvit_v2_s",
        "s3d",
        "resnet18",
        "squeezenet1_1",
    ]


def test_an_explicit_dist_mode_is_left_alone(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--zoo-models=squeezenet1_1",
        "--zoo-device=meta",
        "--zoo-examples=1",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-v",
    )
    result.stdout.fnmatch_lines(["*scheduling tests via LoadFileScheduling*"])
    assert result.ret == 0


THREADS_GATE = """
import os
import torch
import pytest_zoo


class TestThreads(pytest_zoo.ZooConformance):
    models = ["resnet18"]

    def build_model(self, name):
        # what the worker's torch runs with once its first zoo test started (a worker's stdout is
        # not shown, so it goes to a file)
        with open("threads.txt", "a") as f:
            print(f"threads={torch.get_num_threads()} omp={os.environ.get('OMP_NUM_THREADS')}", file=f)
        return super().build_model(name)
"""


@pytest.mark.parametrize("omp", [None, "1"])
def test_workers_share_the_cores_unless_the_user_set_threads(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, omp: str | None
) -> None:
    """Two workers on N cores run N/2 torch threads each (not N each, which wait on each other);
    an OMP_NUM_THREADS the user set is kept."""
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    pytester.makepyfile(test_threads=THREADS_GATE)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--zoo-device=meta", "--zoo-examples=1", "-k", "freeze_counts"
    )
    result.assert_outcomes(passed=1)
    expected = omp or str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert (pytester.path / "threads.txt").read_text().splitlines() == [f"threads={expected} omp={expected}"]


class _Node:
    """What xdist's scheduler asks of a worker: a name, the tests it is sent, a shutdown."""

    def __init__(self, name: str) -> None:
        self.gateway = type("Gateway", (), {"id": name})()
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent += indices

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_scheduler_keeps_two_models_beyond_the_memory_budget_apart_while_others_fit(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Small models go beside a large one; a second large one only when nothing else is left."""
    from pytest_zoo.plugin.xdist_scheduler import make_scheduler
    from pytest_zoo.zoo.cost import MODEL_MEMORY_BUDGET_MB

    big = MODEL_MEMORY_BUDGET_MB * 0.6  # two of them would not fit together, one with a small one does
    models = {"big_a": big, "big_b": big, "small_a": 100.0, "small_b": 100.0}
    ids = [f"pytest-zoo::TestZoo::test_{check}[{model}]" for model in models for check in ("x", "y", "z")]
    groups = {nodeid: nodeid.rpartition("[")[2].rstrip("]") for nodeid in ids}
    (tmp_path / "gw0.json").write_text(json.dumps({"groups": groups, "megabytes": models}))
    config = pytester.parseconfig("-p", "xdist", "--dist=load", "--tx=2*popen")
    scheduler = make_scheduler(config, None, tmp_path)
    first, second = _Node("gw0"), _Node("gw1")
    for node in (first, second):
        scheduler.add_node(node)
        scheduler.add_node_collection(node, ids)
    scheduler.schedule()

    def models_of(node: _Node) -> list[str]:
        return list(dict.fromkeys(groups[ids[i]] for i in node.sent))

    assert models_of(first)[0] == "big_a"
    assert models_of(second) == ["small_a"]  # not big_b, which comes first in line
    done: set[int] = set()
    while set(second.sent) - done:  # the small ones run beside big_a; then only big_b is left
        index = min(set(second.sent) - done)
        scheduler.mark_test_complete(second, index)
        done.add(index)
    # never a worker left without work (it would hold its last test back): big_b goes, last
    assert models_of(second) == ["small_a", "small_b", "big_b"]
