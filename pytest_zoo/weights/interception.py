"""Building with weights, without reading a checkpoint: the builder runs for real with ``weights=W``
while the checkpoint read is short-circuited; probe shapes, output counts and GFLOPs of that model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.building import structural_init
from ..models.cache import active_cache, builder_oracle
from ..models.meta import meta_fast_paths
from ..models.reference import PROBE
from .cases import OPS_REFERENCE_FRAMES, OPS_REFERENCE_SIDE, WeightsCase

# -- building with weights, without reading a checkpoint ------------------------------------------


class _Unread(dict[str, Any]):
    """Stands in for a checkpoint the builder asked for but that is never read."""


@dataclass
class WithWeights:
    """What calling a builder with ``weights=W`` made, and the checkpoint layout it asked to load."""

    model: nn.Module
    #: The load-time ``state_dict`` of the model the checkpoint is loaded into. It can differ from
    #: ``model.state_dict()``: GoogLeNet loads with aux heads and drops them afterwards.
    checkpoint: dict[str, Any]


@contextlib.contextmanager
def _intercept_checkpoint(record: list[dict[str, Any]]) -> Iterator[None]:
    """Make ``weights.get_state_dict()`` free and ``load_state_dict`` of it a no-op that records.

    Every torchvision builder loads with ``model.load_state_dict(weights.get_state_dict(...))``
    (DenseNet renames keys in between, which works on the empty stand-in).
    """
    from torchvision.models import WeightsEnum

    original_load = nn.Module.load_state_dict

    def get_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _Unread()

    def load_state_dict(self: nn.Module, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not isinstance(state_dict, _Unread):
            return original_load(self, state_dict, *args, **kwargs)
        record.append(self.state_dict())  # keeps ``_metadata``: quantized modules need its versions
        return nn.modules.module._IncompatibleKeys([], [])

    with contextlib.ExitStack() as stack:
        original_get = WeightsEnum.get_state_dict
        WeightsEnum.get_state_dict = get_state_dict
        stack.callback(setattr, WeightsEnum, "get_state_dict", original_get)
        nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]
        stack.callback(setattr, nn.Module, "load_state_dict", original_load)
        yield


def build_with_weights(case: WeightsCase, *, structural: bool = True, **kwargs: Any) -> WithWeights:
    """Call the real builder with ``weights=case.weights`` (plus ``kwargs``) without reading weights.

    Nothing is downloaded or read: the checkpoint request is answered by a stand-in, and its load
    is recorded instead of performed. ``structural=True`` (the default) builds on the meta device.
    """
    record: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if structural:
            stack.enter_context(structural_init())
        stack.enter_context(_intercept_checkpoint(record))
        model = case.builder(weights=case.weights, **kwargs)
    if not record:
        raise RuntimeError(
            f"{case.label}: the builder never asked to load a checkpoint, so pytest-zoo cannot see the "
            "model it loads weights into. Does this builder load weights without "
            "model.load_state_dict(weights.get_state_dict(...))?"
        )
    return WithWeights(model=model, checkpoint=record[-1])


def _probe_shapes(case: WeightsCase) -> dict[int, dict[str, tuple[int, ...]]]:
    """State shapes of ``builder(weights=None, num_classes=n)`` at the two probe class counts.

    The probes of the model's builder oracle, which the gate's head checks build as well.
    """
    low, high = builder_oracle(case.model).probe_shapes()
    return {PROBE: low, PROBE + 1: high}


def _class_dimensions(case: WeightsCase) -> list[tuple[str, int, int, int]]:
    """The tensors whose size is ``slope * num_classes + offset``, found by building twice.

    Each is returned as ``(name, dim, slope, offset)``. Derived from the builder (``num_classes=3``
    and ``4``, structurally, offline), so detection heads (``4 * n`` box deltas, ``anchors * n``
    logits) need no per-family rule.
    """
    sizes = _probe_shapes(case)
    found = []
    for name, shape in sizes[PROBE].items():
        other = sizes[PROBE + 1].get(name)
        if other is None or other == shape or len(other) != len(shape):
            continue
        dim = next(i for i, (a, b) in enumerate(zip(shape, other, strict=True)) if a != b)
        slope = other[dim] - shape[dim]
        found.append((name, dim, slope, shape[dim] - PROBE * slope))
    return found


def per_class_parameters(case: WeightsCase, model: nn.Module) -> int:
    """How many parameters one more class adds to ``model`` (only the heads it actually has)."""
    sizes = _probe_shapes(case)
    return sum(
        math.prod(sizes[PROBE + 1][name]) - math.prod(sizes[PROBE][name])
        for name, _ in model.named_parameters()
        if name in sizes[PROBE] and name in sizes[PROBE + 1]
    )


def output_count(case: WeightsCase, built: WithWeights | None = None) -> int:
    """How many classes the builder's model with these weights predicts, read from its shapes.

    The first class-dependent tensor the built model still has decides (GoogLeNet's aux heads,
    present in the probe builds, are gone once weights are loaded).
    """
    built = built or build_with_weights(case)
    state = built.model.state_dict()
    dimensions = _class_dimensions(case)
    for name, dim, slope, offset in dimensions:
        if name in state:
            return (int(state[name].shape[dim]) - offset) // slope
    raise LookupError(
        f"{case.label}: none of the tensors that depend on num_classes "
        f"({', '.join(d[0] for d in dimensions) or 'none'}) is in the model built with these weights"
    )


@contextlib.contextmanager
def outside_dispatch_modes() -> Iterator[None]:
    """Real CPU work (the weights' transforms on a real image) without the active dispatch modes.

    ``--zoo-device=meta`` runs every zoo test under a Python dispatch mode that memoises meta-kernel
    calls (:func:`~pytest_zoo.models.meta.meta_fast_paths`); a CPU operator passes through it
    unchanged, but only after a Python call per operator, which made the transforms' resizes and
    crops several times slower. Tensors made here are the same with or without the modes.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield


def reference_inputs(case: WeightsCase) -> tuple[torch.Tensor, ...]:
    """The model inputs torchvision measured ``_ops`` with: a reference image through the transforms.

    The shapes come from running the weights' own transforms on a small real image of the reference
    side, so crop sizes, segmentation resizes and video layouts are never restated here. Meta
    tensors, computed once per enum and held with the model's other state.
    """
    return active_cache().memo(
        ("reference inputs", case.id), lambda: _reference_inputs(case), group=case.model
    )


def _reference_inputs(case: WeightsCase) -> tuple[torch.Tensor, ...]:
    side, task = OPS_REFERENCE_SIDE, case.task
    transforms = case.weights.transforms()
    with outside_dispatch_modes():
        if task == "video":
            image = torch.zeros(OPS_REFERENCE_FRAMES, 3, side, side, dtype=torch.uint8)
        else:
            image = torch.zeros(3, side, side, dtype=torch.uint8)
        if task == "optical_flow":
            first, second = transforms(image, image)
            return first.unsqueeze(0).to("meta"), second.unsqueeze(0).to("meta")
        out = transforms(image)
        return (out.unsqueeze(0).to("meta"),)


def count_gflops(model: nn.Module, inputs: Sequence[Any]) -> float:
    """GFLOPs as torchvision publishes them: ``FlopCounterMode`` total / 2 (multiply-adds) / 1e9."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with meta_fast_paths(), counter, torch.no_grad():  # the counter sees each call before the memo
        model(*inputs)
    return counter.get_total_flops() / 2 / 1e9
