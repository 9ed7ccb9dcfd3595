"""The converted (``quantize=True``) model's checks: its swapped head's shapes, then one forward.

Conversion is CPU-only and changes what a legal input is and how a head's weights are stored
(packed), so it has its own oracle and its own smallest input; everything else about a quantized
builder is checked on the float model it returns with ``quantize=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .strategies import input_spec
from .task_io import Example, OutputReport, TaskIO

__all__ = ["CONVERTED_MIN_SIZE", "calibration_side", "converted_quantized_problems"]


#: The smallest input side a converted model gets. A quantized global mean pool over a 1x1 feature
#: map fails ("required rank 4 tensor to use channels_last format"), so 32 pixels, legal for the
#: float model, are not legal after conversion.
CONVERTED_MIN_SIZE = 64


def calibration_side(name: str) -> int:
    """The smallest legal input side of ``quantize=True`` builder ``name``, once converted.

    What the kit's conversions calibrate on (:func:`~pytest_zoo.models.building.small_calibration`)
    when the calibrated ranges are not what is checked: they are overwritten by a checkpoint's, or
    only shapes are read.
    """
    return max(CONVERTED_MIN_SIZE, input_spec(name).min_size)


def converted_quantized_problems(
    model: nn.Module,
    n: int,
    example: Example,
    expected_head: Mapping[str, tuple[int, ...]],
    replace_head: Callable[[nn.Module, int], nn.Module],
) -> tuple[OutputReport, OutputReport]:
    """Check a converted (``quantize=True``) model: its swapped head's shapes, then one eval forward.

    ``expected_head`` maps the head's parameter names to the shapes the float builder gives them for
    ``n`` classes. Conversion packs a Linear's weight and bias but keeps their shapes, so the float
    builder is the right oracle; the rest of the state_dict (fused convolutions, scales) is not
    comparable and not compared. Returns ``(head report, output report)``.
    """
    swapped = replace_head(model, n)
    found = _head_shapes(swapped, expected_head)
    head = OutputReport(found={k: found.get(k) for k in expected_head}, expected=dict(expected_head))
    swapped.eval()
    x = torch.rand(example.shape, generator=example.generator())
    with torch.no_grad():
        output = swapped(x)
    return head, TaskIO().check(output, example, n, train=False)


def _head_shapes(model: nn.Module, keys: Iterable[str]) -> dict[str, tuple[int, ...] | None]:
    """:func:`_packed_shapes` of the modules that hold ``keys``, not of the whole model.

    A converted convolution unpacks its weights to say what its state_dict holds; the backbone's
    are never compared, and unpacking them was a third of this check. Each key is looked up under
    the deepest module of its path that exists (the whole model for a swap that renamed them).
    """
    owners: dict[str, nn.Module] = {}
    for key in keys:
        path = key.rpartition(".")[0]
        while path and path not in owners:
            try:
                owners[path] = model.get_submodule(path)
            except AttributeError:
                path = path.rpartition(".")[0]
        if not path:
            return _packed_shapes(model)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for path, owner in owners.items():
        shapes.update(_packed_shapes(owner, prefix=f"{path}."))
    return shapes


def _packed_shapes(model: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...] | None]:
    """``state_dict`` shapes, with a quantized Linear's packed ``(weight, bias)`` unpacked to float names."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    for key, value in model.state_dict(prefix=prefix).items():
        if key.endswith("._packed_params._packed_params") and isinstance(value, tuple):
            owner = key[: -len("._packed_params._packed_params")]
            weight, bias = value
            shapes[f"{owner}.weight"] = tuple(weight.shape)
            shapes[f"{owner}.bias"] = tuple(bias.shape) if bias is not None else None
        elif isinstance(value, torch.Tensor):
            shapes[key] = tuple(value.shape)
    return shapes
