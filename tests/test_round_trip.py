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
from pytest_zoo.conformance.round_trip import move_statistics, trains_statelessly
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


# -- the train-mode forward before the round trip ---------------------------------------------------


def squeezenet() -> nn.Module:
    from torchvision.models import squeezenet1_1

    with torch.device("meta"):
        return squeezenet1_1(num_classes=5)


class CountingLinear(nn.Linear):
    """torch's own class, subclassed: what a subclass adds is not what was read."""


class Tracked(torch.Tensor):
    """A tensor subclass: its ``__torch_function__`` runs on every op, and may keep state."""


def test_a_stock_model_without_statistics_is_spared_the_train_mode_forward() -> None:
    model = squeezenet()
    assert trains_statelessly(model)
    model.classifier[1] = nn.Conv2d(512, 3, 1)  # a stock head, as replace_head puts it
    assert trains_statelessly(model)
    calls: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    assert not trains_statelessly(model)  # the hook itself could keep state
    move_statistics(model, ((torch.empty(1, 3, 32, 32, device="meta"),), {}))
    assert calls == [True]


@pytest.mark.parametrize(
    "change",
    [
        "batchnorm",
        "subclass",
        "patched forward",
        "callable attribute",
        "object attribute",
        "tensor subclass",
        "global hook",
    ],
)
def test_anything_that_could_keep_train_time_state_gets_the_forward(change: str) -> None:
    model = squeezenet()
    head = model.classifier
    assert isinstance(head, nn.Sequential)
    if change == "batchnorm":
        head.insert(2, nn.BatchNorm2d(5, device="meta"))
    elif change == "subclass":
        head[1] = CountingLinear(2, 2, device="meta")
    elif change == "patched forward":
        head[2].forward = lambda x: x
    elif change == "callable attribute":
        head[2].scale = lambda x: x
    elif change == "object attribute":
        head[2].seen = {"calls": 0}
    elif change == "tensor subclass":
        head[1].register_buffer("seen", torch.zeros(1, device="meta").as_subclass(Tracked))
    handle = (
        nn.modules.module.register_module_forward_hook(lambda *args: None)
        if change == "global hook"
        else None
    )
    try:
        assert not trains_statelessly(model)
    finally:
        if handle is not None:
            handle.remove()
    assert trains_statelessly(squeezenet())
