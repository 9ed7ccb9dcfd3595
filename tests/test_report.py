"""``--zoo-report``: a Markdown matrix and its JSON, merged over xdist workers; a bad path stops the run."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
from zoo_sessions import assert_clean, gate_checks, tiny_gate, write

XFAIL = """
import pytest


@pytest.mark.xfail(reason="known: tinya has no aux head yet", strict=True)
@pytest.mark.parametrize("zoo_model_name", ["tinya"])
def test_aux_head(zoo_model_name):
    raise AssertionError("no aux head")
"""


def test_report_matrix_and_json_merged_over_workers(pytester: pytest.Pytester) -> None:
    write(
        pytester.path,
        {
            "tox.ini": "[pytest]\nzoo_report = reports/zoo.md\n",
            "conftest.py": "",
            "reports/.keep": "",
            "tests/test_gate.py": tiny_gate(),
            "tests/test_aux.py": XFAIL,
            "tests/test_other.py": "def test_not_a_zoo_test():\n    pass\n",
        },
    )
    run = pytester.runpytest_subprocess("-n", "2", "--zoo-examples=1")
    assert_clean(run)
    report, data_path = pytester.path / "reports" / "zoo.md", pytester.path / "reports" / "zoo.json"
    checks = len(gate_checks()) + 1  # and test_aux_head
    run.stdout.fnmatch_lines(
        [f"zoo report: 2 model(s) x {checks} check(s) written to {report} and {data_path}"]
    )
    data = json.loads(data_path.read_text())
    # per model: the metadata and pretrained checks skip (no weights, from scratch); tinybad fails one
    assert data["totals"] == {"passed": 2 * (checks - 1) - 5, "skipped": 4, "xfailed": 1, "failed": 1}
    cell = data["models"]["tinybad"]["TestTiny.test_replace_head_keeps_dtype_and_device"]
    assert cell["outcome"] == "failed" and "replace_head made 2 tensors" in cell["reason"]
    assert data["models"]["tinya"]["test_aux_head"] == {
        "outcome": "xfailed",
        "reason": "known: tinya has no aux head yet",
        "tests": 1,
    }
    assert len(data["tests"]) == 2 * (checks - 1) + 1  # the plain test is no zoo test: not in it
    text = report.read_text()
    assert text.startswith(f"## pytest-zoo conformance: 2 model(s) x {checks} check(s)\n")
    rows = [line for line in text.splitlines() if line.startswith("| tinybad |")]
    assert rows and "❌ failed [" in rows[0] and "✅ passed" in rows[0]
    assert (
        "**tinybad** `TestTiny.test_replace_head_keeps_dtype_and_device` failed: ConformanceFailure" in text
    )
    assert "**tinya** `test_aux_head` xfailed: known: tinya has no aux head yet" in text


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("missing/zoo.md", "the directory * does not exist"),
        ("zoo.json", "the report path names the Markdown file*"),
    ],
)
def test_an_unwritable_report_path_is_a_usage_error_before_anything_runs(
    pytester: pytest.Pytester, path: str, problem: str
) -> None:
    pytester.makepyfile("def test_must_not_run():\n    raise SystemExit('ran')\n")
    result = pytester.runpytest_subprocess(f"--zoo-report={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--zoo-report={path}: cannot write the zoo report to *: {problem}*"])
    result.stdout.no_fnmatch_line("*collected*")


#: Recorded with the kit on torch 2.1.2 / torchvision 0.16.2 (Python 3.10): ConvNeXt-T, whose
#: trunc_normal_ layers torch 2.14 draws differently from the same seed, and SqueezeNet 1.1.
OLD_SNAPSHOT = Path(__file__).parent / "data" / "zoo-snapshot-torch2.1.2-subset.json"


def test_a_real_upgrade_is_one_grouped_change_in_the_summary_and_the_report(
    pytester: pytest.Pytester,
) -> None:
    """torchvision 0.17 made the classification transforms antialias; nothing else changed."""
    torchvision_version = importlib.metadata.version("torchvision")  # no import: in-process runs came first
    if tuple(int(p) for p in torchvision_version.split(".")[:2]) < (0, 17):
        pytest.skip(f"the snapshot was recorded on torchvision 0.16; this is {torchvision_version}")
    shutil.copy(OLD_SNAPSHOT, pytester.path / "zoo.json")
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--zoo-snapshot=zoo.json",
        "--zoo-report=report.md",
        "-k",
        "convnext_tiny or squeezenet1_1",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*zoo snapshot (compare)*2 model(s) recorded with torchvision 0.16.2, torch 2.1.2*",
            "*convnext_tiny changed in 1 field(s): weights (1)",
            '  weights.IMAGENET1K_V1.transforms.antialias: "warn" -> true',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "by cause, across models: 2 change(s) from 1 cause(s):",
            '  weights.<enum>.transforms.antialias: "warn" -> true [2 enums]: '
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1, SqueezeNet1_1_Weights.IMAGENET1K_V1",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*fingerprint*")  # 59 of ConvNeXt's tensors are drawn differently
    text = (pytester.path / "report.md").read_text()
    assert "### Upgrade snapshot: 2 change(s) from 1 cause(s)" in text
    assert (
        '1. `weights.<enum>.transforms.antialias: "warn" -> true` [2 enums]: '
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1, SqueezeNet1_1_Weights.IMAGENET1K_V1"
    ) in text
    data = json.loads((pytester.path / "zoo.json").read_text())  # the snapshot: never written here
    assert data["header"]["torch"] == "2.1.2"
    report = json.loads((pytester.path / "report.json").read_text())
    assert [e["where"] for e in report["snapshot_changes"]["squeezenet1_1"]] == [
        "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    ]
