"""Weights cases: the meta fields torchvision permits, declared deviations, and the enumeration of
every weights enum of the selected models (:class:`WeightsCase`, one per enum member).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..zoo.families import task_of

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
