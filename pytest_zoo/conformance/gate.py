"""What a check needs from a gate: its hooks, its declarations, and the model it is checking.

The check bodies take a gate; :class:`~pytest_zoo.conformance.checks.ZooConformance` is one, and
it imports the bodies. Typed against this Protocol, a body depends on what it uses rather than on
the class that calls it, and this is the one place that says what a gate provides: a new hook
(``create_model``) or declaration (``pretrained``) is added here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

from ..models.freezing import NormPolicy
from ..zoo.families import InputSpec

__all__ = ["Gate"]


class Gate(Protocol):
    #: The zoo name of the model being checked, set before any hook runs.
    model_name: str
    #: Whether the last ``replace_head`` swapped in place (for the reproduce lines).
    _swapped_in_place: bool

    @property
    def builder_oracle(self) -> bool: ...
    @property
    def norm_policy(self) -> NormPolicy: ...
    @property
    def backbone_module(self) -> str | None:
        """The path of the model's own backbone module, where it has one (``None``: no such module)."""
        ...

    @property
    def head_bias(self) -> bool | None:
        """Whether the head layer has a bias, where the class declares it (``None``: as the builder's)."""
        ...

    @property
    def pretrained(self) -> bool: ...
    @property
    def reinitialised(self) -> Sequence[str]: ...
    @property
    def create_model(self) -> Callable[..., nn.Module] | None:
        """The factory hook, ``create_model(name, num_classes)``, where the class defines one."""
        ...

    def build_model(self, name: str) -> nn.Module: ...
    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module: ...
    def freeze_backbone(self, model: nn.Module) -> None: ...
    def must_train(self, name: str, model: nn.Module, parameter: str) -> bool: ...

    def _model(self, name: str, device: torch.device) -> nn.Module:
        """The session's build of ``name`` on ``device``, in its as-built state."""
        ...

    def _spec(self, name: str, model: nn.Module) -> InputSpec: ...
