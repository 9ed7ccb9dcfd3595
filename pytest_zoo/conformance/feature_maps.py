"""The smallest legal input whose feature maps are all larger than 1x1, found by cheap probes.

At 1x1 every memory format is contiguous: a ResNet fed 32-pixel images ends in a 1x1 map, so a
``.view`` that merges channels with space (broken on channels_last) succeeds, and so does a
reshape that mixes the batch with the spatial positions. The checks that exist for those bugs
(channels_last, batch equivalence, the round trip) therefore run where the deepest map is at least
2x2 in both spatial dimensions, at the smallest such side the model's geometry allows.

The deepest map is measured, not assumed: one-image eval forwards of a meta-device copy of the model
as built (shapes only, through :func:`~pytest_zoo.models.meta.meta_fast_paths`: no kernel computes,
no kernel is set up for a new shape), with a :class:`~.attribution.Recorder` noting every module's
output shape. A map whose size does not follow the input (a global pool's 1x1, a squeeze-excitation's)
is told apart by a probe at about twice the side; the side is then the smallest legal one at which
every map that follows the input is 2x2 or more (the next legal side first, a bisection after).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..models.meta import meta_fast_paths
from ..zoo.families import InputSpec
from . import task_io as tasks
from .attribution import Recorder

__all__ = ["side_for_feature_maps"]

_Maps = dict[tuple[tuple[str, int], int], tuple[int, ...]]


def _meta_copy(model: nn.Module) -> nn.Module:
    """``model``'s module tree on the meta device, without copying a weight."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
        )
    return copy.deepcopy(model, memo)


def _maps(model: nn.Module, io: tasks.TaskIO, example: tasks.Example, side: int) -> _Maps:
    """The spatial size of every 4-d and 5-d output of one eval forward of one ``side``-pixel input."""
    one = dataclasses.replace(example, batch=1, size=(side, side))
    args, kwargs = io.inputs(model, one, 2, torch.device("meta"), train=False)
    model.eval()
    with torch.no_grad(), meta_fast_paths(), Recorder(model, values=False) as recorder:
        model(*args, **kwargs)
    return {
        (call.key, i): shape[-2:]
        for call in (recorder.runs[0] if recorder.runs else [])
        for i, shape in enumerate(call.shapes)
        if len(shape) in (4, 5)
    }


def side_for_feature_maps(
    model: nn.Module,
    io: tasks.TaskIO,
    spec: InputSpec,
    example: tasks.Example,
    device: torch.device,
    *,
    at_least: int = 2,
) -> int:
    """The smallest legal side from ``example``'s at which every map that follows the input size
    is at least ``at_least`` pixels in both spatial dimensions; ``example``'s own side when the
    size is fixed, the input is not an image, or a probe fails (the check then reports it)."""
    side = example.size[0]
    if spec.fixed is not None or device.type == "meta":
        return side
    step = spec.multiple

    def legal(value: int) -> int:
        return max(spec.sizes()[0], -(-value // step) * step)

    try:
        shadow = _meta_copy(model)
        small = _maps(shadow, io, example, side)
        large = _maps(shadow, io, example, legal(2 * side + 1))
        following = [key for key in small.keys() & large.keys() if small[key] != large[key]]

        def enough(maps: _Maps) -> bool:
            return all(min(maps[key]) >= at_least for key in following if key in maps)

        if not following or enough(small):
            return side
        low, high = side, legal(2 * side + 1)  # not enough at low; enough at high
        candidate = legal(side + 1)
        while candidate < high:
            if enough(_maps(shadow, io, example, candidate)):
                high = candidate
            else:
                low = candidate
            candidate = legal((low + high) // 2 + 1) if high - low > step else high
        return high
    except Exception:  # a size the model refuses: the check itself reports what it raises
        return side
