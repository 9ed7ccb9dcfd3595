"""Freezing a backbone so that only the head trains, and counting what that left trainable.

``requires_grad=False`` does not stop BatchNorm from updating its running statistics in train
mode (pytorch/pytorch#86590), so :func:`freeze_backbone` asks what to do with them instead of
leaving the trap armed.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .heads import get_adapter

__all__ = [
    "BACKBONE",
    "NORM_TYPES",
    "NormPolicy",
    "NormStats",
    "ParameterCounts",
    "backbone_prefix",
    "count_parameters",
    "freeze_backbone",
]

#: ``"update"``: backbone normalisation layers keep updating their running statistics in train
#: mode (PyTorch's default). ``"frozen"``: they always normalise with their stored statistics.
NormStats = Literal["update", "frozen"]
#: ``"frozen"``: the backbone's normalisation weights and biases are frozen like the rest of it.
#: ``"trainable"``: they train (a ``train_bn=True`` recipe).
NormAffine = Literal["frozen", "trainable"]

#: The submodule a model names as its backbone where it has one: torchvision's segmentation models
#: (the ResNet/MobileNet encoder; the ASPP or conv decoder is not in it) and detection models (the
#: encoder with its FPN; the RPN and ROI heads are not in it). Such a model's backbone is that
#: module; any other model's backbone is everything but its class-dependent layers.
BACKBONE = "backbone"

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


def backbone_prefix(names: Iterable[str], module: str | None = BACKBONE) -> str | None:
    """``"backbone."`` when the parameter ``names`` of a model include its own ``module``, else ``None``.

    ``module`` is a dotted path (``"backbone"``, ``"backbone.body"`` for a recipe that trains the
    FPN too); ``None`` means the model's backbone is everything but its class-dependent layers.
    """
    if module is None:
        return None
    prefix = module + "."
    return prefix if any(name.startswith(prefix) for name in names) else None


def _train_stays_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a normalisation layer whose statistics are frozen: it stays in eval mode."""
    return nn.Module.train(module, False)


def freeze_backbone(
    model: nn.Module,
    *,
    norm_stats: NormStats | Literal["freeze"] = "update",
    norm_affine: NormAffine = "frozen",
    backbone: str | None = BACKBONE,
) -> ParameterCounts:
    """Freeze the backbone, so that what fine-tuning trains (the head, and a decoder) trains alone.

    The backbone is the model's own ``backbone`` submodule where it has one (a DeepLabV3's ResNet
    encoder: its ASPP decoder and the new last conv train; a Faster R-CNN's encoder and FPN: its
    RPN and ROI heads train), else everything except the head (exactly the layers
    :func:`replace_head` swaps). ``backbone`` names that submodule; ``None`` freezes everything but
    the head of any model. ``norm_stats`` and ``norm_affine`` are the two axes of a
    :class:`NormPolicy`, applied to the backbone's normalisation layers. With
    ``norm_stats="frozen"``, they stay in eval mode even when the model is put in train mode (their
    own ``train`` keeps them there), which keeps their running statistics fixed. With
    ``norm_affine="trainable"`` their weights and biases keep training. Everything is validated
    and the adapter resolved before anything changes, so bad input raises with the model untouched
    rather than half frozen.
    """
    if norm_stats == "freeze":  # the 0.1.0 spelling
        norm_stats = "frozen"
    policy = NormPolicy(affine=norm_affine, stats=norm_stats)
    adapter = get_adapter(model)
    prefix = backbone_prefix((name for name, _ in model.named_parameters()), backbone)
    head_paths = adapter.present_heads(model) if prefix is None else []

    def in_backbone(path: str) -> bool:
        if prefix is not None:
            return (path + ".").startswith(prefix)
        return not any(path == head or path.startswith(head + ".") for head in head_paths)

    backbone_norms = [
        module
        for path, module in model.named_modules()
        if isinstance(module, NORM_TYPES) and in_backbone(path)
    ]
    norm_affine_names = {id(p) for module in backbone_norms for p in module.parameters(recurse=False)}
    for name, parameter in model.named_parameters():
        trainable = not in_backbone(name.rpartition(".")[0]) or (
            policy.affine == "trainable" and id(parameter) in norm_affine_names
        )
        parameter.requires_grad_(trainable)
    if policy.stats == "frozen":
        # An instance-level train() that keeps eval mode: model.train() cannot undo it, and unlike a
        # forward pre-hook it leaves the model scriptable (TorchScript ignores Python methods).
        for module in backbone_norms:
            module.train = types.MethodType(_train_stays_eval, module)  # type: ignore[method-assign]
            module.train(False)
    return count_parameters(model)
