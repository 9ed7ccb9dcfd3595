"""Freezing a backbone so that only the head trains, and counting what that left trainable.

``requires_grad=False`` does not stop BatchNorm from updating its running statistics in train
mode (pytorch/pytorch#86590), so :func:`freeze_backbone` asks what to do with them instead of
leaving the trap armed.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .heads import get_adapter, head_parameter_names

__all__ = ["NORM_TYPES", "NormPolicy", "NormStats", "ParameterCounts", "count_parameters", "freeze_backbone"]

#: ``"update"``: backbone normalisation layers keep updating their running statistics in train
#: mode (PyTorch's default). ``"frozen"``: they always normalise with their stored statistics.
NormStats = Literal["update", "frozen"]
#: ``"frozen"``: the backbone's normalisation weights and biases are frozen like the rest of it.
#: ``"trainable"``: they train (a ``train_bn=True`` recipe).
NormAffine = Literal["frozen", "trainable"]

#: The layers a normalisation policy speaks of: the ones with running statistics (BatchNorm*,
#: SyncBatchNorm, InstanceNorm*), which is what ``train_bn``-style recipes mean.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase,)


@dataclass(frozen=True)
class NormPolicy:
    """What a fine-tuning recipe does with the backbone's normalisation layers, on two axes.

    The default is the common recipe: affine parameters frozen with the rest of the backbone,
    running statistics left to update in train mode. Libraries differ on purpose (some keep
    BatchNorm affine parameters trainable, others freeze statistics with ``FrozenBatchNorm2d``);
    a gate declares which one its code implements and the checks verify exactly that.
    """

    affine: NormAffine = "frozen"
    stats: NormStats = "update"

    def __post_init__(self) -> None:
        if self.affine not in ("frozen", "trainable"):
            raise ValueError(f"NormPolicy affine must be 'frozen' or 'trainable', got {self.affine!r}")
        if self.stats not in ("update", "frozen"):
            raise ValueError(f"NormPolicy stats must be 'update' or 'frozen', got {self.stats!r}")


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


def _train_stays_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a normalisation layer whose statistics are frozen: it stays in eval mode."""
    return nn.Module.train(module, False)


def freeze_backbone(
    model: nn.Module,
    *,
    norm_stats: NormStats | Literal["freeze"] = "update",
    norm_affine: NormAffine = "frozen",
) -> ParameterCounts:
    """Freeze every parameter except the head's (exactly the layers :func:`replace_head` swaps).

    ``norm_stats`` and ``norm_affine`` are the two axes of a :class:`NormPolicy`. With
    ``norm_stats="frozen"``, the backbone's normalisation layers stay in eval mode even when the
    model is put in train mode (their own ``train`` keeps them there), which keeps
    their running statistics fixed. With ``norm_affine="trainable"`` their weights and biases keep
    training. Everything is validated and the adapter resolved before anything changes, so bad
    input raises with the model untouched rather than half frozen.
    """
    if norm_stats == "freeze":  # the 0.1.0 spelling
        norm_stats = "frozen"
    policy = NormPolicy(affine=norm_affine, stats=norm_stats)
    adapter = get_adapter(model)
    head = set(head_parameter_names(model))
    head_paths = adapter.present_heads(model)

    def in_head(path: str) -> bool:
        return any(path == head or path.startswith(head + ".") for head in head_paths)

    backbone_norms = [
        module
        for path, module in model.named_modules()
        if isinstance(module, NORM_TYPES) and not in_head(path)
    ]
    norm_affine_names = {id(p) for module in backbone_norms for p in module.parameters(recurse=False)}
    for name, parameter in model.named_parameters():
        trainable = name in head or (policy.affine == "trainable" and id(parameter) in norm_affine_names)
        parameter.requires_grad_(trainable)
    if policy.stats == "frozen":
        # An instance-level train() that keeps eval mode: model.train() cannot undo it, and unlike a
        # forward pre-hook it leaves the model scriptable (TorchScript ignores Python methods).
        for module in backbone_norms:
            module.train = types.MethodType(_train_stays_eval, module)  # type: ignore[method-assign]
            module.train(False)
    return count_parameters(model)
