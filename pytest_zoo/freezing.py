"""Freezing a backbone so that only the head trains, and counting what that left trainable.

``requires_grad=False`` does not stop BatchNorm from updating its running statistics in train
mode (pytorch/pytorch#86590), so :func:`freeze_backbone` asks what to do with them instead of
leaving the trap armed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from .heads import get_adapter, head_parameter_names

__all__ = ["NormStats", "ParameterCounts", "count_parameters", "freeze_backbone"]

#: ``"update"``: backbone normalisation layers keep updating running statistics in train mode
#: (PyTorch's default). ``"freeze"``: they always normalise with their stored statistics.
NormStats = Literal["update", "freeze"]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class ParameterCounts:
    """Element counts (not tensor counts) of trainable and frozen parameters."""

    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable / {self.frozen:,} frozen / {self.total:,} total"


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count parameter elements by ``requires_grad``; shared parameters are counted once."""
    trainable = frozen = 0
    for parameter in model.parameters():
        if parameter.requires_grad:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    return ParameterCounts(trainable=trainable, frozen=frozen)


def _keep_in_eval(module: nn.Module, args: object) -> None:
    module.training = False


def freeze_backbone(model: nn.Module, *, norm_stats: NormStats = "update") -> ParameterCounts:
    """Freeze every parameter except the head's (exactly the layers :func:`replace_head` swaps).

    With ``norm_stats="freeze"``, the backbone's normalisation layers run in eval mode even when the
    model is in train mode (a forward pre-hook, so ``model.train()`` cannot undo it), which keeps
    their running statistics fixed. The adapter is resolved before anything changes, so an unknown
    model raises with the model untouched rather than half frozen.
    """
    if norm_stats not in ("update", "freeze"):
        raise ValueError(f"norm_stats must be 'update' or 'freeze', got {norm_stats!r}")
    adapter = get_adapter(model)
    head = set(head_parameter_names(model))
    head_paths = adapter.present_heads(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in head)
    if norm_stats == "freeze":
        for name, module in model.named_modules():
            in_head = any(name == path or name.startswith(path + ".") for path in head_paths)
            if isinstance(module, _NORM_TYPES) and not in_head and not getattr(module, "_zoo_frozen", False):
                module.register_forward_pre_hook(_keep_in_eval)
                module._zoo_frozen = True  # type: ignore[assignment]
    return count_parameters(model)
