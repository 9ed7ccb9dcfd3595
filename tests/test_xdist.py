"""pytest-xdist: the same tests everywhere, each model on one worker, the same outcomes as serial.

xdist refuses to run when workers collect different tests, so a run that completes is itself the
check of identical collection; the rest is read from the verbose report (``[gwN] PASSED id``).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

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
