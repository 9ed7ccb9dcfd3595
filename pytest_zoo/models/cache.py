"""A per-session model cache: build each model once, restore it between examples, free it after.

Rebuilding a model for every Hypothesis example is what makes a naive zoo suite take an hour: a
random init of regnet_y_128gf alone costs seconds. The checks never need a *new* model, only a
model in its *as-built state*, and that state is small next to the weights: the module tree
(which head is installed), ``requires_grad`` flags, train/eval flags, hooks, plain attributes
and the buffers (BatchNorm running statistics). :class:`ModelState` records exactly that and puts
it back in milliseconds; the weights themselves are shared, never copied.

What a snapshot cannot restore it detects instead: a parameter changed in place (an optimiser
step, ``.data = ...``, ``.half()``) makes :meth:`ModelCache.restore` rebuild the model, so a check
never sees another check's leftovers.

Memory stays bounded by the largest model rather than the sum, because the cache keeps the models
of one zoo name at a time: asking for another name releases the previous one first, and the plugin
orders items so that each model's checks run back to back and releases after the last of them.

The cache also holds each model's :class:`~pytest_zoo.reference.HeadOracle` (the builder's head
shapes at any class count, from two structural probe builds) for as long as the model itself.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from . import building
from .reference import HeadOracle

__all__ = [
    "CacheStats",
    "HeadOracle",
    "ModelCache",
    "ModelState",
    "active_cache",
    "builder_oracle",
    "fingerprint",
    "reset_active_cache",
    "return_freed_memory",
]

_T = TypeVar("_T")

#: ``Tensor`` attributes where ``register_hook`` and friends keep per-parameter hooks.
_PARAMETER_HOOK_ATTRS = ("_backward_hooks", "_post_accumulate_grad_hooks")


#: The containers a module keeps in ``__dict__`` (children, hooks, parameters): copied, not shared.
_CONTAINERS = (dict, list, set)


def _copy_value(value: object) -> object:
    """Shallow-copy a container (``OrderedDict.copy()`` stays an ``OrderedDict``); anything else as is."""
    return value.copy() if isinstance(value, _CONTAINERS) else value


def fingerprint(tensor: torch.Tensor) -> tuple[object, ...]:
    """What changes when a tensor's values may have changed: its version, storage, dtype, device.

    Every in-place write bumps the version counter and a ``.data = ...`` swaps the storage, so an
    equal fingerprint proves the values untouched without a copy to compare them with (a write
    through ``tensor.data``, which has a version counter of its own, is the one thing it misses).
    """
    storage = 0 if tensor.device.type == "meta" else tensor.untyped_storage().data_ptr()
    return (tensor._version, storage, tensor.dtype, tensor.device, tuple(tensor.shape))


@dataclass
class ModelState:
    """The as-built state of one model, minus its weights, and how to put it back.

    ``restore`` returns ``False`` (and changes nothing) when a parameter was modified in place,
    because the original values are gone; the caller must then rebuild.
    """

    #: ``(module, its class, its as-built __dict__, the keys of the containers in it)``
    modules: list[tuple[nn.Module, type[nn.Module], dict[str, object], tuple[str, ...]]]
    parameters: list[tuple[nn.Parameter, bool, tuple[object, ...], dict[str, object]]]
    #: ``(buffer, as-built copy)``
    buffers: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        # The class too: torch.nn.utils.parametrize swaps a module's class when it registers one.
        modules = []
        for module in model.modules():
            saved = {k: _copy_value(v) for k, v in vars(module).items()}
            containers = tuple(k for k, v in saved.items() if isinstance(v, _CONTAINERS))
            modules.append((module, type(module), saved, containers))
        parameters = []
        for parameter in model.parameters():
            hooks = {
                a: _copy_value(getattr(parameter, a)) for a in _PARAMETER_HOOK_ATTRS if hasattr(parameter, a)
            }
            parameters.append((parameter, parameter.requires_grad, fingerprint(parameter), hooks))
        buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
        return cls(modules, parameters, buffers)

    def intact(self) -> bool:
        """Whether every parameter still holds its as-built values (nothing wrote to it in place)."""
        return all(fingerprint(p) == saved for p, _, saved, _ in self.parameters)

    def restore(self) -> bool:
        if not self.intact():
            return False
        for module, cls, saved, containers in self.modules:
            if type(module) is not cls:
                module.__class__ = cls
            current = vars(module)
            current.clear()
            current.update(saved)
            for key in containers:
                current[key] = _copy_value(saved[key])
        for parameter, requires_grad, _, hooks in self.parameters:
            parameter.requires_grad_(requires_grad)
            parameter.grad = None
            for attr, value in hooks.items():
                setattr(parameter, attr, _copy_value(value))
        # Every buffer is copied back: BatchNorm updates its running statistics inside the kernel
        # without bumping ``_version``, so no cheap test can tell whether a buffer was written.
        # Buffers are small next to parameters (resnet50: 53k values against 25.6M).
        # A meta buffer of its as-built shape has no values to restore: the copy would only cost a
        # dispatch through the meta memo.
        with torch.no_grad():
            for buffer, saved_value in self.buffers:
                if not (buffer.is_meta and saved_value.is_meta and buffer.shape == saved_value.shape):
                    buffer.copy_(saved_value)
        return True


@dataclass
class CacheStats:
    """What the cache did, for the terminal summary and for tests that assert on reuse."""

    builds: int = 0
    hits: int = 0
    restores: int = 0
    rebuilds: int = 0
    releases: int = 0
    oracle_builds: int = 0

    def __str__(self) -> str:
        from .stats import describe_stats

        return describe_stats(dataclasses.asdict(self))


@dataclass
class _Entry:
    group: str
    model: nn.Module
    state: ModelState
    build: Callable[[], nn.Module]


class ModelCache:
    """Models built once per (hook, name, device), handed out in their as-built state.

    ``group`` is the zoo model name an entry belongs to: the cache keeps one group at a time, so
    moving on to the next model frees the previous one before anything new is built.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}
        self._by_id: dict[int, Hashable] = {}
        self._oracles: dict[Hashable, tuple[str, object]] = {}
        self.stats = CacheStats()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def groups(self) -> set[str]:
        """The zoo names whose models (or oracles) are held right now."""
        return {e.group for e in self._entries.values()} | {g for g, _ in self._oracles.values()}

    def get(self, key: Hashable, build: Callable[[], nn.Module], *, group: str) -> nn.Module:
        """The model for ``key`` in its as-built state; built by ``build()`` on first use."""
        self.release(keep=group)
        entry = self._entries.get(key)
        if entry is not None:
            self.stats.hits += 1
            return self._restore(key, entry)
        model = build()
        self.stats.builds += 1
        self._entries[key] = _Entry(group, model, ModelState.capture(model), build)
        self._by_id[id(model)] = key
        return model

    def restore(self, model: nn.Module) -> nn.Module:
        """Put a cached ``model`` back in its as-built state; a model the cache does not hold is
        returned unchanged. The result may be a new object (see :class:`ModelState`): use it."""
        key = self._by_id.get(id(model))
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.model is not model:
            return model
        return self._restore(key, entry)

    def _restore(self, key: Hashable, entry: _Entry) -> nn.Module:
        if entry.state.restore():
            self.stats.restores += 1
            return entry.model
        self.stats.rebuilds += 1
        self._by_id.pop(id(entry.model), None)
        model = entry.build()
        self._entries[key] = _Entry(entry.group, model, ModelState.capture(model), entry.build)
        self._by_id[id(model)] = key
        return model

    def oracle(self, key: Hashable, build: Callable[[int], nn.Module], *, group: str) -> HeadOracle:
        """The :class:`HeadOracle` for ``key``, kept as long as the group's models are."""
        return self.memo(key, lambda: HeadOracle(build, on_build=self._count_oracle_build), group=group)

    def memo(self, key: Hashable, compute: Callable[[], _T], *, group: str) -> _T:
        """``compute()``, once per ``key`` while group ``group`` is held: what a model's checks share
        besides the model (its reference, its oracle)."""
        self.release(keep=group)
        held = self._oracles.get(key)
        if held is None:
            held = self._oracles[key] = (group, compute())
        return held[1]  # type: ignore[return-value]

    def _count_oracle_build(self) -> None:
        self.stats.oracle_builds += 1

    def _drop(self, key: Hashable) -> weakref.ref[nn.Module]:
        model = self._entries.pop(key).model
        self._by_id.pop(id(model), None)
        return weakref.ref(model)

    def release(self, keep: str | None = None) -> int:
        """Drop every model and oracle not in group ``keep`` and return the memory; how many went."""
        gone = [k for k, e in self._entries.items() if e.group != keep]
        survivors = [self._drop(key) for key in gone]
        stale = [k for k, (g, _) in self._oracles.items() if g != keep]
        for key in stale:
            del self._oracles[key]
        if gone:
            self.stats.releases += len(gone)
            # Reference counting frees a plain model at once. A collection only for a model that
            # a reference cycle (a hook closing over it, a test's traceback) keeps alive and that
            # holds real memory (meta tensors hold none): first of the young generations, where
            # the cycle the last test left usually is, then, if that was not it, a full one (a
            # quarter of a second or more once torch is loaded).
            for generation in (1, 2):
                if not _kept_alive(survivors):
                    break
                gc.collect(generation)
            if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
                torch.cuda.empty_cache()
            return_freed_memory()
        return len(gone)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))


def return_freed_memory() -> None:
    """Hand the memory freed tensors left in the C allocator's heap back to the operating system.

    glibc keeps freed blocks below its (adaptive, up to 32 MB) mmap threshold for reuse, so a
    model-sized set of gradients or a freed model stays resident after it is gone, and the next
    model-sized allocation comes on top of it: peak memory grows by a model per check instead of
    staying at the largest one. ``malloc_trim`` returns it (milliseconds); elsewhere it is a no-op.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None  # not glibc (macOS, musl): nothing to trim, or nothing to trim with


def _kept_alive(survivors: list[weakref.ref[nn.Module]]) -> bool:
    """Whether a dropped model that holds memory is still alive (no reference to it is kept here)."""
    return any(_holds_memory(model) for ref in survivors if (model := ref()) is not None)


def _holds_memory(model: nn.Module) -> bool:
    tensors = (*model.parameters(), *model.buffers())
    return any(t.device.type != "meta" for t in tensors)


_ACTIVE: ModelCache | None = None


def active_cache() -> ModelCache:
    """The cache of the running pytest session (one per process, so one per xdist worker)."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = ModelCache()
    return _ACTIVE


def builder_oracle(name: str, kwargs: Mapping[str, Any] | None = None) -> HeadOracle:
    """torchvision's ``name(num_classes=n, **kwargs)`` as a shape oracle, built structurally.

    Held with the model's other state, and one per builder configuration: the gate's head checks
    and the weights checks of the same model ask the same two probe builds.
    """
    config = dict(kwargs or {})
    # Keyed by the keywords the builder gets: the family defaults the gate's reference reads back
    # from its model and the defaults the weights checks leave implicit are one oracle, built once.
    effective = building.builder_kwargs(name, **config)
    return active_cache().oracle(
        ("builder", name, repr(sorted(effective.items()))),
        lambda n: _shapes_only_build(name, n, config),
        group=name,
    )


def _shapes_only_build(name: str, n: int, config: Mapping[str, Any]) -> nn.Module:
    """torchvision's own builder, structurally and without its initialisers: only shapes are read."""
    with building.skipped_init():
        return building.build_model(name, num_classes=n, structural=True, **config)


def reset_active_cache() -> CacheStats | None:
    """Release everything and start a fresh cache; returns the old cache's stats (or ``None``)."""
    global _ACTIVE
    old, _ACTIVE = _ACTIVE, None
    if old is None:
        return None
    old.release()
    return old.stats
