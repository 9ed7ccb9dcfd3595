"""The metadata checks: schema, categories, ``num_params``, ``_ops``, ``_file_size``, metrics, recipe,
``min_size`` and transforms, each against an oracle that does not come from the metadata itself.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import torch
from torch import nn

from ..models.cache import active_cache
from ..models.meta import meta_fast_paths
from ..models.reference import state_bytes
from .cases import (
    FILE_SIZE_TOLERANCE,
    OPS_TOLERANCE,
    PERMITTED_FIELDS,
    PLACEHOLDER_CATEGORIES,
    TASK_FIELDS,
    MetadataMismatch,
    WeightsCase,
)
from .interception import (
    WithWeights,
    build_with_weights,
    count_gflops,
    output_count,
    outside_dispatch_modes,
    per_class_parameters,
    reference_inputs,
)


def is_finite_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class NotApplicable(Exception):
    """The check has nothing to check for these weights (e.g. categories of optical-flow weights)."""


def float_case(case: WeightsCase) -> tuple[WeightsCase, dict[str, Any]]:
    """The case and builder kwargs whose model defines ``num_params``/``_ops`` for ``case``.

    Quantized weights describe the float model they were quantized from (``meta['unquantized']``):
    a quantized model's parameters are packed and its FLOPs are not what was published. The same
    quantizable builder is called with the unquantized weights and ``quantize=False``.
    """
    if case.task == "quantized":
        return WeightsCase(case.model, case.meta["unquantized"]), {"quantize": False}
    return case, {}


def built(case: WeightsCase) -> WithWeights:
    """The structural model the builder makes with ``case``'s (float) weights, built once.

    Held in the model cache with the model's other state, so the ten checks of an enum share it
    and it goes when the session moves on to the next model.
    """

    def build() -> WithWeights:
        source, kwargs = float_case(case)
        return build_with_weights(source, **kwargs)

    return active_cache().memo(("with weights", case.id), build, group=case.model)


def check_schema(case: WeightsCase) -> None:
    """Only permitted keys; every key and ``_metrics`` entry the task requires is there."""
    meta = case.meta
    unsupported = sorted(set(meta) - PERMITTED_FIELDS)
    if unsupported:
        raise case.mismatch(
            ", ".join(unsupported),
            f"only torchvision's permitted keys {sorted(PERMITTED_FIELDS)}",
            "unsupported key(s)",
        )
    required, metrics = TASK_FIELDS[case.task]
    missing = sorted(required - set(meta))
    if missing:
        raise case.mismatch(", ".join(missing), f"present (required for {case.task} weights)", "missing")
    found_metrics = meta["_metrics"]
    for dataset, keys in metrics.items():
        present = set(found_metrics.get(dataset, {}))
        if not set(keys) <= present:
            raise case.mismatch(
                f"_metrics.{dataset}",
                f"keys {list(keys)} (required for {case.task} weights)",
                sorted(present) if dataset in found_metrics else f"no {dataset!r} entry",
            )


def check_categories(case: WeightsCase) -> None:
    """Unique, non-empty names, one per output the builder's model with these weights produces."""
    if "categories" not in case.meta and not TASK_FIELDS[case.task][1]:
        raise NotApplicable(f"{case.label}: {case.task} weights carry no categories")
    categories = case.meta.get("categories")
    if not isinstance(categories, list) or not categories:
        raise case.mismatch("categories", "a non-empty list of class names", repr(categories))
    bad = [c for c in categories if not isinstance(c, str) or not c.strip()]
    if bad:
        raise case.mismatch("categories", "names that are non-empty strings", f"{bad[:5]!r}")
    duplicates = sorted({c for c in categories if categories.count(c) > 1} - PLACEHOLDER_CATEGORIES)
    if duplicates:
        raise case.mismatch("categories", "unique names", f"duplicates {duplicates[:10]}")
    source, _ = float_case(case)
    outputs = output_count(source, built(case))
    if len(categories) != outputs:
        raise case.mismatch(
            "categories",
            f"{outputs} names (the builder's model with these weights has {outputs} outputs)",
            f"{len(categories)} names",
        )
    # The builder sizes the head from len(categories), so the model agrees with them by construction;
    # num_params was counted on the model the checkpoint was published for, so it says how many.
    model = built(case).model
    slope = per_class_parameters(source, model)
    declared = case.meta.get("num_params")
    if slope and isinstance(declared, int):
        extra, rest = divmod(declared - sum(p.numel() for p in model.parameters()), slope)
        if rest == 0 and extra != 0:
            raise case.mismatch(
                "categories",
                f"{len(categories) + extra} names (the class count at which {case.model}(weights=...) "
                f"has meta['num_params'] = {declared:,} parameters)",
                f"{len(categories)} names",
            )
    names = case.meta.get("keypoint_names")
    if names is not None and (not isinstance(names, list) or len(set(names)) != len(names)):
        raise case.mismatch("keypoint_names", "a list of unique names", repr(names))


def check_num_params(case: WeightsCase) -> None:
    """``num_params`` is the parameter count of the model the builder makes with these weights."""
    model = built(case).model
    count = sum(p.numel() for p in model.parameters())
    declared = case.meta.get("num_params")
    if declared != count:
        source, _ = float_case(case)
        slope = per_class_parameters(source, model)
        hint = ""
        if slope and isinstance(declared, int) and (declared - count) % slope == 0:
            hint = (
                f"The difference is the head parameters of exactly {(declared - count) // slope} "
                "class(es): check meta['categories'], from which the builder sizes the head."
            )
        raise case.mismatch(
            "num_params",
            f"{count:,} (parameters of {case.model}(weights={case.weights!r}), built on the meta device"
            + (", as the float model it quantizes)" if case.task == "quantized" else ")"),
            f"{declared:,}" if isinstance(declared, int) else repr(declared),
            hint,
        )
    unquantized = case.meta.get("unquantized")
    if unquantized is not None and unquantized.meta.get("num_params") != count:
        raise case.mismatch(
            "num_params",
            f"the same count as {unquantized!r}",
            f"{count:,} vs {unquantized.meta.get('num_params')!r}",
        )


def _detection_trunk(model: nn.Module) -> nn.Module | None:
    """The data-independent part of a detector: its input transform and backbone, or ``None``."""
    transform, backbone = getattr(model, "transform", None), getattr(model, "backbone", None)
    if not isinstance(transform, nn.Module) or not isinstance(backbone, nn.Module):
        return None
    parts: tuple[nn.Module, nn.Module] = (transform, backbone)

    class Trunk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transform, self.backbone = parts

        def forward(self, images: list[torch.Tensor]) -> Any:
            return self.backbone(self.transform(images)[0].tensors)

    return Trunk()


def check_ops(case: WeightsCase) -> None:
    """``_ops`` equals the GFLOPs ``FlopCounterMode`` counts at the transforms' output size.

    Counted on the meta device, so even vit_h_14 at 518 px costs a fraction of a second. Detection
    models run data-dependent steps (proposal filtering, NMS) that no meta tensor can execute and
    whose cost depends on what the trained weights detect; for them only the trunk (transform and
    backbone) is counted, and it must not exceed the published figure.
    """
    declared = case.meta.get("_ops")
    if not is_finite_number(declared) or declared <= 0:
        raise case.mismatch("_ops", "a positive number of GFLOPs", repr(declared))
    model = built(case).model
    inputs = reference_inputs(case)
    if case.task == "detection":
        trunk = _detection_trunk(model)
        if trunk is None:
            raise NotApplicable(f"{case.label}: no transform/backbone to count")
        found = count_gflops(trunk, [[inputs[0][0]]])
        if found > declared * (1 + OPS_TOLERANCE):
            raise case.mismatch(
                "_ops", f"at least {found:.3f} (the trunk alone at input {tuple(inputs[0].shape)})", declared
            )
        return
    found = count_gflops(model, inputs)
    if abs(found - declared) > 0.0005 + OPS_TOLERANCE * declared:
        raise case.mismatch(
            "_ops",
            f"{found:.3f} GFLOPs (FlopCounterMode / 2 at input {tuple(inputs[0].shape)}, "
            f"tolerance {OPS_TOLERANCE:.1%} + rounding)",
            declared,
        )


def check_file_size(case: WeightsCase) -> None:
    """``_file_size`` (MiB) is the size of the checkpoint the builder loads: its tensors plus pickling.

    For float weights the load-time state_dict gives the tensor bytes exactly, so the size must lie
    between those bytes and 3% (+0.1 MiB) above. A quantized checkpoint's layout is only known after
    a real quantizing build (seconds to minutes), so it is bounded instead: at least one byte per
    parameter (int8 weights), at most the float checkpoint it came from (MobileNetV3 ships QAT
    weights, which are float, and converts after loading).
    """
    declared = case.meta.get("_file_size")
    if not is_finite_number(declared) or declared <= 0:
        raise case.mismatch("_file_size", "a positive size in MiB", repr(declared))
    size = state_bytes(built(case).checkpoint) / 2**20
    low, high = size, size * (1 + FILE_SIZE_TOLERANCE) + 0.1
    if case.task == "quantized":
        low = sum(p.numel() for p in built(case).model.parameters()) / 2**20
    if not low <= declared <= high:
        raise case.mismatch(
            "_file_size",
            f"{low:.3f}..{high:.3f} MiB (the {len(built(case).checkpoint)} tensors the builder loads, "
            + ("int8..float32" if case.task == "quantized" else "float32")
            + ", plus pickling)",
            declared,
        )


def check_metrics(case: WeightsCase) -> None:
    """Every metric the task requires is a finite number; accuracies are percentages."""
    metrics = case.meta.get("_metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise case.mismatch("_metrics", "a non-empty dict of dataset -> metrics", repr(metrics))
    for dataset, values in metrics.items():
        for key, value in values.items():
            field = f"_metrics.{dataset}.{key}"
            if not is_finite_number(value):
                raise case.mismatch(field, "a finite number", repr(value))
            if key.startswith("acc@") and not 0 <= value <= 100:
                raise case.mismatch(field, "a percentage in 0..100", value)


def check_recipe(case: WeightsCase) -> None:
    """``recipe`` is an absolute http(s) URL, so users can find how the weights were trained."""
    from urllib.parse import urlparse

    recipe = case.meta.get("recipe")
    parsed = urlparse(recipe) if isinstance(recipe, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise case.mismatch("recipe", "an http(s) URL", repr(recipe))


def min_size_inputs(case: WeightsCase) -> tuple[Any, ...]:
    """Meta-device inputs of the smallest size ``meta['min_size']`` (and ``min_temporal_size``) allows."""
    min_size = case.meta.get("min_size")
    if not (isinstance(min_size, tuple) and len(min_size) == 2 and all(isinstance(s, int) for s in min_size)):
        raise case.mismatch("min_size", "a (height, width) pair of ints", repr(min_size))
    h, w = min_size
    if case.task == "video":
        frames = case.meta.get("min_temporal_size", 1)
        return (torch.empty(1, 3, frames, h, w, device="meta"),)
    if case.task == "optical_flow":
        return torch.empty(1, 3, h, w, device="meta"), torch.empty(1, 3, h, w, device="meta")
    if case.task == "detection":
        return ([torch.empty(3, h, w, device="meta")],)
    return (torch.empty(1, 3, h, w, device="meta"),)


def check_min_size(case: WeightsCase) -> None:
    """A forward pass at ``meta['min_size']`` succeeds (on the meta device: shapes only, free).

    Detection models resize internally and then run data-dependent steps; their transform and
    backbone (where the size matters) are what runs. The weights' own transforms must also produce
    at least ``min_size``, or the documented preprocessing would feed the model an image it rejects.
    """
    model = built(case).model.eval()
    inputs = min_size_inputs(case)
    produced = tuple(reference_inputs(case)[0].shape[-2:])
    if case.task != "detection" and any(p < m for p, m in zip(produced, case.meta["min_size"], strict=True)):
        raise case.mismatch(
            "min_size", f"at most {produced}, the size weights.transforms() produces", case.meta["min_size"]
        )
    if case.task == "detection":
        trunk = _detection_trunk(model)
        if trunk is None:
            raise NotApplicable(f"{case.label}: no transform/backbone to run")
        model = trunk
    try:
        with meta_fast_paths(), torch.no_grad():
            model(*inputs)
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        raise case.mismatch(
            "min_size",
            "a size the model accepts",
            f"{case.meta['min_size']}, which fails: {type(exc).__name__}: {str(exc).splitlines()[0]}",
        ) from exc


# -- transforms -----------------------------------------------------------------------------------

#: Transforms without mean/std attributes document their value range instead (in ``describe()``):
#: ObjectDetection rescales to [0, 1], OpticalFlow to [-1, 1].
_IMPLIED_NORMALIZATION = {
    "ObjectDetection": ((0.0,) * 3, (1.0,) * 3),
    "OpticalFlow": ((0.5,) * 3, (0.5,) * 3),
}


def documented_normalization(transforms: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the transforms document for each channel."""
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    name = type(transforms).__name__
    if name not in _IMPLIED_NORMALIZATION:
        raise LookupError(f"transforms {name} document neither mean/std nor a known value range")
    return _IMPLIED_NORMALIZATION[name]


def expected_spatial_size(transforms: object, height: int, width: int) -> tuple[int, int]:
    """The output ``(H, W)`` the transforms document for an input of ``height x width``."""
    crop = getattr(transforms, "crop_size", None)
    if crop:
        return (crop[0], crop[-1])
    resize = getattr(transforms, "resize_size", None)
    if resize:
        if len(resize) == 2:
            return (resize[0], resize[1])
        short, long = sorted((height, width))
        new_short, new_long = resize[0], int(resize[0] * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    return (height, width)


def check_transformed(
    case: WeightsCase, image: Any, color: tuple[int, int, int], height: int, width: int, frames: int = 0
) -> None:
    """``transforms()(image)`` is float32, of the documented size, normalised with the documented
    mean/std. ``image`` is a single colour, which any resize and crop preserve exactly, so every
    output value is known: ``(color / 255 - mean) / std``.
    """
    with outside_dispatch_modes():
        _check_transformed(case, image, color, height, width, frames)


def _check_transformed(
    case: WeightsCase, image: Any, color: tuple[int, int, int], height: int, width: int, frames: int
) -> None:
    transforms = case.weights.transforms()
    out = transforms(image, image)[0] if case.task == "optical_flow" else transforms(image)
    kind = f"{type(image).__name__} {height}x{width}" + (f"x{frames} frames" if frames else "")
    where = f"{case.label}: transforms() on a {kind} image of colour {color}"
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32:
        raise MetadataMismatch(
            f"{where}: expected a float32 tensor, found {type(out).__name__} {getattr(out, 'dtype', '')}"
        )
    h, w = expected_spatial_size(transforms, height, width)
    expected_shape = (3, frames, h, w) if frames else (3, h, w)
    if tuple(out.shape) != expected_shape:
        raise MetadataMismatch(
            f"{where}: expected shape {expected_shape} (documented: {transforms!r}), found {tuple(out.shape)}"
        )
    mean, std = documented_normalization(transforms)
    for c in range(3):
        value = (color[c] / 255 - mean[c]) / std[c]
        found = out[c]
        if not torch.allclose(found, torch.full_like(found, value), atol=1e-4):
            raise MetadataMismatch(
                f"{where}: channel {c} expected {value:.5f} everywhere (mean {mean[c]}, std {std[c]}), "
                f"found values in [{found.min().item():.5f}, {found.max().item():.5f}]"
            )
