"""The fallback for a model class that no adapter knows: infer where its head is, and verify it.

A torchvision upgrade can add an architecture before the family table has a row for it, and users
check classes of their own. Rather than stop at :class:`~pytest_zoo.models.heads.NoAdapterError`, the
kit infers the head the way a person reading the model would: the *last* replaceable layer
(Linear, or Conv1d/2d/3d as in SqueezeNet) is the main head, its output size is the class count,
and any other Linear layer with that output size that closes its own branch (GoogLeNet's
``aux1.fc2``) is an auxiliary head.

An inference is a guess, so it is never silent and, where possible, never trusted: when a builder
taking ``num_classes`` exists, the inferred head must be exactly the set of parameters whose shape
changes between ``builder(num_classes=n)`` and ``builder(num_classes=n + 1)``. A mismatch is an
error that names what was inferred, what the builder says, and the ``register_adapter`` call that
fixes it. Every use of an inferred adapter is reported as a :class:`HeadInferredWarning`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .heads import HeadAdapter, NoAdapterError, find_adapter, layer_outputs, register_adapter
from .reference import class_dependent_parameters

__all__ = [
    "HeadInferenceError",
    "HeadInferredWarning",
    "InferredHead",
    "adopt",
    "infer_head",
    "is_inferred",
    "verify_head",
]

_CANDIDATES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SOURCE_PREFIX = "inferred"


class HeadInferenceError(NoAdapterError):
    """The head of an unknown model class could not be inferred, or the inference was refuted."""


class HeadInferredWarning(UserWarning):
    """A check used a head that pytest-zoo inferred rather than one an adapter declared.

    Turn it into an error (``-W error::pytest_zoo.HeadInferredWarning``) to require an adapter
    for every class a suite checks.
    """


@dataclass(frozen=True)
class InferredHead:
    """What the fallback concluded about one model class, and on what evidence."""

    model_class: str
    heads: tuple[str, ...]
    aux_heads: tuple[str, ...]
    num_classes_attrs: tuple[str, ...]
    classes: int
    #: The builder the inference was checked against, or ``None`` when there was none.
    verified_against: str | None = None

    def describe(self) -> str:
        aux = f", aux heads {', '.join(map(repr, self.aux_heads))}" if self.aux_heads else ""
        check = (
            f"verified against {self.verified_against}"
            if self.verified_against
            else "unverified: no builder with num_classes to check it against"
        )
        return (
            f"{_SOURCE_PREFIX} for {self.model_class}: head {', '.join(map(repr, self.heads))} "
            f"({self.classes} outputs, the last Linear/Conv layer){aux}; {check}"
        )


def _class_name(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def infer_head(model: nn.Module) -> InferredHead:
    """Infer the class head of ``model`` from its layers alone (no forward pass, works on meta).

    Raises :class:`HeadInferenceError` when the model has no Linear or Conv layer at all.
    """
    layers = [
        (path, module)
        for path, module in model.named_modules()
        if path and isinstance(module, _CANDIDATES) and not any(module.children())
    ]
    if not layers:
        raise HeadInferenceError(
            f"cannot infer the head of {_class_name(model)}: it has no Linear or Conv layer. Register "
            "it with pytest_zoo.register_adapter(cls, heads=[...], layer_factory=...)."
        )
    head_path, head = layers[-1]
    classes = layer_outputs(head)
    # The last candidate of each top-level branch: an aux classifier closes its own branch.
    last_in_branch: dict[str, str] = {}
    for path, _ in layers:
        last_in_branch[path.split(".")[0]] = path
    aux = tuple(
        path
        for path, module in layers
        if path != head_path
        and isinstance(module, nn.Linear)
        and layer_outputs(module) == classes
        and last_in_branch[path.split(".")[0]] == path
        and path.split(".")[0] != head_path.split(".")[0]
    )
    attrs = tuple(
        f"{path}.num_classes" if path else "num_classes"
        for path, module in model.named_modules()
        if isinstance(getattr(module, "num_classes", None), int)
        and not isinstance(module.num_classes, bool)
        and module.num_classes == classes
    )
    return InferredHead(_class_name(model), (head_path,), aux, attrs, classes)


def verify_head(
    inferred: InferredHead, model: nn.Module, build: Callable[[int], nn.Module], builder: str
) -> InferredHead:
    """Check ``inferred`` against a builder: its parameters must be exactly the class-dependent ones.

    ``build(n)`` returns the builder's model for ``n`` classes (structurally built is enough).
    Returns the inference marked as verified; raises :class:`HeadInferenceError` otherwise.
    """
    truth = class_dependent_parameters(build, at=max(inferred.classes, 2) + 1)
    paths = (*inferred.heads, *inferred.aux_heads)
    claimed = {f"{path}.{name}" for path in paths for name, _ in model.get_submodule(path).named_parameters()}
    if claimed != truth:
        owners = sorted({k.rpartition(".")[0] for k in truth})
        raise HeadInferenceError(
            f"pytest-zoo inferred the head of {inferred.model_class} wrongly: it took "
            f"{', '.join(map(repr, paths))} (the last Linear/Conv layer, {inferred.classes} outputs), but "
            f"{builder} changes exactly these parameters with num_classes: "
            f"{', '.join(sorted(truth)) or 'none'}.\n"
            f"Register the head explicitly, before the checks run:\n"
            f"    pytest_zoo.register_adapter({inferred.model_class.rpartition('.')[2]}, "
            f"heads={owners!r})"
        )
    return InferredHead(
        inferred.model_class,
        inferred.heads,
        inferred.aux_heads,
        inferred.num_classes_attrs,
        inferred.classes,
        verified_against=builder,
    )


def is_inferred(adapter: HeadAdapter | None) -> bool:
    """Whether ``adapter`` was registered by :func:`adopt` rather than declared."""
    return adapter is not None and adapter.source.startswith(_SOURCE_PREFIX)


def adopt(
    model: nn.Module, *, build: Callable[[int], nn.Module] | None = None, builder: str = "the builder"
) -> HeadAdapter:
    """The adapter for ``model``: the declared one, else an inferred (and, given ``build``, verified) one.

    An inferred adapter is registered for the model's class, so every later use of that class is
    consistent with the first; :func:`is_inferred` tells it apart from a declared one. Nothing is
    registered when the inference fails or is refuted.
    """
    adapter = find_adapter(model)
    if adapter is not None:
        return adapter
    inferred = infer_head(model)
    if build is not None:
        inferred = verify_head(inferred, model, build, builder)
    return register_adapter(
        type(model),
        inferred.heads,
        aux_heads=inferred.aux_heads,
        num_classes_attrs=inferred.num_classes_attrs,
        source=inferred.describe(),
    )
