"""The version layer: each function gives the newest torch's answer on every supported release.

CI runs this file on the oldest, a middle and the newest pair (README, "Tested versions"); where
the installed torch has the API a function stands in for, the fallback is checked against it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_zoo import compat


def _aten_overloads() -> list[torch._ops.OpOverload]:
    found = []
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name, None)
        for overload in getattr(packet, "overloads", list)():
            found.append(getattr(packet, overload))
    return found


def test_in_place_rule_agrees_with_torchs_tag_where_torch_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    overloads = _aten_overloads()
    tagged = {str(func): compat.is_in_place(func) for func in overloads}
    if hasattr(torch.Tag, "inplace"):
        monkeypatch.delattr(torch.Tag, "inplace")  # the fallback, on the same operators
    by_name = {str(func): compat.is_in_place(func) for func in overloads}
    assert by_name["aten.normal_.default"] and by_name["aten.__iand__.Tensor"]
    assert not by_name["aten.normal.Tensor_float"] and not by_name["aten.__and__.Tensor"]
    differing = [func for func in overloads if tagged[str(func)] != by_name[str(func)]]
    # Only overloads that TorchScript registers (list and scalar variants such as add_.t, copy_.int,
    # *.hacked_twin) may differ: the rule calls them in-place, and torch tags them with nothing at all.
    untagged = {getattr(torch.Tag, "pt2_compliant_tag", None)}
    assert [str(f) for f in differing if tagged[str(f)] or not set(f.tags) <= untagged] == []


def test_default_device_follows_a_device_context() -> None:
    assert compat.default_device() == torch.device("cpu")
    with torch.device("meta"):
        assert compat.default_device() == torch.device("meta")
    assert compat.default_device() == torch.device("cpu")


def test_uninitialised_memory_is_nan_under_the_switch_and_the_old_value_comes_back() -> None:
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        previous = compat.set_fill_uninitialized_memory(True)
        assert torch.empty(64).isnan().all()
        assert compat.set_fill_uninitialized_memory(previous) is True
    finally:
        torch.use_deterministic_algorithms(enabled)


def test_a_mapped_load_takes_a_pathlib_path(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save({"w": torch.arange(3.0)}, path)
    loaded = torch.load(compat.mappable(path), mmap=True, weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(3.0))


def test_release_reads_local_build_tags() -> None:
    assert compat.release("2.1.2+cu121") == (2, 1)
    assert compat.release("2.14.1") == (2, 14)
    with pytest.raises(ValueError, match="cannot read a release from version 'nightly'"):
        compat.release("nightly")


def test_cpu_autocast_of_a_detection_model_is_a_gap_before_torchvision_0_17(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchvision
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    detection = nn.Sequential(GeneralizedRCNNTransform(32, 64, [0.0] * 3, [1.0] * 3))
    classifier = nn.Sequential(nn.Linear(2, 2))
    monkeypatch.setattr(torchvision, "__version__", "0.16.2+cu121")
    reason = compat.autocast_gap(detection, "cpu")
    assert reason is not None and "needs torchvision>=0.17" in reason and "torchvision 0.16.2+cu121" in reason
    assert compat.autocast_gap(classifier, "cpu") is None
    assert compat.autocast_gap(detection, "cuda") is None
    monkeypatch.setattr(torchvision, "__version__", "0.17.0")
    assert compat.autocast_gap(detection, "cpu") is None


def test_save_unchecked_writes_a_file_torch_reads_back_and_leaves_the_switch_as_it_was(
    tmp_path: Path,
) -> None:
    state = {"weight": torch.arange(12.0).view(3, 4), "steps": torch.tensor(7)}
    path = tmp_path / "state.pt"
    config = pytest.importorskip("torch.utils.serialization").config
    switch = getattr(config, "save", None)
    before = getattr(switch, "compute_crc32", None)
    compat.save_unchecked(state, path)
    assert getattr(switch, "compute_crc32", None) == before
    for mmap in (False, True):
        loaded = torch.load(compat.mappable(path), weights_only=True, mmap=mmap)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
