"""What a check expects of a model: its reference, the plan of what must train, a value check's subject."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..models.freezing import NormPolicy
from ..models.reference import Shapes
from . import task_io as tasks

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class _Reference:
    """What any model built for one name must look like at ``n`` classes, in as-built names."""

    #: Expected state_dict shapes at ``n`` classes.
    shapes: Callable[[int], Shapes]
    #: The class-dependent state_dict keys and parameter names.
    head_keys: frozenset[str]
    head_names: frozenset[str]
    #: How failure messages name the reference.
    against: str

    def head_paths(self) -> set[str]:
        """The modules that own a class-dependent tensor (``fc``, ``aux1.fc2``, ...)."""
        return {key.rpartition(".")[0] for key in self.head_keys}


@dataclass(frozen=True)
class _Plan:
    """What must hold after ``replace_head`` (and ``freeze_backbone``), in the returned model's names."""

    must_train: frozenset[str]
    #: The backbone's normalisation layers (not created by ``replace_head``), by path.
    norms: Mapping[str, nn.Module]
    #: Their weights and biases, by parameter name: what a :class:`NormPolicy`'s ``affine`` governs.
    norm_affine: frozenset[str]
    #: Whether the head is the class-dependent layers alone (no extra layers, no declared extras).
    head_only: bool
    #: The model's own backbone module (``"backbone."``), when it has one: all else must train.
    backbone: str | None = None

    @classmethod
    def end_to_end(cls, model: nn.Module) -> _Plan:
        """A model without a class head (RAFT) trains whole: every parameter must train."""
        return cls(frozenset(k for k, _ in model.named_parameters()), {}, frozenset(), head_only=False)


_STATS_MOVED = (
    "requires_grad=False does not stop BatchNorm from updating its running statistics in train mode "
    "(pytorch/pytorch#86590), and model.train() undoes a .eval() done once: keep the backbone's norm "
    "layers in eval mode in a way model.train() cannot undo (a forward pre-hook that sets "
    "module.training = False, FrozenBatchNorm2d, or an overridden train()), or declare "
    "norm_policy = NormPolicy(stats='update') if letting them update is your recipe"
)


@dataclass(frozen=True)
class _Prepared:
    """A value check's subject: the model after the hooks, what must train, how to feed it."""

    name: str
    model: nn.Module
    plan: _Plan
    io: tasks.TaskIO
    example: tasks.Example
    n: int
    device: torch.device
    policy: NormPolicy
    #: The as-built model's uninitialised twin (see :func:`~pytest_zoo.building.uninitialised_copy`),
    #: for a check that loads state into a fresh model; ``None`` unless the check asked for it.
    twin: nn.Module | None = None


#: What a value check writes: which decides whether it may run on the session's build itself.
_Writes = Literal["nothing", "trainable", "anything"]


#: The tasks whose models take one batched tensor, so batch equivalence applies.
_BATCHED_TASKS = ("classification", "segmentation", "video", "quantized")
