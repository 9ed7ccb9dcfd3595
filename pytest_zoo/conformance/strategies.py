"""Hypothesis strategies for the values a conformance check varies: classes, batches, input sizes.

The strategies know each family's legal geometry (from :mod:`pytest_zoo.zoo.families`) and the one
batch-size trap of train mode: BatchNorm cannot normalise a single value per channel, so a model
with BatchNorm trains on batches of at least two. The strategy encodes that rule; no test has to
skip a drawn example.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hypothesis import strategies as st
from torch import nn

from ..zoo.families import InputSpec, find_family

__all__ = [
    "MAX_BATCH",
    "MAX_CLASSES",
    "ModelStrategies",
    "batch_sizes",
    "fitted_spec",
    "for_model",
    "input_shapes",
    "input_sizes",
    "input_spec",
    "min_train_batch",
    "num_classes",
]

MAX_CLASSES = 10_000
MAX_BATCH = 4

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def num_classes(min_value: int = 1, max_value: int = MAX_CLASSES) -> st.SearchStrategy[int]:
    """Class counts, from a single logit to a large vocabulary; Hypothesis shrinks towards 1."""
    return st.integers(min_value, max_value)


def min_train_batch(model: nn.Module) -> int:
    """The smallest batch ``model`` can run in train mode: 2 if it has BatchNorm, else 1."""
    return 2 if any(isinstance(m, _BATCH_NORMS) for m in model.modules()) else 1


def batch_sizes(
    model: nn.Module | None = None, *, train: bool = False, max_value: int = MAX_BATCH
) -> st.SearchStrategy[int]:
    """Batch sizes legal for ``model``: from 1 in eval mode, from :func:`min_train_batch` in train mode."""
    low = min_train_batch(model) if (train and model is not None) else 1
    return st.integers(low, max(low, max_value))


def input_spec(name: str, model: nn.Module | None = None) -> InputSpec:
    """The legal input geometry of builder ``name``; unknown builders get the permissive default.

    Given the ``model`` under test, a size fixed at build time is the one that model was built
    with (a ``vit_b_16(weights=None)`` takes 224, whatever size the kit would build it at).
    """
    family = find_family(name)
    spec = family.inputs if family is not None else InputSpec()
    return spec if model is None else fitted_spec(spec, model)


def fitted_spec(spec: InputSpec, model: nn.Module) -> InputSpec:
    """``spec`` with the size fixed at build time that ``model`` records under ``spec.size_kwarg``.

    The record is looked for in every submodule, so a model the hooks returned that wraps the
    built one (``nn.Sequential(body, head)`` around a ViT) keeps the size that ViT was built at.
    """
    if spec.size_kwarg is None:
        return spec
    for module in model.modules():
        recorded = getattr(module, spec.size_kwarg, None)
        side = recorded[0] if isinstance(recorded, tuple) and recorded else recorded
        if isinstance(side, int) and not isinstance(side, bool):
            return dataclasses.replace(spec, fixed=side) if side != spec.fixed else spec
    return spec


def input_sizes(spec: InputSpec | str, *, train: bool = False) -> st.SearchStrategy[tuple[int, int]]:
    """Legal ``(height, width)`` pairs; non-square unless the family fixes its size at build time."""
    if isinstance(spec, str):
        spec = input_spec(spec)
    low, high = spec.sizes(train=train)
    if low == high:
        return st.just((low, low))
    side = st.integers(low // spec.multiple, high // spec.multiple).map(lambda k: k * spec.multiple)
    return st.tuples(side, side)


def input_shapes(
    spec: InputSpec | str,
    *,
    model: nn.Module | None = None,
    train: bool = False,
    channels: int = 3,
    max_batch: int = MAX_BATCH,
) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """Whole ``(batch, channels, height, width)`` input shapes legal for one model.

    The batch and the spatial size are drawn together because their rules come from different
    places (BatchNorm in ``model``, geometry in ``spec``) and a test wants both right at once.
    """
    batches = batch_sizes(model, train=train, max_value=max_batch)
    return st.tuples(batches, input_sizes(spec, train=train)).map(lambda t: (t[0], channels, *t[1]))


@dataclass(frozen=True)
class ModelStrategies:
    """The strategies above, bound to one model, so a free-form test need not repeat its name.

    This is what the ``zoo_strategies`` fixture gives. ``model`` is used only to find BatchNorm
    (train-mode batches of at least two); without it, train-mode batches start at two to be safe.
    """

    name: str
    spec: InputSpec
    model: nn.Module | None = None

    def num_classes(self, min_value: int = 1, max_value: int = MAX_CLASSES) -> st.SearchStrategy[int]:
        return num_classes(min_value, max_value)

    def batch_sizes(self, *, train: bool = False, max_value: int = MAX_BATCH) -> st.SearchStrategy[int]:
        if train and self.model is None:
            return st.integers(2, max(2, max_value))
        return batch_sizes(self.model, train=train, max_value=max_value)

    def input_sizes(self, *, train: bool = False) -> st.SearchStrategy[tuple[int, int]]:
        return input_sizes(self.spec, train=train)

    def input_shapes(
        self, *, train: bool = False, channels: int = 3, max_batch: int = MAX_BATCH
    ) -> st.SearchStrategy[tuple[int, int, int, int]]:
        batches = self.batch_sizes(train=train, max_value=max_batch)
        return st.tuples(batches, self.input_sizes(train=train)).map(lambda t: (t[0], channels, *t[1]))


def for_model(name: str, model: nn.Module | None = None, spec: InputSpec | None = None) -> ModelStrategies:
    """Strategies bound to builder ``name`` (its family's geometry unless ``spec`` is given)."""
    return ModelStrategies(name, spec if spec is not None else input_spec(name), model)
