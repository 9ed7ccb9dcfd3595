"""A factory function as a gate: one ``create_model(name, num_classes)`` hook, judged by every check.

Most projects build, load, freeze and swap the head in one function (PyTorch's "Finetuning
Torchvision Models" tutorial's ``initialize_model``). A class that defines ``create_model`` gets the
three hooks the checks call derived from it, so every check judges the factory's models as they
are: the model as built is the factory's model at the architecture's own class count,
``replace_head(model, n)`` is the factory's model for ``n`` classes (a rebuild, moved to the device
the checks run on), and ``freeze_backbone`` does nothing, because the factory froze. What is
backbone in a rebuild is decided by counterparts (:func:`~pytest_zoo.models.reference.trace_swap`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from ..models import building

if TYPE_CHECKING:
    from .gate import Gate

__all__ = ["FACTORY_HOOKS", "adopt_factory", "native_classes"]

#: The hooks a factory stands in for; a class defines either ``create_model`` or these.
FACTORY_HOOKS = ("build_model", "replace_head", "freeze_backbone")


def native_classes(name: str) -> int:
    """The class count ``name``'s DEFAULT weights were trained for (1000 for ImageNet), else 10."""
    try:
        from torchvision.models import get_model_weights

        categories = get_model_weights(name).DEFAULT.meta.get("categories")
    except (ValueError, KeyError, AttributeError):
        return 10
    return len(categories) if categories else 10


def _factory(gate: Gate) -> Callable[..., nn.Module]:
    assert gate.create_model is not None, "adopt_factory is only called for classes with one"
    return gate.create_model


def _build_model(self: Gate, name: str) -> nn.Module:
    return _factory(self)(name, native_classes(name))


def _replace_head(self: Gate, model: nn.Module, num_classes: int) -> nn.Module:
    where = next(itertools.chain(model.parameters(), model.buffers()), None)
    structural = where is not None and where.device.type == "meta"
    with building.structural_init() if structural else contextlib.nullcontext():
        rebuilt = _factory(self)(self.model_name, num_classes)
    return rebuilt.to(where.device) if where is not None and not structural else rebuilt


def _freeze_backbone(self: Gate, model: nn.Module) -> None:
    """The factory froze what it meant to freeze."""


def adopt_factory(cls: type) -> None:
    """Give ``cls`` (which defines ``create_model``) the three hooks derived from its factory."""
    own = [hook for hook in FACTORY_HOOKS if hook in vars(cls)]
    if own:
        raise TypeError(
            f"{cls.__qualname__} defines create_model and {', '.join(own)}: a gate is either one factory "
            "(create_model(name, num_classes) returns the ready model) or the three hooks build_model, "
            "replace_head and freeze_backbone; remove one of the two"
        )
    cls.build_model = _build_model  # type: ignore[attr-defined]
    cls.replace_head = _replace_head  # type: ignore[attr-defined]
    cls.freeze_backbone = _freeze_backbone  # type: ignore[attr-defined]
