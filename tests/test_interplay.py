"""pytest-zoo beside the plugins people use, each in a real session inside a project with conftest files.

pytest-xdist (plain node ids, each model on one worker, ``--lf``/``--deselect`` after an ``-n``
run, every ``--dist``), pytest-randomly, pytest-cov, pytest-timeout, pytest-rerunfailures,
Hypothesis profiles and seeds, ``-x``, ``--co`` and ``-k``. The heavier combinations are opt-in:
``pytest -m zoo_interplay``.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
from zoo_sessions import (
    assert_clean,
    expected_gate,
    gate_checks,
    outcomes,
    tiny_gate,
    workers_by_model,
    write,
)

pytest.importorskip("xdist")

FAILING = "tests/test_gate.py::TestTiny::test_replace_head_keeps_dtype_and_device[tinybad]"
#: ``FAILING`` as an fnmatch pattern (``[`` opens a character class there).
FAILING_GLOB = re.sub(r"([\[\]])", r"[\1]", FAILING)

HASHABLE = """
def test_every_plugin_is_hashable(pytestconfig):
    plugins = dict(pytestconfig.pluginmanager.list_name_plugin())
    ours = {name for name in plugins if name.startswith("pytest-zoo") or name == "zoo"}
    assert {"pytest-zoo-reliability", "pytest-zoo-scheduling", "pytest-zoo-snapshot"} <= ours, ours
    for name, plugin in plugins.items():
        hash(plugin)  # pytest's subset_hook_caller puts plugins in a set
"""

DRAWS = """
import json, os

import pytest
from hypothesis import given, strategies as st


@pytest.mark.parametrize("zoo_model_name", ["tinya"])
def test_draws(zoo_model_name, zoo_hypothesis_settings):
    drawn = []

    @zoo_hypothesis_settings
    @given(st.integers(0, 10**9))
    def check(n):
        drawn.append(n)

    check()
    with open(os.environ["DRAWS"], "a") as f:
        f.write(json.dumps([zoo_model_name, drawn]) + "\\n")
"""

PROFILES = """
from hypothesis import settings

settings.register_profile("two", max_examples=2, database=None)
settings.register_profile("derand", max_examples=4, derandomize=True, database=None)
"""


def _project(pytester: pytest.Pytester, *extra: tuple[str, str]) -> None:
    """A project: conftest.py at the root and in tests/, the tiny gate, a plain test module."""
    write(
        pytester.path,
        {
            "pyproject.toml": '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
            "conftest.py": PROFILES,
            "tests/conftest.py": "import pytest\n\n@pytest.fixture\ndef answer():\n    return 42\n",
            "tests/test_gate.py": tiny_gate(),
            "tests/test_plain.py": "".join(f"def test_plain_{i}(answer):\n    pass\n\n" for i in range(4)),
            **dict(extra),
        },
    )


def test_xdist_ids_are_plain_so_last_failed_and_deselect_work(pytester: pytest.Pytester) -> None:
    """Under ``-n 2`` ids are the serial ids; ``--lf`` and a pasted ``--deselect`` id work after it."""
    _project(pytester, ("tests/test_hashable.py", HASHABLE))
    snap, report = pytester.path / "zoo.snap", pytester.path / "report.md"
    run = pytester.runpytest_subprocess(
        "-n",
        "2",
        "-v",
        "--zoo-examples=1",
        "--zoo-models=tinya,tinybad,squeezenet1_1",  # the gate's models; the snapshot records squeezenet1_1
        f"--zoo-snapshot={snap}",
        "--zoo-snapshot-update",
        f"--zoo-report={report}",
    )
    assert_clean(run)
    text = run.stdout.str()
    run.stdout.fnmatch_lines(["*scheduling tests via ZooModelScheduling*", f"FAILED {FAILING_GLOB}*"])
    ids = outcomes(run.outlines)
    assert ids["tests/test_hashable.py::test_every_plugin_is_hashable"] == "PASSED"
    assert not [i for i in ids if "@" in i], ids
    gate = len(expected_gate())
    assert ids[FAILING] == "FAILED" and len(ids) == gate + 4 + 1 + 1, ids
    assert ids["zoo-snapshot::squeezenet1_1"] == "PASSED"
    workers = workers_by_model(text)
    assert set(workers) == {"tinya", "tinybad"} and all(len(w) == 1 for w in workers.values()), workers

    last_failed = pytester.runpytest_subprocess("--lf", "-v", "--zoo-examples=1")
    last_failed.stdout.fnmatch_lines(
        ["run-last-failure: rerun previous 1 failure*", f"*{FAILING_GLOB} FAILED*"]
    )
    outcome = last_failed.parseoutcomes()
    assert outcome == {"failed": 1, "deselected": gate + 4 + 1 - 1}, last_failed.stdout.str()[-2000:]

    pasted = pytester.runpytest_subprocess(
        "-n", "2", "-v", "--zoo-examples=1", "-k", "tinybad", "--deselect", FAILING
    )
    # tinybad: all pass but the one deselected, the metadata skip and the pretrained skip
    checks = len(gate_checks())
    assert pasted.parseoutcomes() == {"passed": checks - 3, "skipped": 2}  # xdist counts no deselected
    assert FAILING not in pasted.stdout.str()


@pytest.mark.parametrize(
    "dist",
    [
        ("-n", "auto"),
        pytest.param(("-n", "2", "--dist", "loadscope"), marks=pytest.mark.zoo_interplay),
        pytest.param(("-n", "2", "--dist", "loadfile"), marks=pytest.mark.zoo_interplay),
        pytest.param(("-n", "2", "--dist", "worksteal"), marks=pytest.mark.zoo_interplay),
        pytest.param(("-n", "2", "--dist", "loadgroup"), marks=pytest.mark.zoo_interplay),
    ],
    ids=lambda d: "-".join(d).replace("-", "").replace("n2dist", "") or "auto",
)
def test_every_dist_mode_gives_the_serial_outcomes(pytester: pytest.Pytester, dist: tuple[str, ...]) -> None:
    _project(pytester)
    run = pytester.runpytest_subprocess(*dist, "-v", "--zoo-examples=1")
    assert_clean(run)
    found = outcomes(run.outlines)
    assert found[FAILING] == "FAILED"
    assert {k.split("::", 1)[1]: v for k, v in found.items() if "test_gate.py" in k} == expected_gate()
    assert run.parseoutcomes() == {"failed": 1, "passed": len(expected_gate()) - 5 + 4, "skipped": 4}


def test_randomly_keeps_model_blocks_together_and_its_seed_reproduces_the_run(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester)
    runs = [
        pytester.runpytest_subprocess(
            "-p", "randomly", "-p", "no:cacheprovider", "--randomly-seed=12345", "-v", "--zoo-examples=1"
        )
        for _ in range(2)
    ]
    orders = [list(outcomes(run.outlines)) for run in runs]
    for run in runs:
        assert_clean(run)
        run.stdout.fnmatch_lines(["*randomly-seed=12345*"])
    assert orders[0] == orders[1], "the same seed ran another order"
    models = [re.search(r"\[(\w+)\]$", nodeid) for nodeid in orders[0]]
    blocks = [m.group(1) for m in models if m is not None and m.group(1).startswith("tiny")]
    changes = sum(1 for a, b in itertools.pairwise(blocks) if a != b)
    assert changes == 1, f"a model's tests were split: {blocks}"


FLAKY = """
import os

import pytest


@pytest.mark.flaky(reruns=1)
@pytest.mark.parametrize("zoo_model_name", ["tinya"])
def test_flaky_zoo_test(zoo_model_name):
    marker = os.path.join(os.environ["FLAKY_DIR"], zoo_model_name)
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise AssertionError("first attempt fails")
"""

SLOW_GATE = """
import time

import pytest
import test_gate


@pytest.mark.timeout(3)  # only here: the other tests of a loaded CI machine may take longer
class TestSlow(test_gate.TestTiny):
    models = ("tinyslow",)

    def build_model(self, name):
        time.sleep(30)
        return super().build_model(name)
"""


def test_cov_timeout_and_rerunfailures_in_one_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coverage measures, a flaky zoo test passes on its rerun, a timeout names the model and phase."""
    pytest.importorskip("pytest_cov")
    pytest.importorskip("pytest_timeout")
    pytest.importorskip("pytest_rerunfailures")
    _project(pytester, ("tests/test_flaky.py", FLAKY), ("tests/test_slow.py", SLOW_GATE))
    monkeypatch.setenv("FLAKY_DIR", str(pytester.path))
    run = pytester.runpytest_subprocess(
        "--cov=tests",
        "--cov-report=term",
        "-v",
        "--zoo-examples=1",
        "--zoo-models=tinya,tinyslow",
        "-k",
        "tinya or tinyslow and forward",
        "-p",
        "no:cacheprovider",
    )
    assert_clean(run)
    text = run.stdout.str()
    assert "TOTAL" in text  # pytest-cov's table
    found = outcomes(run.outlines)
    assert found["tests/test_flaky.py::test_flaky_zoo_test[tinya]"] == "PASSED", found
    assert found["tests/test_slow.py::TestSlow::test_forward_shape[tinyslow]"] == "FAILED", found
    run.stdout.fnmatch_lines(
        [
            "*Timeout (>3.0s) from pytest-timeout*",
            "*pytest-zoo: the timeout hit while checking model 'tinyslow'*during test call*",
        ]
    )
    assert run.parseoutcomes()["rerun"] == 1  # the flaky test, once


def test_hypothesis_profile_statistics_and_seed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile's max_examples applies unless --zoo-examples says otherwise; a seed reproduces."""
    _project(pytester, ("tests/test_draws.py", DRAWS))
    draws = pytester.path / "draws.jsonl"
    monkeypatch.setenv("DRAWS", str(draws))
    args = ("--hypothesis-profile=two", "--hypothesis-seed=3", "-k", "tinya", "-p", "no:cacheprovider")
    first = pytester.runpytest_subprocess(*args, "--hypothesis-show-statistics", "--zoo-models=tinya")
    assert_clean(first)
    first.stdout.fnmatch_lines(
        [
            "zoo: 2 Hypothesis example(s) per check (hypothesis profile 'two')*",
            "*Hypothesis Statistics*",
            "*tests/test_gate.py::TestTiny::test_head_matches_builder[[]tinya[]]:*",
            "*- during generate phase*",
        ]
    )
    one = draws.read_text()
    assert len(json.loads(one.splitlines()[0])[1]) == 2  # the profile's max_examples
    draws.unlink()
    second = pytester.runpytest_subprocess(*args, "--zoo-models=tinya", "--zoo-examples=2")
    second.stdout.fnmatch_lines(["zoo: 2 Hypothesis example(s) per check (--zoo-examples)*"])
    assert draws.read_text() == one, "the same --hypothesis-seed drew other examples"


@pytest.mark.zoo_interplay
def test_derandomize_profile_reproduces(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(pytester, ("tests/test_draws.py", DRAWS))
    draws = pytester.path / "draws.jsonl"
    monkeypatch.setenv("DRAWS", str(draws))
    texts = []
    for _ in range(2):
        run = pytester.runpytest_subprocess(
            "--hypothesis-profile=derand", "--zoo-models=tinya", "-k", "draws"
        )
        run.stdout.fnmatch_lines(["zoo: 4 Hypothesis example(s) per check (hypothesis profile 'derand')*"])
        texts.append(draws.read_text())
        draws.unlink()
    assert texts[0] == texts[1] and len(json.loads(texts[0])[1]) == 4


def test_exitfirst_collect_only_and_keyword(pytester: pytest.Pytester) -> None:
    _project(pytester)
    first = pytester.runpytest_subprocess("-x", "-v", "--zoo-examples=1", "-k", "tinybad and not tinya")
    assert_clean(first)
    first.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    assert first.parseoutcomes()["failed"] == 1 and "passed" in first.parseoutcomes()
    listed = pytester.runpytest_subprocess("--co", "-q", "-k", "tinya and forward", "--zoo-models=tinya")
    assert_clean(listed)
    assert [line for line in listed.outlines if "::" in line] == [
        "tests/test_gate.py::TestTiny::test_forward_shape[tinya]"
    ]
    assert listed.ret == 0
