"""Weights metadata conformance: every weights enum of the selected models, checked offline.

Users pick preprocessing from ``weights.transforms()``, report ``num_params``/``_ops`` and label
outputs with ``meta["categories"]``; each of those is checked here against an oracle that does not
come from the metadata itself:

* the model the builder makes *with those weights* is obtained by calling the real builder with
  ``weights=W`` while the checkpoint read is short-circuited (:func:`build_with_weights`). The
  builder's own weight-dependent rules (``num_classes`` from the categories, GoogLeNet dropping its
  aux heads, ViT taking ``image_size`` from ``min_size``, the quantized ``backend``) therefore apply
  without being copied here, and the build is structural (meta device) so it costs nothing;
* GFLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors, at the input shape
  the weights' own transforms produce;
* the real loading path is exercised with a checkpoint fabricated from the model's own load-time
  ``state_dict`` and written where ``torch.hub`` looks for it, inside a network guard.

Known, documented deviations in torchvision's metadata live in :data:`DECLARED_EXCEPTIONS` (one
place); a check that hits one reports it as an expected failure, and fails if it has been fixed.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard
from unittest import mock

import torch
from torch import nn

from ..models.building import poisoned_init, structural_init
from ..models.cache import active_cache
from ..models.reference import PROBE, probe, state_shapes
from ..zoo.families import task_of

if TYPE_CHECKING:
    from hypothesis import settings

__all__ = [
    "DECLARED_EXCEPTIONS",
    "FILE_SIZE_TOLERANCE",
    "OPS_TOLERANCE",
    "PERMITTED_FIELDS",
    "PLACEHOLDER_CATEGORIES",
    "TASK_FIELDS",
    "DeclaredException",
    "MetadataMismatch",
    "NotApplicable",
    "WeightsCase",
    "WeightsConformance",
    "WithWeights",
    "build_with_weights",
    "built",
    "check_categories",
    "check_file_size",
    "check_loading",
    "check_metrics",
    "check_min_size",
    "check_num_params",
    "check_ops",
    "check_recipe",
    "check_schema",
    "check_transformed",
    "checkpoint_path",
    "count_gflops",
    "declared_exception",
    "fabricate_checkpoint",
    "float_case",
    "load_pretrained_offline",
    "output_count",
    "per_class_parameters",
    "reference_inputs",
    "resolve_weights_id",
    "weights_cases",
    "weights_ids",
]

#: The meta keys torchvision's own schema test permits.
PERMITTED_FIELDS = frozenset(
    {
        "backend",
        "categories",
        "keypoint_names",
        "license",
        "_metrics",
        "min_size",
        "min_temporal_size",
        "num_params",
        "recipe",
        "unquantized",
        "_docs",
        "_ops",
        "_file_size",
    }
)

_COMMON_FIELDS = frozenset({"_metrics", "min_size", "num_params", "recipe", "_docs", "_file_size", "_ops"})
_IMAGENET = {"ImageNet-1K": ("acc@1", "acc@5")}

#: Per task: the meta keys that must be present, and the ``_metrics`` dataset -> metric keys.
TASK_FIELDS: Mapping[str, tuple[frozenset[str], Mapping[str, tuple[str, ...]]]] = {
    "classification": (_COMMON_FIELDS | {"categories"}, _IMAGENET),
    "quantized": (_COMMON_FIELDS | {"categories", "backend", "unquantized"}, _IMAGENET),
    "detection": (_COMMON_FIELDS | {"categories"}, {"COCO-val2017": ("box_map",)}),
    "segmentation": (
        _COMMON_FIELDS | {"categories"},
        {"COCO-val2017-VOC-labels": ("miou", "pixel_acc")},
    ),
    "video": (_COMMON_FIELDS | {"categories"}, {"Kinetics-400": ("acc@1", "acc@5")}),
    "optical_flow": (_COMMON_FIELDS, {}),
}

#: Names that mark an unused class index rather than name a class: COCO's 91 detection ids leave
#: 11 unassigned, and torchvision lists each as "N/A" so indices stay aligned. They may repeat.
PLACEHOLDER_CATEGORIES = frozenset({"N/A"})

#: ``_ops`` is published rounded to 3 decimals; beyond rounding we accept this relative error.
OPS_TOLERANCE = 0.001
#: ``_file_size`` (MiB) against the bytes of the state_dict the builder loads: pickle overhead only.
FILE_SIZE_TOLERANCE = 0.03
#: torchvision measured ``_ops`` on a square image of this side, passed through the transforms.
OPS_REFERENCE_SIDE = 512
#: ...and, for video models, on a clip of this many frames.
OPS_REFERENCE_FRAMES = 16


class MetadataMismatch(AssertionError):
    """A weights enum's metadata disagrees with the model; the message says what and where."""


@dataclass(frozen=True)
class DeclaredException:
    """A known deviation of one weights enum's metadata, accepted here rather than skipped silently."""

    weights: str
    fields: tuple[str, ...]
    reason: str


#: The one place where known metadata deviations are declared. A check that trips over one of these
#: is reported as an expected failure citing the reason; when torchvision fixes the metadata, the
#: check passes, and the declaration is reported as stale so it can be deleted.
DECLARED_EXCEPTIONS: tuple[DeclaredException, ...] = (
    DeclaredException(
        "Wide_ResNet50_2_Weights.IMAGENET1K_V1",
        ("file_size",),
        "the checkpoint stores float16 tensors (half the float32 state_dict); they load into float32",
    ),
    DeclaredException(
        "Wide_ResNet101_2_Weights.IMAGENET1K_V1",
        ("file_size",),
        "the checkpoint stores float16 tensors (half the float32 state_dict); they load into float32",
    ),
    DeclaredException(
        "Inception_V3_QuantizedWeights.IMAGENET1K_FBGEMM_V1",
        ("num_params",),
        "num_params is copied from Inception_V3_Weights.IMAGENET1K_V1, whose builder keeps the AuxLogits "
        "head (3,326,696 parameters); quantized_inception_v3 defaults to aux_logits=False and drops it",
    ),
    DeclaredException(
        "VGG16_Weights.IMAGENET1K_FEATURES",
        ("categories", "metrics"),
        "feature-extraction weights: only `features` is trained, the classifier is NaN, so torchvision "
        "publishes categories=None and NaN accuracies",
    ),
)


def declared_exception(weights: Any, check: str) -> DeclaredException | None:
    """The declared exception covering ``check`` for ``weights``, if any."""
    key = f"{type(weights).__name__}.{weights.name}"
    for exception in DECLARED_EXCEPTIONS:
        if exception.weights == key and check in exception.fields:
            return exception
    return None


# -- enumeration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsCase:
    """One (builder, weights enum member) pair: the unit every metadata check runs on."""

    model: str
    weights: Any

    @property
    def id(self) -> str:
        """The test id, e.g. ``resnet50-IMAGENET1K_V2``: builder names never contain ``-``."""
        return f"{self.model}-{self.weights.name}"

    @property
    def label(self) -> str:
        return f"{self.model} with {type(self.weights).__name__}.{self.weights.name}"

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.weights.meta
        return meta

    @property
    def builder(self) -> Callable[..., nn.Module]:
        from torchvision.models import get_model_builder

        builder: Callable[..., nn.Module] = get_model_builder(self.model)
        return builder

    @property
    def task(self) -> str:
        return task_of(self.model)

    def mismatch(self, field: str, expected: object, found: object, hint: str = "") -> MetadataMismatch:
        """The error for one wrong field: model, weights, field, expected and found, and a way out."""
        text = f"{self.label}: meta[{field!r}] expected {expected}, found {found}"
        return MetadataMismatch(f"{text}. {hint}" if hint else text)


def weights_cases(models: Iterable[str]) -> list[WeightsCase]:
    """Every weights enum member of every builder in ``models``, in a stable order.

    A name torchvision has no weights enum for (a user's own model in a conformance class's
    ``models``) contributes no case rather than an error: there is no metadata to check.
    """
    from torchvision.models import get_model_weights

    cases: list[WeightsCase] = []
    for model in models:
        try:
            enum = get_model_weights(model)
        except (ValueError, KeyError):
            continue
        cases.extend(WeightsCase(model, member) for member in enum)
    return cases


def weights_ids(models: Iterable[str]) -> list[str]:
    return [case.id for case in weights_cases(models)]


def resolve_weights_id(weights_id: str) -> WeightsCase:
    """``"resnet50-IMAGENET1K_V2"`` -> its :class:`WeightsCase`; a bad id says what is valid."""
    from torchvision.models import get_model_weights, list_models

    model, sep, name = weights_id.partition("-")
    if not sep or model not in list_models():
        raise LookupError(
            f"{weights_id!r} is not a zoo weights id: expected '<builder>-<WEIGHTS_NAME>', "
            "e.g. 'resnet50-IMAGENET1K_V2', with a builder from torchvision.models.list_models()"
        )
    enum = get_model_weights(model)
    try:
        return WeightsCase(model, enum[name])
    except KeyError:
        valid = ", ".join(member.name for member in enum)
        raise LookupError(f"{model} has no weights {name!r}; its weights are: {valid}") from None


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


_PROBES: dict[str, dict[int, dict[str, tuple[int, ...]]]] = {}


def _probe_shapes(case: WeightsCase) -> dict[int, dict[str, tuple[int, ...]]]:
    """State shapes of ``builder(weights=None, num_classes=n)`` at the two probe class counts."""
    from ..models.building import builder_kwargs

    if case.model not in _PROBES:

        def build(n: int) -> nn.Module:
            kwargs = builder_kwargs(case.model, weights=None, num_classes=n)
            with structural_init():
                model: nn.Module = case.builder(**kwargs)
            return model

        low, high = probe(build, state_shapes, at=PROBE)
        _PROBES[case.model] = {PROBE: low, PROBE + 1: high}
    return _PROBES[case.model]


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


# -- GFLOPs ---------------------------------------------------------------------------------------


def reference_inputs(case: WeightsCase) -> tuple[torch.Tensor, ...]:
    """The model inputs torchvision measured ``_ops`` with: a reference image through the transforms.

    The shapes come from running the weights' own transforms on a small real image of the reference
    side, so crop sizes, segmentation resizes and video layouts are never restated here.
    """
    side, task = OPS_REFERENCE_SIDE, case.task
    transforms = case.weights.transforms()
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
    with counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2 / 1e9


# -- real loading, offline ------------------------------------------------------------------------


def checkpoint_path(weights: Any, torch_home: Path) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` looks for ``weights`` before downloading."""
    return torch_home / "hub" / "checkpoints" / os.path.basename(str(weights.url))


def fabricate_checkpoint(case: WeightsCase, torch_home: Path, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Write a checkpoint for ``case`` under the file name torch.hub expects; return its contents.

    The contents are the load-time ``state_dict`` of the model the builder makes with those weights:
    exactly the keys, shapes and dtypes the builder will load, quantized ones included, with random
    floating values (drawn once, not initialised first and then redrawn: the builder's own
    initialisation is poisoned away, see :func:`~pytest_zoo.building.poisoned_init`). A quantized
    model is built for real, because quantizing needs the float weights it converts. The file is
    written atomically: a failed save leaves no half-written checkpoint that a later run would try
    to load.
    """
    quantized = case.task == "quantized"
    with contextlib.nullcontext() if quantized else poisoned_init():
        built = build_with_weights(case, structural=False, **kwargs)
    state = built.checkpoint
    if not quantized:
        with torch.no_grad():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.uniform_(-1.0, 1.0)
    path = checkpoint_path(case.weights, torch_home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".pth")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return state


def load_pretrained_offline(case: WeightsCase, torch_home: Path, **kwargs: Any) -> nn.Module:
    """Call the builder with ``weights=W`` for real, under the network guard, in ``torch_home``.

    The checkpoint must already be in ``torch_home`` (see :func:`fabricate_checkpoint`); any attempt
    to download raises :class:`~pytest_zoo.netguard.NetworkAccessError` naming the URL.
    """
    return _load_offline(case, torch_home, **kwargs)[0]


def _load_offline(case: WeightsCase, torch_home: Path, **kwargs: Any) -> tuple[nn.Module, Mapping[str, Any]]:
    """:func:`load_pretrained_offline`, and the checkpoint as the builder read it from the file.

    The builder's random initialisation is poisoned (NaN, at memset speed) rather than drawn: the
    load overwrites it, and whatever it would not overwrite stays NaN instead of passing for loaded.
    The checkpoint is memory-mapped, so the model and the file's pages are the only model-sized
    memory: no read copy of the file sits beside them.
    """
    from ..guards.network import network_guard

    expected = checkpoint_path(case.weights, torch_home)
    read: list[tuple[str, object]] = []
    original_load = torch.load

    def load(f: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(f, (str, os.PathLike)):
            kw.setdefault("mmap", True)
        loaded = original_load(f, *args, **kw)
        read.append((os.fspath(f) if isinstance(f, (str, os.PathLike)) else repr(f), loaded))
        return loaded

    with (
        network_guard(torch_home=torch_home) as guard,
        mock.patch.object(torch, "load", load),
        poisoned_init(),
    ):
        model = case.builder(weights=case.weights, **kwargs)
    if guard.attempts:
        raise MetadataMismatch(f"{case.label}: loading tried the network: {guard.attempts}")
    checkpoint = next(
        (value for path, value in read if os.path.exists(path) and os.path.samefile(path, expected)), None
    )
    if not isinstance(checkpoint, Mapping):
        raise MetadataMismatch(
            f"{case.label}: the builder did not read the checkpoint at {expected} (files read: "
            f"{[path for path, _ in read]}). Does it load weights from somewhere other than torch.hub's "
            "cache?"
        )
    return model, checkpoint


def is_finite_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the checks -----------------------------------------------------------------------------------


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


_BUILT: dict[str, WithWeights] = {}


def built(case: WeightsCase) -> WithWeights:
    """The structural model the builder makes with ``case``'s (float) weights, built once per process."""
    if case.id not in _BUILT:
        source, kwargs = float_case(case)
        _BUILT[case.id] = build_with_weights(source, **kwargs)
    return _BUILT[case.id]


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
    tensors = built(case).checkpoint.values()
    size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) / 2**20
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
        with torch.no_grad():
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


# -- real loading, checked ------------------------------------------------------------------------


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal, where NaN equals NaN (a checkpoint may hold NaN layers on purpose)."""
    if a.is_floating_point() and b.is_floating_point() and a.shape == b.shape:
        return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))
    return torch.equal(a, b)


def check_loading(case: WeightsCase, torch_home: Path, num_classes: int) -> str:
    """Load pretrained for real, offline, then swap the head and freeze the backbone.

    A checkpoint is fabricated into ``torch_home`` under the file name torch.hub expects; the
    builder is called with ``weights=W`` inside the network guard; every tensor of the loaded model
    must equal the fabricated one (so the file really was read). Then ``replace_head`` and
    ``freeze_backbone`` must leave exactly the new head trainable, the total parameter count
    must be ``num_params`` with the old head's share swapped for the new one's, and no parameter
    or buffer may hold NaN or inf. Quantized weights
    are loaded with ``quantize=True`` (their only valid use); a quantized model has no trainable
    parameters, so for them the check ends with the load and an eval forward at the crop size.
    """
    from ..models import freezing, heads

    kwargs: dict[str, Any] = {"quantize": True} if case.task == "quantized" else {}
    # The session's cached build of this model is a third model-sized allocation beside the loaded
    # model and the checkpoint's pages; the plugin runs a model's weights checks after its
    # ZooConformance checks, so nothing is rebuilt for dropping it.
    active_cache().release()
    # Only the file is kept, not the fabricated tensors: the comparison is with what was read.
    fabricate_checkpoint(case, torch_home, **kwargs)
    model, fabricated = _load_offline(case, torch_home, **kwargs)
    loaded = model.state_dict()
    differing = [
        key
        for key, value in loaded.items()
        if isinstance(value, torch.Tensor)
        and not value.is_quantized
        and key in fabricated
        and not _identical(value, fabricated[key])
    ]
    # Quantized builders may convert after loading (MobileNetV3 loads QAT weights, then converts),
    # so for them only the tensors that survived unchanged in name are compared.
    unexpected = sorted(set(loaded) - set(fabricated)) if case.task != "quantized" else []
    if differing or unexpected:
        raise MetadataMismatch(
            f"{case.label}: the loaded model does not hold the fabricated checkpoint "
            f"{checkpoint_path(case.weights, torch_home)}: differing {differing[:5]}, "
            f"not in the checkpoint {unexpected[:5]}"
        )
    if case.task == "quantized":
        with torch.no_grad():
            out = model.eval()(torch.rand(reference_inputs(case)[0].shape))
        if tuple(out.shape) != (1, len(case.meta["categories"])):
            raise MetadataMismatch(f"{case.label}: quantized output shape {tuple(out.shape)}")
        return f"loaded {len(loaded)} tensors (quantized)"
    adapter = heads.find_adapter(model)
    if adapter is not None and adapter.no_head:
        return f"loaded {len(loaded)} tensors; the model has no class head to swap"
    old_head = sum(p.numel() for _, m in heads.head_modules(model) for p in m.parameters())
    heads.replace_head(model, num_classes)
    counts = freezing.freeze_backbone(model)
    new_head = sum(p.numel() for _, m in heads.head_modules(model) for p in m.parameters())
    expected_total = case.meta["num_params"] - old_head + new_head
    if counts.trainable != new_head or counts.total != expected_total:
        raise MetadataMismatch(
            f"{case.label}, num_classes={num_classes}: after replace_head + freeze_backbone expected "
            f"{new_head:,} trainable / {expected_total:,} total, found {counts}"
        )
    # Partial weights can leave NaN layers that a swap of the last one does not replace (VGG16's
    # IMAGENET1K_FEATURES ships a NaN classifier): the fine-tuned model must hold finite values.
    from ..conformance.training import nonfinite_state

    finite = nonfinite_state(model)
    if not finite.ok:
        raise MetadataMismatch(f"{case.label}, after replace_head: " + "; ".join(finite.problems))
    return f"loaded {len(loaded)} tensors; {counts}"


# -- the conformance class ------------------------------------------------------------------------


class WeightsConformance:
    """Metadata checks for every weights enum of the selected models, one test per check.

    pytest-zoo parametrizes ``zoo_weights`` with ids like ``resnet50-IMAGENET1K_V2``, so a single
    check of a single enum is selectable: ``-k 'test_num_params and resnet50-IMAGENET1K_V2'``.
    A check that meets a :data:`DECLARED_EXCEPTIONS` entry is reported as xfailed with its reason.
    """

    #: fnmatch patterns of the builder names whose weights this class checks.
    models: ClassVar[Iterable[str]] = ("*",)

    def _run(self, zoo_weights: str, check: str, function: Callable[[WeightsCase], object]) -> None:
        import pytest

        case = resolve_weights_id(zoo_weights)
        exception = declared_exception(case.weights, check)
        try:
            function(case)
        except NotApplicable as exc:
            pytest.skip(str(exc))
        except MetadataMismatch as exc:
            if exception is None:
                raise
            pytest.xfail(f"declared exception ({exception.reason}): {exc}")
        if exception is not None:
            pytest.fail(
                f"{case.label}: the declared exception for {check!r} no longer applies (the check "
                f"passes); delete it from pytest_zoo.weights.DECLARED_EXCEPTIONS. It said: {exception.reason}"
            )

    def test_schema(self, zoo_weights: str) -> None:
        """Only torchvision's permitted meta keys; the task's required keys and metrics present."""
        self._run(zoo_weights, "schema", check_schema)

    def test_categories(self, zoo_weights: str) -> None:
        """One unique name per output of the model the builder makes with these weights."""
        self._run(zoo_weights, "categories", check_categories)

    def test_num_params(self, zoo_weights: str) -> None:
        """``num_params`` is the parameter count of ``builder(weights=W)``, built on the meta device."""
        self._run(zoo_weights, "num_params", check_num_params)

    def test_ops(self, zoo_weights: str) -> None:
        """``_ops`` is FlopCounterMode's GFLOPs at the transforms' output size."""
        self._run(zoo_weights, "ops", check_ops)

    def test_file_size(self, zoo_weights: str) -> None:
        """``_file_size`` fits the checkpoint the builder loads."""
        self._run(zoo_weights, "file_size", check_file_size)

    def test_metrics(self, zoo_weights: str) -> None:
        """``_metrics`` holds finite numbers, accuracies as percentages."""
        self._run(zoo_weights, "metrics", check_metrics)

    def test_recipe(self, zoo_weights: str) -> None:
        """``recipe`` is an http(s) URL."""
        self._run(zoo_weights, "recipe", check_recipe)

    def test_min_size(self, zoo_weights: str) -> None:
        """A forward pass at ``min_size`` works."""
        self._run(zoo_weights, "min_size", check_min_size)

    def test_transforms(self, zoo_weights: str, zoo_hypothesis_settings: settings) -> None:
        """``transforms()`` on drawn PIL and uint8 images of any size gives the documented tensor."""
        from hypothesis import given
        from hypothesis import strategies as st

        case = resolve_weights_id(zoo_weights)
        video = case.task == "video"
        colors = st.tuples(*[st.integers(0, 255)] * 3)
        sides = st.integers(8, 96)  # aspect ratios up to 12:1; 1 px sides would upscale 500-fold

        @zoo_hypothesis_settings
        @given(color=colors, height=sides, width=sides, pil=st.booleans() if not video else st.just(False))
        def check(color: tuple[int, int, int], height: int, width: int, pil: bool) -> None:
            frames = 2 if video else 0
            pixels = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width)
            image: Any = pixels.contiguous()
            if video:
                image = image.unsqueeze(0).expand(frames, 3, height, width).contiguous()
            elif pil:
                from PIL import Image

                image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
            check_transformed(case, image, color, height, width, frames)

        self._run(zoo_weights, "transforms", lambda _: check())

    def test_load_pretrained(self, zoo_weights: str, tmp_path: Path) -> None:
        """builder(weights=W) loads a fabricated checkpoint offline; then head swap and freeze work."""
        self._run(zoo_weights, "load_pretrained", lambda case: check_loading(case, tmp_path, 7))
