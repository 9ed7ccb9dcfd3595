"""Deployability: the fine-tuned model exports, compiles, scripts and traces to eager's outputs.

* :func:`deployability` -- ``torch.export``, ``torch.compile(backend="eager")``, ``torch.jit.script``
  and ``torch.fx.symbolic_trace`` reproduce eager outputs; architectures that cannot are declared in
  :data:`DEPLOY_EXCEPTIONS` (one place), to be reported as strict xfails.

The other value checks (:func:`state_dict_round_trip`, :func:`batch_equivalence`,
:func:`channels_last_equivalence`, :func:`precision_forward`, :func:`compare_outputs`) live in
:mod:`.equivalence` and :mod:`.round_trip` and are re-exported here, their old path
(``pytest_zoo.deployment.X``).

Every function returns a :class:`~pytest_zoo.training.CheckReport` and raises nothing for a failing
model; on the meta device it returns a skipped report.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..zoo.deploy_paths import METHODS, Method
from .equivalence import (
    BATCH_ATOL,
    BATCH_RTOL,
    LAYOUT_TOL,
    EagerForward,
    batch_equivalence,
    channels_last_equivalence,
    compare_outputs,
    exact_arithmetic,
    precision_forward,
)
from .reports import CheckReport, Inputs, call_model, describe_error, needs_values
from .round_trip import move_statistics, state_dict_round_trip

__all__ = [
    "BATCH_ATOL",
    "BATCH_RTOL",
    "DEPLOY_EXCEPTIONS",
    "LAYOUT_TOL",
    "METHODS",
    "DeployException",
    "EagerForward",
    "Method",
    "batch_equivalence",
    "channels_last_equivalence",
    "compare_outputs",
    "deploy_exception",
    "deployability",
    "move_statistics",
    "precision_forward",
    "state_dict_round_trip",
]


# -- deployment ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployException:
    """Builders (fnmatch patterns) that ``methods`` cannot deploy, why, and the error seen.

    ``error`` is a fragment of the measured problem text: a declared failure that starts failing
    differently is not the declared one (report it as a failure, not as the xfail).
    """

    models: tuple[str, ...]
    methods: tuple[Method, ...]
    reason: str
    error: str

    def covers(self, name: str, method: str) -> bool:
        return method in self.methods and any(fnmatch.fnmatchcase(name, p) for p in self.models)


_DETECTORS = (
    "fasterrcnn_*",
    "fcos_*",
    "keypointrcnn_*",
    "maskrcnn_*",
    "retinanet_*",
    "ssd300_vgg16",
    "ssdlite320_*",
)

#: The one place where torchvision architectures that cannot be deployed one way are declared.
#: Measured with ``benchmarks/deploy_sweep.py`` on torch 2.14.1 / torchvision 0.29.1 (CPU, the kit's
#: build kwargs, batch 1 at the smallest legal size). The check that hits one is a strict xfail:
#: when an upgrade fixes it, the xfail passes and fails the run, and the row is deleted.
DEPLOY_EXCEPTIONS: tuple[DeployException, ...] = (
    DeployException(
        _DETECTORS,
        ("export",),
        "the number of boxes kept after score filtering and NMS is data-dependent, and the detection "
        "postprocessing branches on it (torch.export cannot guard on an unbacked size)",
        "GuardOnDataDependentSymNode",
    ),
    DeployException(
        _DETECTORS,
        ("fx",),
        "GeneralizedRCNNTransform / the SSD and RetinaNet transforms iterate over the list of input "
        "images; torchvision's own tests never fx-trace detection models",
        "Proxy object cannot be iterated",
    ),
    DeployException(
        ("raft_*",),
        ("fx",),
        "RAFT branches in Python on tensor values (input checks and the update loop); torchvision's "
        "own tests script RAFT but never fx-trace it",
        "symbolically traced variables cannot be used as inputs to control flow",
    ),
)


def deploy_exception(name: str, method: str) -> DeployException | None:
    """The declaration covering builder ``name`` for ``method``, if any."""
    return next((e for e in DEPLOY_EXCEPTIONS if e.covers(name, method)), None)


def _deployed(model: nn.Module, method: Method, inputs: Inputs) -> Callable[..., object]:
    args, kwargs = inputs
    if method == "export":
        return torch.export.export(model, args, kwargs or None).module()
    if method == "compile":
        return torch.compile(model, backend="eager")
    if method == "script":
        return torch.jit.script(model)
    return torch.fx.symbolic_trace(model)


def _unwrap(eager: object, deployed: object) -> object:
    """TorchScript returns ``GoogLeNetOutputs`` / ``(losses, detections)`` where eager returns one part."""
    if type(deployed) is type(eager) or not isinstance(deployed, tuple):
        return deployed
    if isinstance(eager, torch.Tensor):
        return next((v for v in deployed if isinstance(v, torch.Tensor)), deployed)
    return next((v for v in deployed if type(v) is type(eager)), deployed)


def deployability(
    model: nn.Module,
    inputs: Inputs,
    method: Method,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    check: str | None = None,
) -> CheckReport:
    """Deploy the eval model with ``method`` and compare its outputs with eager on ``inputs``.

    ``export``: ``torch.export.export(model, args, kwargs).module()``; ``compile``:
    ``torch.compile(model, backend="eager")``; ``script``: ``torch.jit.script``; ``fx``:
    ``torch.fx.symbolic_trace``. Tolerances default to torchvision's own TorchScript check (1e-4).
    A failure to deploy is a problem naming the exception; look up :func:`deploy_exception` to
    report a declared one as a strict xfail. Each call compiles afresh (``torch._dynamo.reset``).
    """
    name = check or f"deployability ({method})"
    skipped = needs_values(name, model)
    if skipped is not None:
        return skipped
    model.eval()
    try:
        with exact_arithmetic():
            eager = call_model(model, inputs)
    except Exception as error:
        return CheckReport(name, problems=(describe_error("the eager eval forward", error),))
    if method == "compile":
        torch._dynamo.reset()
    try:
        with exact_arithmetic():
            deployed = _deployed(model, method, inputs)
            output = _unwrap(eager, deployed(*inputs[0], **inputs[1]))
    except Exception as error:
        return CheckReport(
            name,
            problems=(describe_error(f"{method}", error),),
            found={"deployed": False},
            expected={"deployed": True},
        )
    finally:
        if method == "compile":
            torch._dynamo.reset()
    problems, details = compare_outputs(eager, output, atol=atol, rtol=rtol, what=f"the {method} model")
    return CheckReport(
        name,
        problems=tuple(problems),
        details=tuple(details),
        found={"deployed": True},
        expected={"deployed": True},
    )
