"""``benchmarks/compute_share.py``, the measurement issue 23's closing figures rest on: it counts
exactly the outermost forwards and the backwards each test runs, never a meta forward, and leaves
torch as it found it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_counts_each_tests_outermost_forwards_and_backwards(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    out = pytester.path / "share"
    out.mkdir()
    monkeypatch.setenv("ZOO_SHARE_DIR", str(out))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # this suite's own worker, under -n
    pytester.makepyfile(
        test_model="""
        import torch
        from torch import nn

        MODEL = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

        def test_two_evals_and_a_train_step():
            MODEL.eval()
            with torch.no_grad():
                MODEL(torch.ones(5, 4))
                MODEL(torch.ones(5, 4))
            MODEL.train()
            MODEL(torch.ones(5, 4)).sum().backward()
            nn.Linear(4, 2, device="meta")(torch.ones(1, 4, device="meta"))  # shapes only: no compute

        def test_the_same_eval_again():
            MODEL.eval()
            with torch.no_grad():
                MODEL(torch.ones(5, 4))

        def test_nothing():
            pass
        """
    )
    original = torch.nn.Module.__call__
    result = pytester.runpytest("-p", "compute_share", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert torch.nn.Module.__call__ is original

    import compute_share

    lines = (out / "main.jsonl").read_text().splitlines()
    records = {r["nodeid"].rpartition("::")[2]: r for r in map(json.loads, lines)}
    first = records["test_two_evals_and_a_train_step"]
    assert {key: runs for key, (runs, _) in first["forwards"].items()} == {
        "Sequential eval nograd (5, 4)float32": 2,
        "Sequential train grad (5, 4)float32": 1,
    }
    assert first["backward"] > 0.0
    assert records["test_nothing"]["forwards"] == {}
    assert records["test_nothing"]["backward"] == 0.0

    summary = compute_share.summarise(out)
    assert summary["total"]["tests"] == 3
    forwards = [seconds for r in records.values() for _, seconds in r["forwards"].values()]
    assert summary["total"]["forward"] == pytest.approx(sum(forwards))
    # The second test's eval repeats the first's: the bound keeps the first test's two, not three.
    assert 0.0 < summary["shared_forwards"] < summary["total"]["forward"]
