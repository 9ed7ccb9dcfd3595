"""Equivalence checks: a fine-tuned model reloads, batches, changes memory format and precision alike.

* :func:`batch_equivalence` -- in eval mode each sample's output in a batch equals its output alone;
* :func:`channels_last_equivalence` -- a channels_last model and input reproduce the eager output;
* :func:`precision_forward` -- a forward under autocast (or in a converted dtype) is finite, same shapes.

:func:`compare_outputs` is the comparison they, :mod:`.round_trip` and :mod:`.deployment` share.
Every check returns a :class:`~pytest_zoo.training.CheckReport`, raising nothing for a failing model
(skipped on meta).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .attribution import tolerance_scale, within_tolerance
from .reports import (
    CheckReport,
    Inputs,
    call_model,
    describe_error,
    model_device,
    named_leaves,
    needs_values,
    nonfinite,
)

__all__ = [
    "BATCH_ATOL",
    "BATCH_RTOL",
    "LAYOUT_TOL",
    "EagerForward",
    "batch_equivalence",
    "channels_last_equivalence",
    "compare_outputs",
    "exact_arithmetic",
    "precision_forward",
]

#: transformers' ``test_batching_equivalence`` default tolerances (tests/test_modeling_common.py).
BATCH_ATOL = BATCH_RTOL = 1e-5
#: channels_last against contiguous: other kernels, other summation orders.
LAYOUT_TOL = 1e-4


def compare_outputs(
    reference: object, candidate: object, *, atol: float, rtol: float, what: str
) -> tuple[list[str], list[str]]:
    """Compare two model outputs leaf by leaf: ``(problems, details)``.

    Leaves are named as :func:`~pytest_zoo.training.named_leaves` names them; missing or extra
    leaves, shape differences and values outside ``atol * scale + rtol * |reference|`` are problems,
    where ``scale`` is ``max(1, max |reference|)`` of that output: a randomly initialised network
    whose logits reach 1e8 (inception_v3) is judged like one whose logits reach 1, and an output
    of scale 1 or less gets exactly ``atol``.
    """
    ref, got = named_leaves(reference), named_leaves(candidate)
    problems: list[str] = []
    details: list[str] = []
    if ref.keys() != got.keys():
        problems.append(
            f"{what} returns the outputs {sorted(got)}, eager returns {sorted(ref)}"
            if got
            else f"{what} returns no tensor ({type(candidate).__name__}), eager returns {sorted(ref)}"
        )
    for name in sorted(ref.keys() & got.keys()):
        a, b = ref[name].detach(), got[name].detach()
        if a.shape != b.shape:
            problems.append(f"{what}: output '{name}' has shape {tuple(b.shape)}, eager {tuple(a.shape)}")
            continue
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a, b.to(a.device)):
                problems.append(f"{what}: output '{name}' ({a.dtype}) differs from eager")
            continue
        b = b.to(device=a.device, dtype=a.dtype)
        if not within_tolerance(a, b, atol=atol, rtol=rtol):
            scale, diff = tolerance_scale(a), (a - b).abs().nan_to_num(float("inf"))
            problems.append(
                f"{what}: output '{name}' differs from eager by up to {float(diff.max()):.3g} "
                f"(tolerance atol={atol:g} x {scale:.3g}, rtol={rtol:g})"
            )
            details.append(
                f"{name}: max |eager| {float(a.abs().max()):.3g}, mean |diff| {float(diff.mean()):.3g}"
            )
    return problems, details


@contextlib.contextmanager
def exact_arithmetic() -> Iterator[None]:
    """``no_grad`` and no TF32 (cuDNN's default on Ampere): a 1e-5 comparison is about the model."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


class EagerForward:
    """The float32 eval forward of ``model`` on ``inputs``, run once however many checks of one
    example compare with it (channels_last's reference is autocast's): a model-sized forward each.

    Call it where the forward would run: an exception propagates to that caller, and the next
    call runs the forward again. The caller keeps the model unchanged in between.
    """

    def __init__(self, model: nn.Module, inputs: Inputs) -> None:
        self.model, self.inputs = model, inputs
        self._output: tuple[object] | None = None

    def __call__(self) -> object:
        if self._output is None:
            self.model.eval()
            with exact_arithmetic():
                self._output = (call_model(self.model, self.inputs),)
        return self._output[0]


# -- batches ---------------------------------------------------------------------------------------


def batch_equivalence(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    kwargs: dict[str, Any] | None = None,
    atol: float = BATCH_ATOL,
    rtol: float = BATCH_RTOL,
    check: str = "batch equivalence",
) -> CheckReport:
    """In eval mode, each sample's output within ``batch`` equals its output alone.

    For models taking one batched tensor (classification, segmentation, video): ``batch`` is
    ``(B, ...)`` with ``B >= 2``; every output leaf must be batched along dim 0. Tolerances default
    to transformers' ``test_batching_equivalence`` (atol = rtol = 1e-5). A head that mixes samples
    (a normalisation over the batch dimension, a softmax over dim 0) fails.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    if batch.shape[0] < 2:
        return CheckReport(
            check, problems=(f"batch equivalence needs a batch of 2 or more, got {batch.shape[0]}",)
        )
    extra = kwargs or {}
    model.eval()
    try:
        with exact_arithmetic():
            whole = named_leaves(model(batch, **extra))
            alone = [named_leaves(model(batch[i : i + 1], **extra)) for i in range(batch.shape[0])]
    except Exception as error:
        return CheckReport(check, problems=(describe_error("the eval forward", error),))
    problems: list[str] = []
    details: list[str] = []
    for i, single in enumerate(alone):
        rows = {k: v[i : i + 1] for k, v in whole.items() if v.dim() and v.shape[0] == batch.shape[0]}
        p, d = compare_outputs(single, rows, atol=atol, rtol=rtol, what=f"sample {i} within the batch")
        problems += p
        details += d
    if problems:
        problems.append("the outputs depend on the other samples in the batch: the model mixes samples")
    return CheckReport(
        check,
        problems=tuple(problems[:6]),
        details=tuple(details[:6]),
        expected={"batch": tuple(batch.shape)},
        found={"batch": tuple(batch.shape)},
    )


# -- memory format and precision -------------------------------------------------------------------


@contextlib.contextmanager
def _memory_format(model: nn.Module, fmt: torch.memory_format) -> Iterator[None]:
    """``model`` in ``fmt`` inside; afterwards on the very tensors it had before. Converting back
    would copy every weight a second time, into storage that the session's model cache could not
    tell from a weight changed in place (it would rebuild the model)."""
    parameters = [(parameter, parameter.data) for parameter in model.parameters()]
    buffers = [(module, key, buffer) for module in model.modules() for key, buffer in module._buffers.items()]
    model.to(memory_format=fmt)
    try:
        yield
    finally:
        for parameter, data in parameters:
            parameter.data = data
        for module, key, buffer in buffers:
            module._buffers[key] = buffer


def channels_last_equivalence(
    model: nn.Module,
    inputs: Inputs,
    *,
    atol: float = LAYOUT_TOL,
    rtol: float = LAYOUT_TOL,
    check: str = "channels_last",
    eager: EagerForward | None = None,
) -> CheckReport:
    """The model and its 4-d/5-d tensor inputs in channels_last reproduce the contiguous eval output.

    4-d inputs go to ``torch.channels_last``, 5-d to ``torch.channels_last_3d`` (the model too, then
    back). A ``.view`` merging channels with space raises there only where maps exceed 1x1: say so.
    ``eager``: the contiguous forward, shared with another check of the same example.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    args, kwargs = inputs
    dims = {a.dim() for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)} & {4, 5}
    if not dims:
        return CheckReport(check, skipped=f"{check} needs a 4-d or 5-d image input; this model takes none")
    fmt = torch.channels_last if 4 in dims else torch.channels_last_3d

    def convert(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.dim() == (4 if fmt is torch.channels_last else 5):
            return value.contiguous(memory_format=fmt)
        return value

    eager = eager or EagerForward(model, inputs)
    model.eval()
    try:
        reference = eager()
        with exact_arithmetic(), _memory_format(model, fmt):
            converted = model(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
    except Exception as error:
        problem = describe_error(f"the {fmt} forward", error)
        if "view size is not compatible" in str(error):
            problem += (
                "; a .view on a non-contiguous channels_last tensor (it merges the channel dimension "
                "with the spatial ones): use .flatten(1), .reshape or adaptive_avg_pool2d"
            )
        return CheckReport(check, problems=(problem,))
    problems, details = compare_outputs(reference, converted, atol=atol, rtol=rtol, what=f"the {fmt} model")
    return CheckReport(check, problems=tuple(problems), details=tuple(details))


def precision_forward(
    model: nn.Module,
    inputs: Inputs,
    *,
    dtype: torch.dtype | None = None,
    autocast: bool = True,
    train: bool = False,
    check: str | None = None,
    eager: EagerForward | None = None,
) -> CheckReport:
    """A forward under ``torch.autocast`` (or with the model already converted) is finite, same shapes.

    ``autocast=True``: the float32 model runs under ``torch.autocast(device_type, dtype)``, ``dtype``
    defaulting to bfloat16 on CPU and float16 on CUDA. ``autocast=False``: the caller has converted
    the model (and ran its ``replace_head`` afterwards); floating inputs are cast to the dtype of the
    model's first parameter. Shapes are compared with a float32 eager forward when ``autocast`` (no
    reference exists for a converted model: only finiteness is checked then). ``eager`` (with
    ``autocast`` in eval mode): that float32 forward, shared with another check of the same
    example; only its shapes are used.
    """
    device = model_device(model)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    name = check or (f"autocast {dtype}" if autocast else f"forward in {dtype}")
    skipped = needs_values(name, model)
    if skipped is not None:
        return skipped
    if eager is not None and (train or not autocast):
        raise ValueError("precision_forward: eager is an eval forward in float32: autocast=True, train=False")
    args, kwargs = inputs
    model.train(train)
    try:
        with torch.no_grad():
            if autocast:
                reference: object = eager() if eager is not None else call_model(model, inputs)
                model.train(train)
                with torch.autocast(device.type, dtype=dtype):
                    output = call_model(model, inputs)
            else:
                target = next(model.parameters()).dtype

                def cast(value: object) -> object:
                    if isinstance(value, torch.Tensor) and value.is_floating_point():
                        return value.to(target)
                    if isinstance(value, list):
                        return [cast(v) for v in value]
                    return value

                output = model(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})
                reference = output
    except Exception as error:
        problem = describe_error(f"the forward under {name}", error)
        if "dtype" in str(error) or "same type" in str(error) or "scalar type" in str(error).lower():
            problem += (
                "; a layer computes in a fixed dtype that differs from the model's: build the head "
                "with the dtype of the layer it replaces, and let autocast pick operand dtypes"
            )
        return CheckReport(name, problems=(problem,))
    leaves = named_leaves(output)
    shapes = {k: tuple(v.shape) for k, v in leaves.items()}
    expected = {k: tuple(v.shape) for k, v in named_leaves(reference).items()}
    problems = [
        f"output '{k}' under {name} is not finite: {t}" for k, v in leaves.items() if (t := nonfinite(v))
    ]
    if shapes != expected:
        problems.append(f"output shapes under {name} differ from float32: {shapes} != {expected}")
    return CheckReport(name, problems=tuple(problems), expected=expected, found=shapes)
