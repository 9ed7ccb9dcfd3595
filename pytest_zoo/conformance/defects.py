"""Naming the defect behind a failed check: which parameters, which output, which norm layers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..models import heads
from ..models.freezing import NormPolicy
from ..models.reference import SwapTrace
from . import task_io as tasks
from .failures import ConformanceFailure, FailureContext, render
from .plan import _Plan

if TYPE_CHECKING:
    pass

#: Where a train-mode shape defect reported by the gradient check comes from.
TRAIN_SHAPES_HERE = (
    "the train-mode output shapes (aux outputs included) of test_forward_shape, checked on this "
    "test's own train-mode forward: test_forward_shape runs eval mode only when this test runs",
)


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
    where = f" (the model's {plan.backbone.rstrip('.')} module)" if plan.backbone else ""
    if extra - norm_affine:
        defects.append(
            f"backbone parameters{where} other than BatchNorm are trainable: freeze_backbone missed them"
        )
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
    elif missing - norm_affine and plan.backbone:
        defects.append(
            f"{len(missing - norm_affine)} parameters outside the model's {plan.backbone.rstrip('.')} module "
            "are frozen (its "
            "decoder, RPN or ROI heads, or its head): freeze only the backbone module, or, if training "
            "the class layers alone is your recipe, declare backbone_module = None"
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


def _layer_types(model: nn.Module, paths: Iterable[str]) -> dict[str, type[nn.Module]]:
    """The class of each head layer of the as-built model (the builder's, once its architecture matched)."""
    return {path: type(module) for path in paths if (module := _module(model, path)) is not None}


def _bias_mismatches(
    swapped: nn.Module,
    built: Mapping[str, type[nn.Module]],
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    declared: bool | None,
) -> tuple[set[str], dict[str, bool]]:
    """Head layers that keep the builder's place and type, and those of them with the wrong bias.

    ``found``/``expected`` are keyed by as-built names. A layer of another type, or elsewhere, is
    the user's own design and is judged by what it does; one that is the builder's layer with its
    bias dropped (``nn.Linear(old.in_features, n, bias=False)``) is a regression of the head, unless
    the gate declares its heads' bias (``declared``). Returns the paths of the builder's layers, and
    path -> whether the layer has a bias for each whose bias differs from the expectation.
    """
    judged: set[str] = set()
    wrong: dict[str, bool] = {}
    for path, kind in built.items():
        if not any(k.rpartition(".")[0] == path for k in found) or type(_module(swapped, path)) is not kind:
            continue
        judged.add(path)
        has = f"{path}.bias" in found
        if has != (f"{path}.bias" in expected if declared is None else declared):
            wrong[path] = has
    return judged, wrong


def _bias_defects(
    wrong: Mapping[str, bool], built: Mapping[str, type[nn.Module]], declared: bool | None, gate: str
) -> list[str]:
    """Say, per layer, which bias is missing or extra, and how to fix or declare it."""
    defects = []
    for path, has in sorted(wrong.items()):
        kind = f"nn.{built[path].__name__}"
        if declared is not None:
            state = "has a bias" if has else "has no bias"
            defects.append(
                f"the head layer {path} ({kind}) {state}, but {gate} declares head_bias = {declared}: "
                "make the head match the declaration, or correct it"
            )
        elif has:
            defects.append(
                f"the head layer {path} ({kind}) has a bias ({path}.bias) that the builder's layer lacks: "
                f"build it with bias=False as the builder does, or declare head_bias = True on {gate}"
            )
        else:
            defects.append(
                f"the head layer {path} ({kind}) has no bias: {path}.bias, which the builder's layer "
                f"has, is missing; keep it ({kind}(..., bias=True), the default), or, if a bias-free "
                f"head is your recipe, declare head_bias = False on {gate}"
            )
    return defects


def expect_output_shapes(
    io: tasks.TaskIO,
    output: object,
    drawn: tasks.Example,
    n: int,
    aux: tuple[str, ...],
    context: FailureContext,
    *,
    train: bool,
    details: tuple[str, ...] = (),
) -> None:
    """The outputs have the task's shapes at ``n`` classes, or a failure that names the mode: one
    message whichever check ran the forward (train mode: this one or the gradient check)."""
    report = io.check(output, drawn, n, train=train)
    if report.ok:
        return
    problem = (
        "; ".join(report.problems)
        or f"an output does not have the shape a {io.task} model with {n} classes gives"
    )
    raise ConformanceFailure(
        render(
            context,
            f"{problem}, in {'train' if train else 'eval'} mode",
            expected=report.expected,
            found=report.found,
            defects=_output_defects(report.found, n, aux) if io.class_scores else [],
            details=details,
        )
    )
