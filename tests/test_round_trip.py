"""The state_dict round trip loads into the fresh model by assignment from a memory-mapped file, so
that it holds two model-sized copies rather than three; these tests pin down that this shortcut
never changes a verdict: what users' copy-loading accepts passes, what it rejects fails."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_zoo import atomic
from pytest_zoo.conformance import round_trip
from pytest_zoo.deployment import state_dict_round_trip

INPUTS = ((torch.randn(2, 8),), {})


class AliasedHead(nn.Module):
    """A parameter also reached through a plain list: assigning a loaded tensor to ``fc.weight``
    leaves the alias on the old one, where ``load_state_dict``'s copy would update both."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.tied = [self.fc.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.tied[0].T + self.fc.bias


class ListHead(nn.Module):
    """The defect the check is for: the head lives in a plain list, outside the state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.heads = [nn.Linear(8, 3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[0](self.body(x))


def test_a_parameter_reached_through_an_alias_passes_as_copy_loading_would() -> None:
    torch.manual_seed(0)
    report = state_dict_round_trip(AliasedHead(), AliasedHead, INPUTS)
    assert report.ok, report.problems
    # the shortcut alone would have judged it wrongly: assignment leaves the alias behind
    fresh = AliasedHead()
    fresh.load_state_dict(AliasedHead().state_dict(), assign=True)
    assert fresh.tied[0] is not fresh.fc.weight


def test_state_outside_the_state_dict_still_fails() -> None:
    torch.manual_seed(0)
    report = state_dict_round_trip(ListHead(), ListHead, INPUTS)
    assert not report.ok
    assert any("a head kept in a plain list" in problem for problem in report.problems), report.problems


def test_scratch_goes_to_memory_only_with_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = Path(tempfile.gettempdir())
    monkeypatch.setattr(atomic, "MEMORY_BACKED", tmp_path / "absent")
    assert atomic.scratch_dir(1) == temp
    monkeypatch.setattr(atomic, "MEMORY_BACKED", tmp_path)
    stats = os.statvfs(tmp_path)
    assert atomic.scratch_dir(stats.f_bavail * stats.f_frsize) == temp  # room for it once, not twice
    if Path("/proc/meminfo").is_file():
        assert atomic.scratch_dir(1) == tmp_path


def test_the_round_trip_file_is_scratch_and_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(round_trip, "scratch_dir", lambda nbytes: tmp_path)
    written: list[Path] = []
    save = round_trip.save_unchecked

    def recording(obj: object, f: str | os.PathLike[str]) -> None:
        written.append(Path(f))
        save(obj, f)

    monkeypatch.setattr(round_trip, "save_unchecked", recording)
    torch.manual_seed(0)
    assert state_dict_round_trip(AliasedHead(), AliasedHead, INPUTS).ok
    assert [path.parent.parent for path in written] == [tmp_path]
    assert list(tmp_path.iterdir()) == []
