"""Meta-tensor forwards without torch's Python meta kernels on every call.

A structural run's forwards, backwards and builds happen on the ``meta`` device, where many aten
operators (layer norm, ``addmm``, every elementwise operator, the initialisers' in-place fills) have
their meta kernels written in Python: 0.1 to 1 ms a call, against 1 to 20 us for a C++ one. Under
py-spy those Python kernels were half of the whole structural sweep.

A meta kernel computes nothing but its outputs' metadata, and that metadata is a function of its
inputs' metadata (shape, strides, offset, dtype) and its other arguments. :func:`meta_fast_paths`
therefore answers a repeated call from a memo: a transformer's 24 identical blocks, the next
Hypothesis example at the same size, and the next model with the same layer shapes all get empty
tensors of the recorded shape, strides and dtype, made in C++. The first call of each kind runs
torch's own kernel, so every error it raises (a shape mismatch, a dtype it refuses) is raised as
before, on every call that repeats it: a call that raised is never recorded. The one exception is
an elementwise operator, whose first call follows the rules every elementwise kernel shares (see
:func:`_elementwise_output`) where they leave no doubt, and torch's kernel everywhere else.

What is never answered from the memo: operators whose outputs alias their inputs (views) or whose
output shape depends on values, in-place operators that change their input's metadata
(``resize_``, ``transpose_``, ...), and any call with a tensor that is not on the meta device,
whose values a kernel may read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

from ..compat import is_in_place

__all__ = ["meta_fast_paths", "require_values", "without_memo"]

_FRESH, _ELEMENTWISE, _IN_PLACE, _UNCACHED = "fresh", "elementwise", "in-place", "uncached"
_SAME_TENSOR = "returns its first argument"

#: Bounds the memo (a structural sweep of the whole zoo records tens of thousands of calls).
_MAX_ENTRIES = 200_000


class _NotMemoisable(Exception):
    """An argument or output the memo cannot stand for: a real tensor, an unknown object."""


def _operator_kind(func: torch._ops.OpOverload) -> str:
    schema = func._schema
    if _updates_values_of_self(func):
        return _IN_PLACE
    if (
        schema.is_mutable
        or any(result.alias_info is not None for result in schema.returns)
        or torch.Tag.dynamic_output_shape in func.tags
        or torch.Tag.data_dependent_output in func.tags
    ):
        return _UNCACHED
    return _ELEMENTWISE if _elementwise(func) else _FRESH


def _updates_values_of_self(func: torch._ops.OpOverload) -> bool:
    """An in-place operator that writes its first argument's values and nothing else.

    The initialisers' fills (``normal_``, ``uniform_``, ``zero_``, ...) among them: what
    ``torch.nn.init`` runs on every parameter of a build.

    ``inplace_view`` operators (``squeeze_``, ``transpose_``, ``resize_``) and ``_resize_output_``
    change their argument's metadata, so a repeat must run again; ``hardswish_`` is not tagged
    pointwise, hence the ``inplace`` tag rather than that one.
    """
    schema = func._schema
    written = [
        argument for argument in schema.arguments if argument.alias_info and argument.alias_info.is_write
    ]
    return (
        is_in_place(func)
        and torch.Tag.inplace_view not in func.tags
        and "resize" not in schema.name
        and len(written) == 1
        and written[0] is schema.arguments[0]
        and len(schema.returns) == 1
    )


_KINDS: dict[torch._ops.OpOverload, str] = {}
_MEMO: dict[tuple[Any, ...], Any] = {}

_PLAIN = (bool, int, float, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


#: The exact types :func:`_key` meets on nearly every call, looked up before any ``isinstance``.
_SEQUENCES = frozenset({tuple, list})
_PLAIN_TYPES = frozenset({type(None), *_PLAIN})


def _key(value: Any) -> Any:
    """What a meta kernel's output depends on in ``value``: metadata of tensors, plain values.

    On every memoised call, so the common exact types come first (a tenth of a structural sweep
    was spent here); subclasses (``nn.Parameter``, ``torch.Size``) take the ``isinstance`` path.
    """
    cls = type(value)
    if cls in _SEQUENCES:
        return tuple([_key(item) for item in value])
    if cls in _PLAIN_TYPES:
        return (cls, value)  # 1 and 1.0 and True are one dict key otherwise
    if isinstance(value, torch.Tensor):
        if not value.is_meta:
            raise _NotMemoisable
        return (value.shape, value.stride(), value.storage_offset(), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple([_key(item) for item in value])
    if isinstance(value, _PLAIN):
        return (cls, value)
    raise _NotMemoisable


def _elementwise(func: torch._ops.OpOverload) -> bool:
    """Whether an output of ``func`` can be made from the rules of elementwise operators.

    Left out: seeded ones, whose dtype probe would draw from the CPU generator, and those told a
    layout or device (``clone(memory_format=...)``), whose output follows that instead.
    """
    return (
        torch.Tag.pointwise in func.tags
        and torch.Tag.nondeterministic_seeded not in func.tags
        and not any(argument.name in _LAYOUT_ARGUMENTS for argument in func._schema.arguments)
    )


_LAYOUT_ARGUMENTS = frozenset({"memory_format", "device", "layout", "pin_memory", "non_blocking"})


def _one(value: Any) -> Any:
    """A one-element CPU tensor of ``value``'s rank and dtype (ones: integer division is defined)."""
    if isinstance(value, torch.Tensor):
        return torch.ones((1,) * value.dim(), dtype=value.dtype)
    return value


def _broadcast(shapes: list[torch.Size]) -> torch.Size | None:
    first = shapes[0]
    if all(shape == first for shape in shapes):
        return first
    sizes = [1] * max(len(shape) for shape in shapes)
    for shape in shapes:
        for dim, size in enumerate(shape, len(sizes) - len(shape)):
            if size != 1:
                if sizes[dim] not in (1, size):
                    return None  # torch's own kernel says how they mismatch
                sizes[dim] = size
    return torch.Size(sizes)


def _dense(tensor: torch.Tensor) -> bool:
    """Non-overlapping and dense: the strides are a permutation of some contiguous layout's."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True), key=lambda d: d[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return tensor.numel() > 0


def _elementwise_output(
    func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor | None:
    """An elementwise operator's meta output without its Python kernel; ``None`` where unsure.

    The shape is the operands' broadcast shape; the dtype is what the same operator gives on
    one-element CPU tensors of the operands' ranks and dtypes (torch's own promotion rules). The
    layout follows TensorIterator's fast setup, which torch's meta kernels mirror: contiguous
    where every operand is; where all have the output's shape, channels-last where all are, or
    else the one dense layout they share, strides of size-1 dimensions included. Anything else,
    a probe that raises included, is left to torch's kernel.
    """
    operands = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
    full = [tensor for tensor in operands if tensor.dim()]
    shape = _broadcast([tensor.shape for tensor in full]) if full else None
    if shape is None or any(isinstance(value, (list, tuple)) for value in args):
        return None
    try:
        probe = func(*[_one(value) for value in args], **{k: _one(v) for k, v in kwargs.items()})
    except Exception:
        return None
    if not isinstance(probe, torch.Tensor):
        return None
    dtype = probe.dtype
    if all(tensor.is_contiguous() for tensor in full):
        return torch.empty(shape, dtype=dtype, device="meta")
    if any(tensor.shape != shape for tensor in full):
        return None  # broadcast operands in other layouts: torch's kernel orders the dimensions
    if len(shape) == 4 and all(tensor.is_contiguous(memory_format=torch.channels_last) for tensor in full):
        return torch.empty(shape, dtype=dtype, device="meta", memory_format=torch.channels_last)
    stride = full[0].stride()
    if all(tensor.stride() == stride for tensor in full) and _dense(full[0]):
        # one dense layout, shared: the output keeps it
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    return None


def _record(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        if output.device.type != "meta" or output.storage_offset() != 0:
            raise _NotMemoisable
        return (output.shape, output.stride(), output.dtype)
    if isinstance(output, (tuple, list)):
        return (type(output), tuple(_record(item) for item in output))
    if output is None:
        return None
    raise _NotMemoisable


def _replay(record: Any) -> Any:
    if record is None:
        return None
    if isinstance(record[0], type):
        return record[0](_replay(item) for item in record[1])
    shape, stride, dtype = record
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


class _MemoisedMeta(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's is untyped
    """Answers a repeated meta-kernel call from the memo (see the module docstring)."""

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        kind = _KINDS.get(func)
        if kind is None:
            kind = _KINDS[func] = _operator_kind(func)
        device = kwargs.get("device")
        if kind is _UNCACHED or (device is not None and device.type != "meta"):
            return func(*args, **kwargs)  # a real tensor made on purpose is never recorded either
        try:
            key = (func, _key(args), _key(tuple(kwargs.items())) if kwargs else ())
        except _NotMemoisable:
            return func(*args, **kwargs)
        record = _MEMO.get(key)
        if record is not None:
            return args[0] if record is _SAME_TENSOR else _replay(record)
        output = _elementwise_output(func, args, kwargs) if kind is _ELEMENTWISE else None
        if output is None:
            output = func(*args, **kwargs)
        if len(_MEMO) >= _MAX_ENTRIES:
            _MEMO.clear()
        if kind is _IN_PLACE:
            if output is args[0]:
                _MEMO[key] = _SAME_TENSOR
            return output
        with contextlib.suppress(_NotMemoisable):
            _MEMO[key] = _record(output)
        return output


def _shape_only_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.batch_norm`` for meta inputs: same shape checks, same autograd edges, no decomposition."""
    if input.device.type != "meta":
        return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    size = input.size()
    if training and input.numel() // max(size[1], 1) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    channels = (1, -1) + (1,) * (input.dim() - 2)
    for stat in (running_mean, running_var, weight, bias):
        if stat is not None and stat.numel() != size[1]:
            raise RuntimeError(
                f"running_mean/var, weight and bias should have {size[1]} elements, not {stat.numel()}"
            )
    out = input * weight.reshape(channels) if weight is not None else input.clone()
    return out + bias.reshape(channels) if bias is not None else out


_batch_norm = F.batch_norm


@contextlib.contextmanager
def meta_fast_paths() -> Iterator[None]:
    """Meta-device calls answered from the memo, and batch norm without its decomposition.

    Batch norm on meta tensors runs torch's Python decomposition, which was two thirds of a meta
    forward through efficientnet_b7 or resnet152. The shortcut keeps what a structural check can
    observe: the output shape, the channel-count and one-value-per-channel errors, and gradient
    edges to the weight and bias; tensors on real devices take torch's own path. Nested uses are
    one: a second memo mode on the stack would only add a second Python call to every operator.
    """
    if any(isinstance(mode, _MemoisedMeta) for mode in _get_current_dispatch_mode_stack()):
        yield
        return
    previous = F.batch_norm  # the shortcut already, inside a block that left the memo (without_memo)
    F.batch_norm = _shape_only_batch_norm
    try:
        with _MemoisedMeta():  # type: ignore[no-untyped-call]
            yield
    finally:
        F.batch_norm = previous


@contextlib.contextmanager
def without_memo() -> Iterator[None]:
    """Leave the memo of :func:`meta_fast_paths` for a block that computes with real values.

    Every operator call pays a Python dispatch while the memo is active, and real tensors never
    get anything from it: a quantize=True build inside a structural run (88M weights quantized
    and packed, a calibration forward) was an eighth slower for it. Only the innermost mode can
    leave the stack, so a memo under another mode stays.
    """
    stack = _get_current_dispatch_mode_stack()
    if not stack or not isinstance(stack[-1], _MemoisedMeta):
        yield
        return
    memo = stack[-1]
    memo.__exit__(None, None, None)  # type: ignore[no-untyped-call]  # torch's is untyped
    try:
        yield
    finally:
        memo.__enter__()  # type: ignore[no-untyped-call]


def require_values(device: object, what: str) -> None:
    """Skip the calling test when ``device`` is the meta device, saying why: ``what`` needs values.

    For checks that compare numbers (loaded weights, fingerprints, NaNs): on ``--zoo-device=meta``
    they cannot run, and a skip naming the reason up front beats a torch error after the work.
    """
    kind = getattr(device, "type", str(device).partition(":")[0])
    if kind == "meta":
        import pytest

        pytest.skip(
            f"{what} needs tensor values, which --zoo-device=meta does not have; "
            "structural mode checks shapes only, run it with --zoo-device=cpu"
        )
