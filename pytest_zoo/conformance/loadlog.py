"""What a gate's hooks did with pretrained weights: the checkpoints read, where each load put them.

Lost pretrained weights keep every shape, key and ``requires_grad`` flag right, so the only way to
name the cause is to have watched the load: which served checkpoint files were read (by torch.hub,
hence by every torchvision builder), and for every ``load_state_dict`` call the keys it was given,
whether ``strict`` was off, what it reported missing or unexpected, and which tensors of the model
it wrote from the served file. Identity, not names, ties a written tensor to the model the hooks
return: a detection backbone or a functional ``nn.Sequential(body, head)`` keeps the very tensors.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

__all__ = ["LoadCall", "LoadLog", "Read", "build_log", "recording", "remember_build"]


@dataclass(frozen=True)
class Read:
    """One served checkpoint file read, in one hook."""

    path: str
    phase: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class LoadCall:
    """One ``load_state_dict`` call, in one hook, as far as served tensors are concerned."""

    phase: str
    module: str
    strict: bool
    passed: tuple[str, ...]
    own: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    #: Of ``passed``, the keys whose tensor came from a served checkpoint: key -> (read, its key).
    served: Mapping[str, tuple[int, str]]


@dataclass
class LoadLog:
    reads: list[Read] = field(default_factory=list)
    calls: list[LoadCall] = field(default_factory=list)
    #: ``id(tensor)`` of every tensor a load wrote from a served file -> (read index, checkpoint key).
    loaded: dict[int, tuple[int, str]] = field(default_factory=dict)
    #: Keeps those tensors alive, so that no id in :attr:`loaded` is reused.
    alive: list[torch.Tensor] = field(default_factory=list, repr=False)

    def loaded_from(self, tensor: torch.Tensor) -> tuple[int, str] | None:
        return self.loaded.get(id(tensor))

    def load_state(self, path: str) -> Mapping[str, Any]:
        """The served checkpoint at ``path``, memory-mapped where the file allows it."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, ValueError):  # a user's file in the legacy (pre-zip) format
            state = torch.load(path, map_location="cpu", weights_only=True)
        return state if isinstance(state, Mapping) else {}


def _checkpoints_dir() -> Path:
    import torch.hub as hub

    return Path(hub.get_dir()) / "checkpoints"


@contextlib.contextmanager
def recording(log: LoadLog, phase: str) -> Iterator[LoadLog]:
    """Record into ``log`` what the code run in this block reads from the hub cache and loads."""
    served: dict[int, tuple[int, str]] = {}  # only while recording: ids of live checkpoint tensors
    original_torch_load = torch.load
    original_load = nn.Module.load_state_dict

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        state = original_torch_load(f, *args, **kwargs)
        path = f if isinstance(f, (str, os.PathLike)) else None
        if path is not None and isinstance(state, Mapping) and Path(path).parent == _checkpoints_dir():
            index = len(log.reads)
            log.reads.append(Read(os.fspath(path), phase, tuple(state)))
            served.update((id(v), (index, k)) for k, v in state.items() if isinstance(v, torch.Tensor))
        return state

    def load_state_dict(self: nn.Module, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        from_served = {k: served[id(v)] for k, v in state_dict.items() if id(v) in served}
        result = original_load(self, state_dict, *args, **kwargs)
        strict = bool(kwargs.get("strict", args[0] if args else True))
        own = self.state_dict(keep_vars=True)
        for key, source in from_served.items():
            tensor = own.get(key)
            if isinstance(tensor, torch.Tensor):
                log.loaded[id(tensor)] = source
                log.alive.append(tensor)
        missing, unexpected = (result.missing_keys, result.unexpected_keys) if result else ([], [])
        if from_served or served:
            log.calls.append(
                LoadCall(
                    phase,
                    type(self).__qualname__,
                    strict,
                    tuple(state_dict),
                    tuple(own),
                    tuple(missing),
                    tuple(unexpected),
                    from_served,
                )
            )
        return result

    with (
        mock.patch.object(torch, "load", load),
        mock.patch.object(nn.Module, "load_state_dict", load_state_dict),
    ):
        yield log


#: The log of the build that made each cached model (a rebuild gets a new one).
_BUILDS: weakref.WeakKeyDictionary[nn.Module, LoadLog] = weakref.WeakKeyDictionary()


def remember_build(model: nn.Module, log: LoadLog) -> nn.Module:
    _BUILDS[model] = log
    return model


def build_log(model: nn.Module) -> LoadLog:
    """What the build of ``model`` read and loaded (empty for a model built without a log)."""
    return _BUILDS.get(model) or LoadLog()
