"""What a row of the family table says: a family's builders, heads and legal input geometry.

The types are separate from the table (:mod:`pytest_zoo.zoo.families`) so that a reader sees the
vocabulary of a row in one short module; a row whose task is not one of :data:`TASKS` is refused
when the table is built. No torch import.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .tasks import TASKS

__all__ = ["Family", "InputSpec"]


@dataclass(frozen=True)
class InputSpec:
    """Which spatial input sizes a family accepts, declared rather than discovered by trial.

    ``min_size`` is the smallest square side the model accepts in eval mode. A family whose size is
    fixed when the model is built (ViT's ``image_size``, MaxViT's ``input_size``) names the builder
    keyword in ``size_kwarg`` and the size the kit builds it with in ``fixed``: such a model accepts
    exactly that size and nothing else; a model of your own whose size is fixed gives ``fixed``
    alone. ``train_min_size`` exists because some auxiliary heads need
    a larger feature map than the main path (Inception's ``AuxLogits`` pools 5x5 then convolves 5x5).
    """

    min_size: int = 1
    multiple: int = 1
    fixed: int | None = None
    size_kwarg: str | None = None
    #: The builder takes the fixed size as an ``(H, W)`` pair rather than one int (MaxViT).
    size_as_pair: bool = False
    train_min_size: int | None = None
    #: How far above ``min_size`` generated inputs may go; bounded to keep CPU runs cheap.
    span: int = 32
    #: Video only: the inclusive range of legal clip lengths ``T`` (S3D pools 2 frames after an
    #: 8x temporal reduction; MViT's positional embedding is built for exactly 16).
    frames: tuple[int, int] | None = None
    #: A cap on generated batch sizes, for architectures whose only legal geometry is expensive.
    max_batch: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for field_name in ("min_size", "multiple"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{field_name} must be a positive int, got {value!r}")
        if self.span < 0:
            problems.append(f"span must be >= 0, got {self.span!r}")
        if self.fixed is not None and (not isinstance(self.fixed, int) or self.fixed < 1):
            problems.append(
                f"fixed must be a positive int (the one side the model accepts), got {self.fixed!r}"
            )
        elif self.fixed is not None and self.fixed % self.multiple:
            problems.append(f"fixed={self.fixed} is not a multiple of multiple={self.multiple}")
        if self.size_kwarg is not None and self.fixed is None:
            problems.append(
                f"size_kwarg={self.size_kwarg!r} names the builder keyword that fixes the input size, so "
                f"give that size too: InputSpec(fixed=224, size_kwarg={self.size_kwarg!r})"
            )
        if self.frames is not None and not 1 <= self.frames[0] <= self.frames[1]:
            problems.append(f"frames must be a range (low, high) with 1 <= low <= high, got {self.frames!r}")
        if self.max_batch is not None and self.max_batch < 1:
            problems.append(f"max_batch must be positive, got {self.max_batch!r}")
        if problems:
            raise ValueError(
                "invalid InputSpec: "
                + "; ".join(problems)
                + ". Examples: InputSpec(fixed=224) for a model that accepts exactly 224x224, "
                "InputSpec(min_size=32, multiple=16) for sides 32, 48, 64, ..., InputSpec(min_size=64) "
                "for any side from 64"
            )

    def size_kwargs(self) -> dict[str, object]:
        """The builder keyword that fixes the input size, if the family has one."""
        if self.size_kwarg is None:
            return {}
        return {self.size_kwarg: (self.fixed, self.fixed) if self.size_as_pair else self.fixed}

    def sizes(self, *, train: bool = False) -> tuple[int, int]:
        """The inclusive range ``(low, high)`` of legal square sides, each a multiple of ``multiple``."""
        if self.fixed is not None:
            return self.fixed, self.fixed
        low = max(self.min_size, self.train_min_size or 0) if train else self.min_size
        low = -(-low // self.multiple) * self.multiple
        high = max(low, (low + self.span) // self.multiple * self.multiple)
        return low, high


@dataclass(frozen=True)
class Family:
    """One row of the table: a set of builders that share a model class and a head layout.

    ``heads`` are the dotted paths of the layers whose shape depends on the number of classes;
    ``aux_heads`` are such layers that exist only in some configurations (GoogLeNet's ``aux1``,
    Inception's ``AuxLogits``) and are replaced when present. ``num_classes_attrs`` are plain
    attributes that record the class count and would otherwise go stale (SqueezeNet).
    ``head_multiples`` names the heads whose output size is ``k * num_classes`` rather than
    ``num_classes`` (a box regressor's 4 coordinates per class, RetinaNet's 9 anchors per class).
    A family with no ``heads`` has no class head at all (RAFT); ``notes`` then says why, and
    ``replace_head`` raises with that reason instead of guessing.
    """

    name: str
    builders: tuple[str, ...]
    model_class: str
    heads: tuple[str, ...]
    aux_heads: tuple[str, ...] = ()
    num_classes_attrs: tuple[str, ...] = ()
    inputs: InputSpec = InputSpec()
    build_kwargs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    task: str = "classification"
    notes: str = ""
    head_multiples: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: The builder keyword that decides whether the ``aux_heads`` exist (``aux_logits``,
    #: ``aux_loss``): the reference is built with it set the way the user's model was built.
    aux_kwarg: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"family {self.name!r}: unknown task {self.task!r}; tasks are {', '.join(TASKS)}"
            )
        unknown = set(self.head_multiples) - set(self.heads) - set(self.aux_heads)
        if unknown:
            raise ValueError(
                f"family {self.name!r}: head_multiples names paths that are not heads: {unknown}"
            )
        if not self.heads and not self.notes:
            raise ValueError(f"family {self.name!r} has no heads: say why in notes")

    def matches(self, builder: str) -> bool:
        return any(fnmatch.fnmatchcase(builder, pattern) for pattern in self.builders)
