"""The family table, verified against torchvision's own builders for all 80 classification models.

Every build here is structural (parameters on the meta device), so proving the properties for the
whole classification zoo costs seconds, not the minute a real build of all 80 takes.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torchvision.models
from torch import nn
from torchvision.models import list_models

from pytest_zoo import head_parameter_names, replace_head
from pytest_zoo.conformance.task_io import named_outputs
from pytest_zoo.models.building import build_model
from pytest_zoo.models.freezing import freeze_backbone
from pytest_zoo.models.reference import class_dependent_parameters
from pytest_zoo.zoo.families import FAMILIES, find_family

CLASSIFICATION = list_models(module=torchvision.models)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_there_are_80_classification_builders() -> None:
    assert len(CLASSIFICATION) == 80


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_head_matches_builder_and_freeze_counts(name: str) -> None:
    n = 37
    swapped = replace_head(build_model(name, structural=True), n)
    assert _shapes(swapped) == _shapes(build_model(name, num_classes=n, structural=True))

    head = class_dependent_parameters(lambda k: build_model(name, num_classes=k, structural=True))
    assert head and set(head_parameter_names(swapped)) == head
    counts = freeze_backbone(swapped)
    params = dict(swapped.named_parameters())
    assert counts.trainable == sum(params[k].numel() for k in head)
    assert counts.frozen == sum(p.numel() for k, p in params.items() if k not in head)
    assert counts.frozen > counts.trainable


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_declared_minimum_input_is_accepted(name: str) -> None:
    family = find_family(name)
    assert family is not None, f"{name} has no family row"
    model = replace_head(build_model(name, structural=True), 5).eval()
    low, _ = family.inputs.sizes()
    outputs = named_outputs(model(torch.empty(1, 3, low, low, device="meta")))
    assert [tuple(o.shape) for o in outputs.values()] == [(1, 5)]


def test_every_classification_builder_has_exactly_one_family_row() -> None:
    rows = {name: [f.name for f in FAMILIES if f.matches(name)] for name in CLASSIFICATION}
    assert {name: r for name, r in rows.items() if len(r) != 1} == {}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_model_class_is_what_its_builders_build(family: object) -> None:
    module_name, _, class_name = family.model_class.rpartition(".")  # type: ignore[attr-defined]
    cls = getattr(importlib.import_module(module_name), class_name)
    built = [n for n in list_models() if family.matches(n)]  # type: ignore[attr-defined]
    assert built, f"family {family.name} matches no builder"  # type: ignore[attr-defined]
    assert isinstance(build_model(built[0], structural=True), cls)
