"""pytest-zoo: conformance testing for the torchvision model zoo.

The public API is importable from here, but lazily: ``import pytest_zoo`` (which pytest does for
every run, through the plugin entry point) costs nothing until a name that needs torch is used.
Each loader below imports one module (by an import statement, so moving a module is an import
error, not a silent miss) and declares the names it provides.

The packages: ``zoo`` (the family table, tasks, selection), ``models`` (building, heads, freezing,
the reference, the cache), ``conformance`` (the checks), ``weights`` (weights metadata),
``snapshot`` (upgrade snapshots), ``guards`` (network and state) and ``plugin`` (the pytest glue).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the loader of the module that defines it.
_LOADERS: dict[str, Callable[[], ModuleType]] = {}


def _exports(*names: str) -> Callable[[Callable[[], ModuleType]], Callable[[], ModuleType]]:
    def register(loader: Callable[[], ModuleType]) -> Callable[[], ModuleType]:
        _LOADERS.update(dict.fromkeys(names, loader))
        return loader

    return register


@_exports(
    "HeadAdapter",
    "NoAdapterError",
    "NoHeadError",
    "find_adapter",
    "head_parameter_names",
    "register_adapter",
    "replace_head",
    "unregister_adapter",
)
def _heads() -> ModuleType:
    from .models import heads as module

    return module


@_exports("HeadInferenceError", "HeadInferredWarning", "InferredHead", "infer_head")
def _inference() -> ModuleType:
    from .models import inference as module

    return module


@_exports("FAMILIES", "Family", "InputSpec", "TASKS")
def _families() -> ModuleType:
    from .zoo import families as module

    return module


@_exports("task_io")
def _task_io() -> ModuleType:
    from .conformance import task_io as module

    return module


@_exports("NormPolicy", "ParameterCounts", "count_parameters", "freeze_backbone")
def _freezing() -> ModuleType:
    from .models import freezing as module

    return module


@_exports("build_model")
def _building() -> ModuleType:
    from .models import building as module

    return module


@_exports("ConformanceFailure", "ZooConformance")
def _checks() -> ModuleType:
    from .conformance import checks as module

    return module


@_exports("ModelStrategies")
def _strategies() -> ModuleType:
    from .conformance import strategies as module

    return module


@_exports("Snapshot", "collect_facts", "diff_facts", "load_snapshot")
def _snapshot() -> ModuleType:
    from . import snapshot as module

    return module


@_exports("NetworkAccessError", "NetworkGuard", "network_guard")
def _network() -> ModuleType:
    from .guards import network as module

    return module


@_exports(
    "DECLARED_EXCEPTIONS",
    "MetadataMismatch",
    "WeightsCase",
    "WeightsConformance",
    "build_with_weights",
    "fabricate_checkpoint",
    "load_pretrained_offline",
    "weights_cases",
)
def _weights() -> ModuleType:
    from . import weights as module

    return module


@_exports("ModelCache", "ModelState", "active_cache")
def _cache() -> ModuleType:
    from .models import cache as module

    return module


@_exports("require_values")
def _meta() -> ModuleType:
    from .models import meta as module

    return module


__all__ = ["__version__", *sorted(_LOADERS)]

if TYPE_CHECKING:
    from .conformance.checks import ConformanceFailure, ZooConformance
    from .conformance.strategies import ModelStrategies
    from .conformance.task_io import task_io
    from .guards.network import NetworkAccessError, NetworkGuard, network_guard
    from .models.building import build_model
    from .models.cache import ModelCache, ModelState, active_cache
    from .models.freezing import NormPolicy, ParameterCounts, count_parameters, freeze_backbone
    from .models.heads import (
        HeadAdapter,
        NoAdapterError,
        NoHeadError,
        find_adapter,
        head_parameter_names,
        register_adapter,
        replace_head,
        unregister_adapter,
    )
    from .models.inference import HeadInferenceError, HeadInferredWarning, InferredHead, infer_head
    from .models.meta import require_values
    from .snapshot import Snapshot, collect_facts, diff_facts, load_snapshot
    from .weights import (
        DECLARED_EXCEPTIONS,
        MetadataMismatch,
        WeightsCase,
        WeightsConformance,
        build_with_weights,
        fabricate_checkpoint,
        load_pretrained_offline,
        weights_cases,
    )
    from .zoo.families import FAMILIES, TASKS, Family, InputSpec


def __getattr__(name: str) -> Any:
    loader = _LOADERS.get(name)
    if loader is None:
        raise AttributeError(f"module 'pytest_zoo' has no attribute {name!r}")
    value = getattr(loader(), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
