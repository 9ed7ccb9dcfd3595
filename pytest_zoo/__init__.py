"""pytest-zoo: conformance testing for the torchvision model zoo.

The public API is importable from here, but lazily: ``import pytest_zoo`` (which pytest does for
every run, through the plugin entry point) costs nothing until a name that needs torch is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "replace_head": "heads",
    "register_adapter": "heads",
    "unregister_adapter": "heads",
    "find_adapter": "heads",
    "head_parameter_names": "heads",
    "HeadAdapter": "heads",
    "NoAdapterError": "heads",
    "NoHeadError": "heads",
    "infer_head": "inference",
    "InferredHead": "inference",
    "HeadInferredWarning": "inference",
    "HeadInferenceError": "inference",
    "TASKS": "families",
    "task_io": "tasks",
    "freeze_backbone": "freezing",
    "count_parameters": "freezing",
    "ParameterCounts": "freezing",
    "NormPolicy": "freezing",
    "build_model": "building",
    "ZooConformance": "checks",
    "ConformanceFailure": "checks",
    "ModelStrategies": "strategies",
    "Family": "families",
    "InputSpec": "families",
    "FAMILIES": "families",
    "collect_facts": "snapshot",
    "diff_facts": "snapshot",
    "load_snapshot": "snapshot",
    "Snapshot": "snapshot",
    "network_guard": "netguard",
    "NetworkGuard": "netguard",
    "NetworkAccessError": "netguard",
    "WeightsConformance": "weights",
    "WeightsCase": "weights",
    "MetadataMismatch": "weights",
    "DECLARED_EXCEPTIONS": "weights",
    "weights_cases": "weights",
    "build_with_weights": "weights",
    "fabricate_checkpoint": "weights",
    "load_pretrained_offline": "weights",
    "ModelCache": "cache",
    "ModelState": "cache",
    "active_cache": "cache",
    "require_values": "scheduling",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from .building import build_model
    from .cache import ModelCache, ModelState, active_cache
    from .checks import ConformanceFailure, ZooConformance
    from .families import FAMILIES, TASKS, Family, InputSpec
    from .freezing import NormPolicy, ParameterCounts, count_parameters, freeze_backbone
    from .heads import (
        HeadAdapter,
        NoAdapterError,
        NoHeadError,
        find_adapter,
        head_parameter_names,
        register_adapter,
        replace_head,
        unregister_adapter,
    )
    from .inference import HeadInferenceError, HeadInferredWarning, InferredHead, infer_head
    from .netguard import NetworkAccessError, NetworkGuard, network_guard
    from .scheduling import require_values
    from .snapshot import Snapshot, collect_facts, diff_facts, load_snapshot
    from .strategies import ModelStrategies
    from .tasks import task_io
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
