"""Naming the defect behind a failed check: which parameters, which output, which norm layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..models import heads
from ..models.freezing import NormPolicy
from ..models.reference import SwapTrace
from .plan import _Plan

if TYPE_CHECKING:
    pass


def _diff_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    lines = [f"  missing: {k} {expected[k]}" for k in sorted(expected.keys() - found.keys())]
    lines += [f"  unexpected: {k} {found[k]}" for k in sorted(found.keys() - expected.keys())]
    lines += [
        f"  {k}: expected {expected[k]}, found {found[k]}"
        for k in sorted(found.keys() & expected.keys())
        if found[k] != expected[k]
    ]
    return "\n".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")


def _describe_policy(policy: NormPolicy) -> str:
    return f"NormPolicy(affine={policy.affine!r}, stats={policy.stats!r})"


def _norm_buffers(norms: Mapping[str, nn.Module], *, clone: bool) -> dict[str, torch.Tensor]:
    """Every buffer of the given norm layers by full name (cloned: a value to compare with later)."""
    return {
        f"{path}.{k}" if path else k: b.detach().clone() if clone else b
        for path, module in norms.items()
        for k, b in module.named_buffers(recurse=False)
    }


def _freeze_defects(found: set[str], plan: _Plan, trace: SwapTrace) -> list[str]:
    """Say what a wrong trainable (or ``.grad``) set points at, most specific first."""
    norm_affine = plan.norm_affine
    extra, missing = found - plan.must_train, plan.must_train - found
    defects = []
    if extra & norm_affine:
        defects.append(
            f"{len(extra & norm_affine)} BatchNorm affine parameters (weight/bias) are still trainable: set "
            "requires_grad=False on every backbone parameter, not only on conv/linear weights; or, if "
            "training them is your recipe (train_bn), declare it: "
            "norm_policy = NormPolicy(affine='trainable')"
        )
    if extra - norm_affine:
        defects.append("backbone parameters other than BatchNorm are trainable: freeze_backbone missed them")
    if missing & norm_affine:
        defects.append(
            "the declared NormPolicy(affine='trainable') keeps the backbone's normalisation parameters "
            f"trainable, but {len(missing & norm_affine)} of them are frozen"
        )
    if (missing - norm_affine) & trace.introduced:
        defects.append(
            "parameters replace_head introduced (the new head's layers) are frozen: freeze_backbone must "
            "leave every layer of the new head trainable"
        )
    elif missing - norm_affine:
        defects.append("head parameters are frozen: freeze_backbone must leave every head layer trainable")
    return defects


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether ``tensor`` is on ``device``; ``cuda`` without an index means the current CUDA device."""
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _output_defects(found: Mapping[str, tuple[int, ...]], n: int, aux: Sequence[str]) -> list[str]:
    """Say which output is wrong: the main one (the head) or an auxiliary one (an aux head)."""
    defects = []
    for index, (key, shape) in enumerate(found.items()):
        if shape[1:] == (n,):
            continue
        if index == 0:
            defects.append(f"the main output {key!r} has shape {shape}: replace_head did not resize the head")
        else:
            defects.append(
                f"auxiliary output {key!r} has shape {shape}: replace_head must swap the auxiliary heads "
                f"too ({', '.join(aux) or 'the layers that produce it'}), or build without them"
            )
    return defects


def _class_count(model: nn.Module) -> int | None:
    """Outputs of the model's (first) head layer, or ``None`` for a model with no adapter."""
    adapter = heads.find_adapter(model)
    if adapter is None:
        return None
    if not adapter.heads:
        return None
    path = adapter.heads[0]
    head = model.get_submodule(path)
    outputs = heads.layer_outputs(head)
    return outputs // adapter.multiple(path) or None
