"""Value checks that prove a fine-tuned model trains: one optimiser step, finite outputs, full backward.

The checks in :mod:`pytest_zoo.checks` are about shapes and ``requires_grad``; what breaks
fine-tuning projects goes further. Each function here is one check's body: it takes a model and
inputs the caller prepared (``TaskIO.inputs``), runs the step, and returns a :class:`CheckReport`
(never raises for a failing model: an exception inside the model becomes a problem). The caller
renders the report with the kit's failure layout.

* :func:`training_step` -- ``model.train()``, SGD over *all* parameters, one step: what must train
  moved, everything else is bit-identical, and so are the running statistics a frozen-statistics
  policy promised to keep (pytorch/pytorch#86590);
* :func:`finite_outputs` -- every output tensor (named tuples, dicts, lists of dicts) is finite;
* :func:`full_backward` -- with everything trainable, every parameter gets a finite gradient;
  parameters an architecture never uses are declared by the caller, not skipped;
* :func:`nonfinite_state` -- NaN/inf parameters and buffers, by name (partial weights such as
  VGG16 ``IMAGENET1K_FEATURES``, whose classifier is NaN);

On the meta device nothing has values: every check returns a report whose ``skipped`` says so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from ..models.cache import fingerprint
from .reports import (
    CheckReport,
    Inputs,
    Score,
    call_model,
    describe_error,
    listed,
    model_device,
    named_leaves,
    needs_values,
    nonfinite,
)

__all__ = [
    "CheckReport",
    "Inputs",
    "Score",
    "declared_without_grad",
    "finite_leaves",
    "finite_outputs",
    "full_backward",
    "model_device",
    "named_leaves",
    "needs_values",
    "nonfinite_state",
    "training_step",
]

_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def finite_outputs(
    model: nn.Module, inputs: Inputs, *, train: bool, check: str = "finite outputs"
) -> CheckReport:
    """Run one forward (under ``no_grad``) in train or eval mode; every output tensor must be finite.

    ``inputs`` must suit the mode: a detector in train mode needs targets (``TaskIO.inputs(...,
    train=True)``) and returns a loss dict, whose losses are then the outputs. The report names
    each non-finite output (``aux1: 20 NaN, 0 inf of 20 values``). A train-mode forward updates
    BatchNorm running statistics, as training does; the caller's model cache restores them.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    mode = "train" if train else "eval"
    model.train(train)
    try:
        with torch.no_grad():
            output = call_model(model, inputs)
    except Exception as error:
        return CheckReport(check, problems=(describe_error(f"the {mode}-mode forward", error),))
    return finite_leaves(output, mode, check)


def finite_leaves(output: object, mode: str, check: str = "finite outputs") -> CheckReport:
    """:func:`finite_outputs`'s verdict on an output some forward already gave."""
    leaves = named_leaves(output)
    bad = {name: text for name, tensor in leaves.items() if (text := nonfinite(tensor)) is not None}
    problems = tuple(f"{mode}-mode output '{name}' is not finite: {text}" for name, text in bad.items())
    if not leaves:
        problems += (f"the {mode}-mode forward returned no tensor ({type(output).__name__})",)
    return CheckReport(
        check,
        problems=problems,
        expected={"non-finite outputs": []},
        found={"non-finite outputs": sorted(bad)},
    )


def nonfinite_state(model: nn.Module, *, check: str = "finite parameters") -> CheckReport:
    """Name every parameter and buffer holding NaN or inf.

    For the weights-loading path (a checkpoint with NaN layers, e.g. VGG16 ``IMAGENET1K_FEATURES``
    whose classifier is NaN, where swapping only the last layer leaves the others NaN), and, under
    :func:`~pytest_zoo.models.building.uninitialised_as_nan`, for a head built from ``torch.empty``
    without initialisation.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    bad = {name: text for name, tensor in state.items() if (text := nonfinite(tensor)) is not None}
    problems: tuple[str, ...] = ()
    if bad:
        owners = sorted({name.rpartition(".")[0] or name for name in bad})
        problems = (
            f"{len(bad)} parameters/buffers hold NaN or inf, in {listed(owners, 'layers')}: "
            "a layer left uninitialised (torch.empty without an init) or loaded from partial "
            "weights whose other layers are NaN; initialise or replace those layers too",
        )
    return CheckReport(
        check,
        problems=problems,
        expected={"non-finite tensors": []},
        found={"non-finite tensors": sorted(bad)},
        details=tuple(f"{name}: {text}" for name, text in sorted(bad.items())[:10]),
    )


#: Parameters an architecture never uses in a train-mode forward, with everything trainable, by
#: builder pattern: :func:`full_backward` requires exactly these to get no gradient. Measured with
#: ``benchmarks/deploy_sweep.py`` (torch 2.14.1 / torchvision 0.29.1, the kit's build kwargs: aux
#: heads on, ``aux_loss=True``; detectors with targets): in 120 of the 121 builders every parameter
#: gets a gradient, so the table is empty (regnet_y_128gf was not measured: over 240 s on 2 cores).
WITHOUT_GRAD: tuple[tuple[str, Mapping[str, str]], ...] = ()


def declared_without_grad(name: str) -> dict[str, str]:
    """The parameters of builder ``name`` declared in :data:`WITHOUT_GRAD`, with the reason."""
    import fnmatch

    declared: dict[str, str] = {}
    for pattern, parameters in WITHOUT_GRAD:
        if fnmatch.fnmatchcase(name, pattern):
            declared.update(parameters)
    return declared


def full_backward(
    model: nn.Module,
    inputs: Inputs,
    score: Score,
    *,
    declared_without_grad: Mapping[str, str] | None = None,
    check: str = "full backward",
    judge_outputs: bool = False,
) -> CheckReport:
    """With every parameter trainable, one train-mode backward gives each a finite ``.grad``.

    ``inputs`` are train-mode inputs (targets for detectors); ``score`` is ``TaskIO.score``.
    ``declared_without_grad`` maps parameter names an architecture never uses in this forward to
    the reason; they must get no gradient, and a declared one that does get one is reported as a
    stale declaration. The model is left with ``requires_grad=True`` everywhere and its ``.grad``
    set: the caller's model cache rebuilds or restores it. ``judge_outputs`` first judges the
    train-mode outputs as :func:`finite_outputs` would, on this forward instead of one more.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    declared = dict(declared_without_grad or {})
    for parameter in model.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    model.train()
    try:
        output = call_model(model, inputs)
        outputs = finite_leaves(output, "train") if judge_outputs else None
        if outputs is not None and not outputs.ok:
            return outputs
        loss = score(output)
        loss.backward()  # type: ignore[no-untyped-call]
    except Exception as error:
        return CheckReport(check, problems=(describe_error("the train-mode forward and backward", error),))
    params = dict(model.named_parameters())
    without = {name for name, p in params.items() if p.grad is None}
    bad = {n: t for n, p in params.items() if p.grad is not None and (t := nonfinite(p.grad)) is not None}
    problems = []
    if not torch.isfinite(loss.detach()).all():
        problems.append(f"the loss is not finite ({float(loss.detach()):.3g})")
    if undeclared := without - declared.keys():
        problems.append(
            f"{listed(undeclared, 'parameters')} got no gradient with everything trainable: the forward "
            "never uses them (a layer built but not called, or an output detached from it)"
        )
    if stale := (declared.keys() & params.keys()) - without:
        problems.append(f"declared without a gradient but got one (stale declaration): {listed(stale)}")
    if bad:
        problems.append(f"{listed(bad, 'parameters')} have NaN or inf gradients")
    return CheckReport(
        check,
        problems=tuple(problems),
        expected={"without grad": sorted(declared.keys() & params.keys()), "non-finite grads": []},
        found={"without grad": sorted(without), "non-finite grads": sorted(bad)},
        details=tuple(f"{name}.grad: {text}" for name, text in sorted(bad.items())[:10]),
    )


def training_step(
    model: nn.Module,
    inputs: Inputs,
    score: Score,
    *,
    must_train: Collection[str],
    frozen_norm_modules: Collection[str] = (),
    lr: float = 0.1,
    check: str = "training step",
) -> CheckReport:
    """One SGD step, as users take it, proves what trains and what stays frozen.

    Calls ``model.train()`` first (so a freeze that ``train()`` undoes is caught), builds
    ``torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)`` over *all*
    parameters, runs forward, ``score(output).backward()`` and ``step()``. Then:

    * every parameter named in ``must_train`` trained: the backward gave it a ``.grad`` and the
      optimiser stepped it. A gradient that is exactly zero for this input still trains (a
      BatchNorm bias whose output reaches a train-mode BatchNorm only through linear layers: the
      next BatchNorm removes any mean shift); for such a parameter the check proves what one step
      can prove, that autograd reaches it (the forward uses it, nothing froze it) and that SGD
      took its step on it (its momentum buffer exists), not that its value moves. A parameter
      that got no ``.grad`` at all is either frozen or unused by the forward, and is named as such;
    * every other parameter is bit-identical and got no ``.grad`` (SGD skips parameters whose
      ``.grad`` is None, so a zero gradient on a frozen parameter is still a leak);
    * every module in ``frozen_norm_modules`` (dotted paths of the backbone's normalisation layers,
      given when the declared policy freezes statistics; empty otherwise) kept ``running_mean``,
      ``running_var`` and ``num_batches_tracked`` bit-identical.

    ``inputs`` are train-mode inputs (a batch of 2 or more for BatchNorm; targets for detectors).
    The step modifies the model's parameters in place; nothing is restored.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    model.train()
    params = dict(model.named_parameters())
    if unknown := set(must_train) - params.keys():
        return CheckReport(
            check, problems=(f"must_train names parameters the model lacks: {listed(unknown)}",)
        )
    # Only what can get a gradient is copied: the step updates nothing else, so for the rest it is
    # enough to see that no in-place write reached it (its version and storage), without a copy of
    # a frozen backbone the size of the model.
    before = {name: p.detach().clone() for name, p in params.items() if p.requires_grad}
    untouched = {name: fingerprint(p) for name, p in params.items() if not p.requires_grad}
    norms: dict[str, torch.Tensor] = {}
    for path in frozen_norm_modules:
        module = model.get_submodule(path)
        for buffer in _NORM_BUFFERS:
            value = getattr(module, buffer, None)
            if isinstance(value, torch.Tensor):
                norms[f"{path}.{buffer}"] = value.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    optimizer.zero_grad(set_to_none=True)
    try:
        loss = score(call_model(model, inputs))
        if loss.requires_grad:  # nothing trainable reached: nothing moves, reported below
            loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    except Exception as error:
        return CheckReport(check, problems=(describe_error("the training step", error),))
    changed = {name for name, value in before.items() if not torch.equal(params[name].detach(), value)}
    changed |= {name for name, saved in untouched.items() if fingerprint(params[name]) != saved}
    stepped = {name for name, p in params.items() if p.grad is not None and p in optimizer.state}
    trained = changed | stepped
    stuck = set(must_train) - trained
    moved = trained - set(must_train)
    still = (stepped - changed) & set(must_train)  # trained with an exactly zero update
    buffers = dict(model.named_buffers())
    drifted = sorted({k.rpartition(".")[0] for k, v in norms.items() if not torch.equal(buffers[k], v)})
    problems = []
    if stuck:
        frozen = {name for name in stuck if not params[name].requires_grad}
        unused = stuck - frozen
        if frozen:
            problems.append(
                f"{listed(frozen, 'parameters')} that must train did not change in one SGD step: they "
                "have requires_grad=False after model.train()"
            )
        if unused:
            problems.append(
                f"{listed(unused, 'parameters')} that must train got no gradient at all: the forward "
                "does not use them (a layer built but not called, or an output detached from it)"
            )
    if moved:
        problems.append(
            f"{listed(moved, 'parameters')} that must stay frozen changed in one SGD step over "
            "model.parameters(), or got a .grad: they still have requires_grad=True"
        )
    if drifted:
        problems.append(
            f"running statistics moved in {listed(drifted, 'backbone normalisation layers')} under a "
            "frozen-statistics policy: model.train() put them back in train mode; keep them in eval "
            "mode with a forward pre-hook, or convert them to FrozenBatchNorm2d"
        )
    if not torch.isfinite(loss.detach()).all():
        problems.append(f"the loss is not finite ({float(loss.detach()):.3g})")
    return CheckReport(
        check,
        problems=tuple(problems),
        expected={"trained": len(set(must_train)), "frozen norm layers moved": 0},
        found={"trained": len(trained), "frozen norm layers moved": len(drifted)},
        details=(
            f"loss {float(loss.detach()):.4g}",
            f"changed: {listed(changed)}",
            *([f"trained with an exactly zero update for this input: {listed(still)}"] if still else []),
        ),
    )
