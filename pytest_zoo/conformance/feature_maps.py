"""The smallest legal input whose feature maps are all larger than 1x1, found by cheap probes.

At 1x1 every memory format is contiguous: a ResNet fed 32-pixel images ends in a 1x1 map, so a
``.view`` that merges channels with space (broken on channels_last) succeeds, and so does a
reshape that mixes the batch with the spatial positions. The checks that exist for those bugs
(channels_last, batch equivalence, the round trip) therefore run where the deepest map is at least
2x2 in both spatial dimensions, at the smallest such side the model's geometry allows.

The deepest map is measured, not assumed: one-image eval forwards of the model as built, with a
:class:`~.attribution.Recorder` noting every module's output shape. A map whose size does not follow
the input (a global pool's 1x1, a squeeze-excitation's) is told apart by a probe at about twice the
side; the side is then the smallest legal one at which every map that follows the input is 2x2 or
more (the next legal side first, a bisection after), typically three forwards of a few dozen pixels.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..zoo.families import InputSpec
from . import task_io as tasks
from .attribution import Recorder

__all__ = ["side_for_feature_maps"]

_Maps = dict[tuple[tuple[str, int], int], tuple[int, ...]]


def _maps(
    model: nn.Module, io: tasks.TaskIO, example: tasks.Example, side: int, device: torch.device
) -> _Maps:
    """The spatial size of every 4-d and 5-d output of one eval forward of one ``side``-pixel input."""
    args, kwargs = io.inputs(
        model, dataclasses.replace(example, batch=1, size=(side, side)), 2, device, train=False
    )
    model.eval()
    with torch.no_grad(), Recorder(model, values=False) as recorder:
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
        small = _maps(model, io, example, side, device)
        large = _maps(model, io, example, legal(2 * side + 1), device)
        following = [key for key in small.keys() & large.keys() if small[key] != large[key]]

        def enough(maps: _Maps) -> bool:
            return all(min(maps[key]) >= at_least for key in following if key in maps)

        if not following or enough(small):
            return side
        low, high = side, legal(2 * side + 1)  # not enough at low; enough at high
        candidate = legal(side + 1)
        while candidate < high:
            if enough(_maps(model, io, example, candidate, device)):
                high = candidate
            else:
                low = candidate
            candidate = legal((low + high) // 2 + 1) if high - low > step else high
        return high
    except Exception:  # a size the model refuses: the check itself reports what it raises
        return side
