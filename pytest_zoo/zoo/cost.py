"""How long a model's checks take, estimated before anything is built: the order xdist hands them out.

With two workers and a hundred models, a run ends when its last model does; handed out in an
arbitrary order, the last minutes are one worker alone on a model that takes two of them
(``regnet_y_128gf``, ``vit_h_14``, the MViTs). Handing the largest out first (LPT) leaves only
small models for the end, where they fill the gaps. That needs an order that is known at
collection, from what torchvision publishes with each weights enum, never a build:

* the parameter count: building, initialising, copying and saving a model scale with it, and
  ``test_load_pretrained`` writes and loads a checkpoint per weights enum;
* the forward's GFLOPs, scaled from the geometry torchvision measured them at to the one the kit
  runs (the family table's sizes, clip lengths and batches): most families run on tiny inputs,
  where this term vanishes, but a few run at their only legal geometry (MViT, S3D, MaxViT, SSD);
* whether the model is quantized: its checks also convert it, which costs several float loads.

The coefficients were fitted to the per-model times of a whole-zoo CPU run (``pytest
--zoo-models='*' -n 2``, 2 cores): on it the estimate ranks the 121 models with a Spearman
correlation of 0.88, its first 8 are the 8 longest, and 9 of the 10 longest are in its first 10
(Keypoint R-CNN, whose per-box heads cost what the image size does not show, is 30th). Only the
order matters, so the units are nominal seconds. A model torchvision publishes no weights for (a
model of the user's own) has no estimate: it sorts first, where however long it takes it cannot
be the one a worker still runs at the end. Imports torchvision, which is loaded anyway whenever
zoo models are collected.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .families import find_family

__all__ = [
    "MODEL_MEMORY_BUDGET_MB",
    "UNKNOWN",
    "Footprint",
    "check_seconds",
    "estimate",
    "footprint",
    "model_megabytes",
]

#: The estimate of a model with no published footprint: first in line (see the module docstring).
UNKNOWN = math.inf

#: The checks that write and load one checkpoint of the weights enum they are parametrized by.
LOADING_CHECKS = frozenset({"test_load_pretrained"})

# Nominal seconds, fitted as said above (non-negative least squares, per test).
_PER_MODEL_CHECK = 0.27  # a check of a model: the fixed part
_PER_MODEL_CHECK_MPARAM = 0.0018  # ... per million parameters
_PER_MODEL_CHECK_GFLOP = 0.077  # ... per GFLOP of one forward at the kit's geometry
_PER_LOAD_MPARAM = 0.051  # a checkpoint written and loaded, per million parameters
_QUANTIZED_LOAD = 3.6  # a quantized builder's load converts the model, several float loads' worth
_PER_METADATA_CHECK = 0.01  # a weights check that reads metadata only

#: The image side torchvision measured ``_ops`` at, per task, where its transforms do not say.
_REFERENCE_SIDE = MappingProxyType({"detection": 800, "segmentation": 520, "optical_flow": 700})
#: The clip length video ``_ops`` are measured on.
_REFERENCE_FRAMES = 16
#: The largest batch the checks draw where the family row sets no ``max_batch`` (the estimate
#: assumes the batch sizes 1 to this are drawn equally often).
_TYPICAL_BATCH = 4


@dataclass(frozen=True)
class Footprint:
    """What torchvision publishes about a model that predicts how long its checks take."""

    #: Millions of parameters of the largest weights enum (they differ only by their head).
    mparams: float
    #: GFLOPs of one forward pass at the geometry the kit checks the model at.
    gflops: float
    quantized: bool
    #: Millions of parameters per weights enum member name.
    enum_mparams: Mapping[str, float]


@functools.cache
def footprint(model: str) -> Footprint | None:
    """The footprint of the torchvision builder ``model``; ``None`` if torchvision has no weights for it."""
    from torchvision.models import get_model_weights

    try:
        members = list(get_model_weights(model))
    except (ValueError, KeyError):
        return None
    if not members:
        return None
    enum_mparams = {m.name: float(m.meta.get("num_params", 0)) / 1e6 for m in members}
    scale = _geometry_scale(model)
    gflops = min(float(m.meta.get("_ops", 0.0)) * scale(m) for m in members)
    return Footprint(
        mparams=max(enum_mparams.values()),
        gflops=gflops,
        quantized=model.startswith("quantized_"),
        enum_mparams=MappingProxyType(enum_mparams),
    )


def _geometry_scale(model: str) -> Callable[[Any], float]:
    """A function of a weights member: the kit's forward cost over the one its ``_ops`` were measured at."""
    family = find_family(model)
    if family is None:  # a builder added after the table: the table's default (small) inputs
        task, spec, kwargs = "classification", None, {}
    else:
        task, spec, kwargs = family.task, family.inputs, dict(family.build_kwargs)
    low, high = spec.sizes() if spec is not None else (1, 33)
    side: float | None = (low + high) / 2
    if "min_size" in kwargs and "max_size" in kwargs:  # resized inside the model to these
        side = (float(kwargs["min_size"]) + float(kwargs["max_size"])) / 2  # type: ignore[arg-type]
    elif task == "detection":  # SSD resizes every image to its own fixed size: the full cost
        side = None
    frames = 1.0
    if spec is not None and spec.frames is not None:
        frames = (spec.frames[0] + spec.frames[1]) / 2 / _REFERENCE_FRAMES
    batch = (1 + min(_TYPICAL_BATCH, spec.max_batch or _TYPICAL_BATCH)) / 2 if spec is not None else 2.5

    def scale(member: Any) -> float:
        if side is None:
            return batch
        reference = _reference_side(member) or _REFERENCE_SIDE.get(task, 224)
        return min(1.0, (side / reference) ** 2) * frames * batch

    return scale


def _reference_side(member: Any) -> float | None:
    """The crop (else resize) side of a weights member's preset transforms, if they name one."""
    keywords = getattr(member.transforms, "keywords", None) or {}
    side = keywords.get("crop_size") or keywords.get("resize_size")
    if isinstance(side, list | tuple):
        side = side[0] if side else None
    return float(side) if isinstance(side, int | float) and side > 0 else None


def check_seconds(found: Footprint | None, check: str, weights: str | None) -> float:
    """The estimate for one test: ``check`` (the test function's name) of a model, for ``weights``
    (a weights enum member name) when the test is parametrized by one."""
    if found is None:
        return UNKNOWN
    if weights is None:
        return (
            _PER_MODEL_CHECK + _PER_MODEL_CHECK_MPARAM * found.mparams + _PER_MODEL_CHECK_GFLOP * found.gflops
        )
    if check in LOADING_CHECKS:
        mparams = found.enum_mparams.get(weights, found.mparams)
        return _PER_LOAD_MPARAM * mparams * (_QUANTIZED_LOAD if found.quantized else 1.0)
    return _PER_METADATA_CHECK


def estimate(tests: Iterable[tuple[str, str, str | None]]) -> dict[str, float]:
    """Per model, the sum of :func:`check_seconds` over its ``(model, check, weights)`` tests."""
    totals: dict[str, float] = {}
    for model, check, weights in tests:
        totals[model] = totals.get(model, 0.0) + check_seconds(footprint(model), check, weights)
    return totals


#: What the models that different workers check at the same time may hold together. With each
#: worker's own ~0.7 GB (torch, torchvision, Hypothesis) and the controller's, ``-n 2`` then stays
#: within 8 GB: regnet_y_128gf and vit_h_14 side by side had peaked at 11.6 GB.
MODEL_MEMORY_BUDGET_MB = 5632.0

#: What a model's checks hold at their peak, per parameter: the fp32 weights and a model-sized
#: second set (the full backward's gradients, a loaded checkpoint's mapped pages). Measured on the
#: largest builders: 6.7 to 8 bytes per parameter over the worker's own memory.
_BYTES_PER_PARAMETER = 8
#: ... and per GFLOP of one forward at the kit's geometry: the activations a backward keeps
#: (mvit_v2_s, 64 GFLOPs at 16 frames of 224 px: 2 GB beyond its weights; s3d: 1.1 GB for 25).
_MEGABYTES_PER_GFLOP = 32


def model_megabytes(model: str) -> float:
    """The memory ``model``'s checks hold at their peak, beyond the worker's own; 0 when unknown.

    Unknown means a model of the user's own: nothing is known to hold it back, so nothing does.
    """
    found = footprint(model)
    if found is None:
        return 0.0
    return found.mparams * _BYTES_PER_PARAMETER + found.gflops * _MEGABYTES_PER_GFLOP
