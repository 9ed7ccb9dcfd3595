"""Upgrade snapshots: the record -> compare -> plant changes -> update workflow, and bad input.

The workflow runs real pytest sessions in subprocesses; the "upgrade" is planted by a conftest.py
that edits torchvision inside that subprocess only (a weights meta value, a removed builder, an
added builder, a changed initialiser). Cheap models keep it fast: squeezenet, mnasnet0_5 and
shufflenet_v2_x0_5 together build in about a second.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from pytest_zoo.snapshot import (
    FORMAT,
    PARAM_TOLERANCE,
    Snapshot,
    SnapshotFileError,
    diff_facts,
    dumps,
    format_changes,
    load_snapshot,
    merge_snapshot,
    write_snapshot,
)

SELECT = "(squeezenet or mnasnet0_5 or shufflenet_v2_x0_5) and not quantized"
PLANTED_SELECT = "squeezenet or mnasnet0_5 or zoo_tiny_net"

# Everything a torchvision upgrade could plausibly do, done to torchvision inside the pytester run.
PLANT_UPGRADE = """
import functools

from torch import nn
from torchvision.models import _api, squeezenet

# a weights meta value changes
squeezenet.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["min_size"] = (32, 32)

# a model disappears
_api.BUILTIN_MODELS.pop("mnasnet0_5")


# a model appears
class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@_api.register_model(name="zoo_tiny_net")
def zoo_tiny_net(*, weights=None, progress=True, **kwargs):
    return TinyNet(**kwargs)


# a default initialisation changes: SqueezeNet 1.0's final conv doubles its std
_original_init = squeezenet.SqueezeNet.__init__


@functools.wraps(_original_init)
def _init(self, version="1_0", num_classes=1000, dropout=0.5):
    _original_init(self, version, num_classes, dropout)
    if version == "1_0":
        nn.init.normal_(self.classifier[1].weight, mean=0.0, std=0.02)


squeezenet.SqueezeNet.__init__ = _init
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--zoo-snapshot=zoo.json", *args)


def _models(path: Path) -> dict[str, dict[str, object]]:
    models: dict[str, dict[str, object]] = json.loads(path.read_text())["models"]
    return models


def test_record_compare_plant_update_workflow(pytester: pytest.Pytester) -> None:
    from torchvision.models import SqueezeNet1_1_Weights

    snapshot = pytester.path / "zoo.json"

    # record: one test per model, the file holds exactly the selected models and a version header
    result = _run(pytester, "--zoo-snapshot-update", "-k", SELECT)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*recorded: 4: mnasnet0_5, shufflenet_v2_x0_5, squeezenet1_0, squeezenet1_1*"]
    )
    data = json.loads(snapshot.read_text())
    assert data["format"] == FORMAT
    assert set(data["header"]) >= {"python", "torch", "torchvision"}
    assert sorted(data["models"]) == ["mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1"]
    recorded = snapshot.read_bytes()

    # compare, nothing changed: passes and says so
    result = _run(pytester, "-k", SELECT)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*zoo snapshot (compare)*4 model(s) recorded with torchvision*", "*unchanged: 4:*"]
    )

    # the "upgrade": each planted change is reported precisely, and nothing else is
    pytester.makeconftest(PLANT_UPGRADE)
    result = _run(pytester, "-rs", "-k", PLANTED_SELECT)
    result.assert_outcomes(failed=3, skipped=1)
    out = result.stdout.str()
    before_min_size = list(SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["min_size"])
    result.stdout.fnmatch_lines(
        [
            "*squeezenet1_1 changed in 1 field(s): weights (1)",
            f"  weights.IMAGENET1K_V1.min_size: {json.dumps(before_min_size)} -> [32, 32]",
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(["*squeezenet1_0 changed in 1 field(s): fingerprint (1)"])
    init = re.search(
        r"fingerprint\.params\[classifier\.1\.weight\]: std (\S+) -> (\S+) \(x\S+, (\d+) standard errors\)",
        out,
    )
    assert init is not None, out
    assert float(init[2]) / float(init[1]) == pytest.approx(2.0, rel=0.05)  # normal(0, 0.01) -> (0, 0.02)
    assert int(init[3]) > 100  # far beyond a redraw's move (at most 8 standard errors)
    result.stdout.fnmatch_lines(["*mnasnet0_5 was removed: it is in *zoo.json*no longer has it*"])
    result.stdout.fnmatch_lines(["SKIPPED*new model: zoo_tiny_net is not in *zoo.json*"])
    result.stdout.fnmatch_lines(
        [
            "*= zoo snapshot =*",
            "changed: 2: squeezenet1_0 (fingerprint), squeezenet1_1 (weights)",
            "removed: 1: mnasnet0_5",
            "new: 1: zoo_tiny_net",
            "by cause, across models: 2 change(s) from 2 cause(s):",
            "  fingerprint: std x2 [1 tensor in 1 model]: squeezenet1_0 classifier.1.weight",
            f"  weights.<enum>.min_size: {json.dumps(before_min_size)} -> [32, 32] [1 enum]: "
            "SqueezeNet1_1_Weights.IMAGENET1K_V1",
        ]
    )
    assert snapshot.read_bytes() == recorded, "a comparing run must never write the snapshot"

    # update: changed entries rewritten, the removed model dropped, the new one added, and the
    # entry this run did not select (shufflenet, deselected by -k) kept byte for byte
    result = _run(pytester, "--zoo-snapshot-update", "-k", PLANTED_SELECT)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "recorded: 1: zoo_tiny_net",
            "updated: 2: squeezenet1_0 (fingerprint), squeezenet1_1 (weights)",
            "wrote *zoo.json: 3 model(s) recorded, 1 removed, 1 other entries kept as they were",
        ]
    )
    old, new = json.loads(recorded), _models(snapshot)
    assert sorted(new) == ["shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1", "zoo_tiny_net"]
    assert new["shufflenet_v2_x0_5"] == old["models"]["shufflenet_v2_x0_5"]

    # compare after the update: clean again
    result = _run(pytester, "-k", PLANTED_SELECT)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["unchanged: 3: squeezenet1_0, squeezenet1_1, zoo_tiny_net"])


def test_xdist_workers_records_are_merged_by_the_controller(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    kept = {"task": "classification", "note": "recorded by someone else"}
    write_snapshot(pytester.path / "zoo.json", Snapshot({"torchvision": "0.0"}, {"old_model_kept": kept}))

    result = _run(pytester, "-n", "2", "--zoo-snapshot-update", "-k", "squeezenet")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*wrote *zoo.json: 2 model(s) recorded, 0 removed, 1 other entries kept*"])
    models = _models(pytester.path / "zoo.json")
    assert sorted(models) == ["old_model_kept", "squeezenet1_0", "squeezenet1_1"]
    assert models["old_model_kept"] == kept
    assert all("fingerprint" in models[name] for name in ("squeezenet1_0", "squeezenet1_1"))


def test_failed_update_writes_nothing(pytester: pytest.Pytester) -> None:
    snapshot = pytester.path / "zoo.json"
    write_snapshot(snapshot, Snapshot({}, {"squeezenet1_1": {"task": "stale"}}))
    before = snapshot.read_bytes()
    pytester.makeconftest(
        """
        from torchvision.models import _api

        @_api.register_model(name="zoo_broken_net")
        def zoo_broken_net(*, weights=None, progress=True, **kwargs):
            raise RuntimeError("this builder is broken")
        """
    )
    result = _run(pytester, "--zoo-snapshot-update", "-k", "squeezenet1_1 or zoo_broken_net")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*RuntimeError: this builder is broken*", "not written: 1 snapshot check(s) failed*"]
    )
    assert snapshot.read_bytes() == before


# -- bad input: a usage error before anything runs, and the file untouched ---------------------


@pytest.mark.parametrize(
    ("content", "update", "message"),
    [
        pytest.param(
            None,
            False,
            "*zoo.json does not exist. Record it first with: pytest --zoo-snapshot=*--zoo-snapshot-update",
            id="missing",
        ),
        pytest.param(
            '{"format": "pytest-zoo-snapshot", "models": {',
            False,
            "*zoo.json is corrupt: Expecting*line 1*",
            id="corrupt",
        ),
        pytest.param(
            '{"format": "pytest-zoo-snapshot", "models": {',
            True,
            "*zoo.json is corrupt*",
            id="corrupt-update",
        ),
        pytest.param(
            '{"name": "my-package"}',
            True,
            "*zoo.json is not a pytest-zoo snapshot*left untouched*",
            id="foreign-update",
        ),
        pytest.param("[1, 2]", False, "*zoo.json is not a pytest-zoo snapshot*", id="foreign-list"),
        pytest.param(b"\xff\xfe\x00garbage", True, "*zoo.json cannot be read*", id="binary-update"),
        pytest.param(
            '{"format": "pytest-zoo-snapshot", "format_version": 99, "header": {}, "models": {}}',
            True,
            "*format_version 99*Upgrade pytest-zoo*",
            id="newer-format",
        ),
        pytest.param(
            '{"format": "pytest-zoo-snapshot", "format_version": 1, "header": {}, "models": []}',
            False,
            "*is corrupt: 'header' and 'models' must be objects*",
            id="bad-models",
        ),
    ],
)
def test_bad_snapshot_file_is_a_usage_error_and_left_untouched(
    pytester: pytest.Pytester, content: str | bytes | None, update: bool, message: str
) -> None:
    path = pytester.path / "zoo.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    before = path.read_bytes() if path.exists() else None
    result = pytester.runpytest("--zoo-snapshot=zoo.json", *(["--zoo-snapshot-update"] if update else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --zoo-snapshot: {message}"])
    assert (path.read_bytes() if path.exists() else None) == before
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".zoo.json")] == []


def test_directory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.mkdir("snapshots")
    for update in ([], ["--zoo-snapshot-update"]):
        result = pytester.runpytest("--zoo-snapshot=snapshots", *update)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*snapshots is a directory. Give a file path, e.g. --zoo-snapshot=*"])
        assert list((pytester.path / "snapshots").iterdir()) == []


def test_update_into_missing_directory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--zoo-snapshot=nowhere/zoo.json", "--zoo-snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the directory *nowhere does not exist*"])
    assert not (pytester.path / "nowhere").exists()


def test_update_without_a_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--zoo-snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--zoo-snapshot-update needs a file to write: add --zoo-snapshot=PATH*"])


def test_ini_path_is_relative_to_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nzoo_snapshot = snaps/zoo.json\n")
    sub = pytester.mkdir("sub")
    result = pytester.runpytest(f"--rootdir={pytester.path}", str(sub))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: ini option zoo_snapshot: zoo snapshot {pytester.path}/snaps/zoo.json does not exist*"]
    )


def test_no_snapshot_option_registers_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_ok(pytestconfig):
            assert not pytestconfig.pluginmanager.has_plugin("pytest-zoo-snapshot")
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# -- the core, without pytest ------------------------------------------------------------------


def test_file_format_is_sorted_and_diff_friendly() -> None:
    snapshot = Snapshot({"torch": "2"}, {"b": {"shape": [1, 2], "z": 1, "a": {"nan": math.nan}}, "a": {}})
    text = dumps(snapshot)
    assert text.index('"a": {}') < text.index('"b": {')
    assert '"shape": [1, 2]' in text  # a shape is one line, so a changed dimension is a one-line diff
    assert '"nan": "nan"' in text  # strict JSON, no NaN literal
    assert json.loads(text)["format"] == FORMAT
    assert dumps(Snapshot({"torch": "2"}, dict(reversed(snapshot.models.items())))) == text


def test_write_is_atomic_and_skips_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "zoo.json"
    snapshot = Snapshot({}, {"m": {"x": 1}})
    assert write_snapshot(path, snapshot) is True
    assert load_snapshot(path).models == {"m": {"x": 1}}
    assert write_snapshot(path, snapshot) is False  # same content: mtime says when it last changed
    original = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_snapshot(path, Snapshot({}, {"m": {"x": 2}}))
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo.json"]


def test_merge_keeps_untouched_entries_and_drops_only_removed() -> None:
    old = Snapshot({"torch": "1"}, {"keep": {"v": 1}, "change": {"v": 1}, "gone": {"v": 1}})
    merged = merge_snapshot(old, {"change": {"v": 2}, "new": {"v": 3}}, {"gone"}, {"torch": "2"})
    assert merged.models == {"change": {"v": 2}, "keep": {"v": 1}, "new": {"v": 3}}
    assert merged.header == {"torch": "2"}
    assert old.models["change"] == {"v": 1}


def test_diff_names_each_field_and_judges_fingerprints_as_samples() -> None:
    # [mean, std, n, kurtosis, kurtosis_spread, zeros, min, low, high, max] of a 512x10 weight
    weight = [1e-4, 0.05, 5120, 3.0, 4.9, 0.0, -0.19, -0.14, 0.14, 0.19]
    before = {
        "num_params": 10,
        "state_dict": {"fc.weight": [10, 512], "fc.bias": [10]},
        "fingerprint": {"params": {"fc.weight": weight}, "features": {"mean_std": [1.0, 2.0]}},
    }
    redrawn = [-4e-4, 0.0502, 5120, 3.05, 4.8, 0.0, -0.2, -0.15, 0.138, 0.18]  # within a redraw's spread
    after = {
        "num_params": 12,
        "state_dict": {"fc.weight": [12, 512], "head.bias": [12]},
        "fingerprint": {"params": {"fc.weight": redrawn}, "features": {"mean_std": [1.0, 2.5]}},
    }
    changes = diff_facts(before, after)
    assert [str(c) for c in changes] == [
        "num_params: 10 -> 12",
        "state_dict[fc.bias]: removed (was [10])",
        "state_dict[fc.weight]: [10, 512] -> [12, 512]",
        "state_dict[head.bias]: added [12]",
    ]  # and the features, which moved, are not compared: the parameters are another draw
    after["fingerprint"]["params"]["fc.weight"] = [1e-4, 0.1, 5120, 3.0, 4.9, 0.0, -0.38, -0.28, 0.28, 0.38]  # type: ignore[index]
    (change,) = [c for c in diff_facts(before, after) if c.path[0] == "fingerprint"]
    assert str(change) == "fingerprint.params[fc.weight]: std 0.05 -> 0.1 (x2, 50 standard errors)"
    assert change.kind == "std x2"
    report = format_changes("m", diff_facts(before, after), limit=2)
    assert report.splitlines() == [
        "zoo snapshot: m changed in 5 field(s): fingerprint (1), num_params (1), state_dict (3)",
        "  " + str(change),
        "  num_params: 10 -> 12",
        "  ... and 3 more (run with -v to see them all)",
    ]


def test_features_are_compared_when_the_parameters_are_the_same_draw() -> None:
    fingerprint = {"params": {"w": [0.0, 1.0, 100]}, "features": {"mean_std": [1.0, 2.0]}}
    moved = {"params": {"w": [0.0, 1.0, 100]}, "features": {"mean_std": [1.0, 2.5]}}
    (change,) = diff_facts({"fingerprint": fingerprint}, {"fingerprint": moved})
    assert str(change) == "fingerprint.features.mean_std: [1.0, 2.0] -> [1.0, 2.5]"


def test_load_error_names_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(SnapshotFileError, match="Record it first with: pytest --zoo-snapshot="):
        load_snapshot(tmp_path / "absent.json")


def test_tolerance_is_relative_to_the_pair_and_nan_matches_only_nan() -> None:
    from pytest_zoo.snapshot import FEATURE_TOLERANCE

    assert PARAM_TOLERANCE.close([1e-9, 0.5], [-1e-9, 0.5])  # a mean jittering around zero
    assert not PARAM_TOLERANCE.close([0.0, 0.01], [0.0, 0.02])  # a doubled std
    assert not PARAM_TOLERANCE.close([1.0, 0.0], [0.0, 0.0])  # ones became zeros
    assert FEATURE_TOLERANCE.close([2e-12, 4e-12], [2.000001e-12, 4e-12])  # tiny features keep scale
    assert not FEATURE_TOLERANCE.close([2e-12, 4e-12], [2e-12, 8e-12])
    assert PARAM_TOLERANCE.close([math.nan, 1.0], [math.nan, 1.0])
    assert not PARAM_TOLERANCE.close([math.nan, 1.0], [math.nan, 2.0])
    assert not PARAM_TOLERANCE.close([math.nan, 1.0], [0.0, 1.0])


def test_a_file_recorded_with_the_old_task_word_loads_in_the_current_one(tmp_path: Path) -> None:
    """Snapshots written before the one task vocabulary say "quantization"; that is no change."""
    path = tmp_path / "zoo.json"
    write_snapshot(path, Snapshot({}, {"quantized_resnet18": {"task": "quantization", "x": 1}}))
    loaded = load_snapshot(path).models["quantized_resnet18"]
    assert loaded == {"task": "quantized", "x": 1}
    assert diff_facts(loaded, {"task": "quantized", "x": 1}) == []


def test_a_format_1_file_loads_and_the_header_says_what_it_cannot_compare(pytester: pytest.Pytester) -> None:
    """Format 1 held ``[mean, std]`` per tensor: it compares by those, and says how to get more."""
    v1 = {"format": FORMAT, "format_version": 1, "header": {"torch": "2.13.0"}, "models": {}}
    (pytester.path / "zoo.json").write_text(json.dumps(v1))
    assert load_snapshot(pytester.path / "zoo.json").format_version == 1
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--zoo-snapshot=zoo.json", "-k", "none_such"
    )
    result.stdout.fnmatch_lines(
        [
            "zoo snapshot (compare): *zoo.json, 0 model(s) recorded with torch 2.13.0; now *",
            "zoo snapshot: recorded in format 1, so fingerprints compare by mean and std only; "
            "record it again with --zoo-snapshot-update to compare each tensor's distribution shape, "
            "zeros and range too",
        ]
    )
