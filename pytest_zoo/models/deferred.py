"""Random fills that a build overwrites before anything reads them are never drawn.

Every ``nn.Conv2d`` and ``nn.Linear`` draws its weights (``kaiming_uniform_``) as it is made, and
most torchvision builders then draw them all again with their own initialiser (ResNet's
``kaiming_normal_``, RegNet's ``normal_``, ViT's ``xavier_uniform_``): the first draw of each is
thrown away unread. Over the zoo that was 45 of the 742 seconds of a serial whole-zoo run, more
than any other single piece of a build.

:func:`overwritten_fills_skipped` holds each value-free fill of a whole tensor (``uniform_``,
``normal_``, ``fill_``, ``zero_``, ...: ops whose result does not depend on the values they
overwrite) until something needs its values. A second such fill, or a ``copy_``, of the same
storage replaces it; anything else that takes the storage as an input (a read through any view,
a partial write, ``trunc_normal_``'s ``erfinv_``) runs the held fill first, and whatever is still
held when the build ends is drawn then, in the order it was made. The model that comes out has
every value a plain build would give it, drawn from the same initialisers; what changes is only
which numbers the random generator hands to which tensor, as a different seed would.

Reads that bypass torch's dispatcher (``data_ptr()`` handed to C code, ``numpy()`` of a
parameter inside the builder) would see the memory before its fill: nothing in torchvision does
that, and the context is only entered around the kit's own builds.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["overwritten_fills_skipped"]

#: In-place ops that write every element of their first argument from their plain-number
#: arguments alone (and the random generator): what they overwrite is never read.
_VALUE_FREE_FILLS = frozenset(
    {
        "uniform_",
        "normal_",
        "fill_",
        "zero_",
        "random_",
        "bernoulli_",
        "exponential_",
        "cauchy_",
        "log_normal_",
        "geometric_",
    }
)

#: In-place ops that overwrite all of their first argument from their other tensor arguments.
_OVERWRITES = frozenset({"copy_", *_VALUE_FREE_FILLS})

_Held = tuple[torch._ops.OpOverload, tuple[Any, ...], dict[str, Any]]


def _storage(value: object) -> int | None:
    """The address of the storage ``value`` views, if it is a tensor with real memory."""
    if not isinstance(value, torch.Tensor) or value.device.type not in ("cpu", "cuda"):
        return None
    try:
        address = value.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, nested, functional wrappers
        return None
    return address or None  # an empty tensor's storage has no address to key on


def _covers_storage(tensor: torch.Tensor) -> bool:
    return bool(
        tensor.storage_offset() == 0
        and tensor.is_contiguous()
        and tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes()
    )


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, torch.Tensor))


_VIEW, _FILL, _OVERWRITE, _OTHER = range(4)


@functools.cache
def _kind(func: torch._ops.OpOverload) -> int:
    """What an operator does to the storages it is given (looked up once per operator)."""
    schema = func._schema
    name = schema.name.rpartition("::")[2]
    if name in _VALUE_FREE_FILLS:
        return _FILL
    if name in _OVERWRITES:
        return _OVERWRITE
    if (
        not schema.is_mutable
        and schema.returns
        and all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
    ):
        return _VIEW  # its outputs alias an input and it reads no values: detach, select, t
    return _OTHER


class _HeldFills(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's is untyped
    """Holds value-free whole-storage fills until a read needs them (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.held: dict[int, _Held] = {}

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        kind = _kind(func)
        if kind == _VIEW or (kind == _OTHER and not self.held):
            return func(*args, **kwargs)
        target = _storage(args[0]) if kind != _OTHER and args else None
        if target is not None and not _covers_storage(args[0]):
            target = None  # a partial write keeps the rest of what was held: run it first
        inputs = list(_tensors(args[1:], kwargs)) if target is not None else list(_tensors(args, kwargs))
        for tensor in inputs:
            self._draw(_storage(tensor))
        if target is None:
            return func(*args, **kwargs)
        self.held.pop(target, None)  # overwritten unread
        if kind == _OVERWRITE or inputs or kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        self.held[target] = (func, args, kwargs)
        return args[0]

    def _draw(self, storage: int | None) -> None:
        held = self.held.pop(storage, None) if storage is not None else None
        if held is not None:
            func, args, kwargs = held
            func(*args, **kwargs)

    def draw_all(self) -> None:
        """Make every fill still held, in the order the build asked for them."""
        with torch.no_grad():
            while self.held:
                self._draw(next(iter(self.held)))


_ACTIVE: list[_HeldFills] = []


@contextlib.contextmanager
def overwritten_fills_skipped() -> Iterator[None]:
    """Within this context, a whole-tensor random fill that is overwritten unread is not drawn.

    Nested uses share the outermost one. Every held fill is drawn on the way out, even when the
    build raised, so no tensor made here is ever left as uninitialised memory.
    """
    if _ACTIVE:
        yield
        return
    mode = _HeldFills()
    _ACTIVE.append(mode)
    try:
        with mode:
            yield
    finally:
        _ACTIVE.pop()
        mode.draw_all()
