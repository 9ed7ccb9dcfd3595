"""The value checks of :class:`~pytest_zoo.conformance.checks.ZooConformance`: the fine-tuned model trains,
reloads, batches and deploys; and the DEFAULT weights' metadata.

Each public function is the body of the ``test_*`` method of the same name (``deployability``: of
``test_deployability``), taking the gate instance; the method stays on the class.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..compat import autocast_gap
from ..models import building
from ..models.cache import return_freed_memory
from ..models.meta import require_values
from ..zoo.families import InputSpec
from . import deployment, strategies, training
from . import task_io as tasks
from .defects import _class_count
from .failures import ConformanceFailure, FailureContext, _expect, render
from .hooks import _context, _fresh, _hooked, _raises_as_failure, _swap_steps
from .oracle import _plan, _reference
from .plan import _BATCHED_TASKS, _Plan, _Prepared, _Writes

if TYPE_CHECKING:
    from .checks import ZooConformance


def _value_check(
    gate: ZooConformance,
    name: str,
    device: torch.device,
    what: str,
    run: Callable[[_Prepared], training.CheckReport | None],
    *,
    freeze: bool = True,
    train: bool = False,
    min_batch: int = 1,
    writes: _Writes = "nothing",
    twin: bool = False,
    under: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> None:
    """The skeleton every value check shares: hooks on the session's build, one report, the layout.

    A value check runs one deterministic example (:func:`_value_example`), not Hypothesis
    draws: what it proves (a step moves exactly the trainable parameters, a reload is exact)
    does not vary with the class count, and each example costs a model-sized step. The input
    is of a moderate, legal size, so that random-init statistics are not degenerate (a 1x1
    image in a batch of 2 makes BatchNorm divide by its epsilon, layer after layer).

    The hooks run on the session's as-built model itself, as the Hypothesis checks do: the
    cache puts back what they change (the head, flags, buffers) and rebuilds a model whose
    weights were written. A check declares what it ``writes``: ``"trainable"`` (an optimiser
    step) runs on a copy of the hooked model when something that must train is a weight the
    build owns (a trainable norm policy, RAFT trained whole); ``"anything"`` (deployment,
    which may rewrite modules) always does. Nothing else is copied, so a model's value checks
    hold one model-sized build, not two. ``twin`` adds an uninitialised copy of the as-built
    model to the prepared subject, for a check that loads state into a fresh model. ``run``
    returns the check's :class:`~pytest_zoo.training.CheckReport`; a skipped one (the meta
    device has no values) skips the test with its reason.
    """
    model = gate._model(name, device)
    io = tasks.task_io(name)
    require_values(device, what)
    reference = _reference(gate, name, model, device) if io.has_head else None
    spec = gate._spec(name, model)

    n, drawn = _value_example(io, spec, model, train=train, min_batch=min_batch)

    def check() -> None:
        nonlocal model
        model = _fresh(gate, model)
        mode = "train" if train else "eval"
        hook = "freeze_backbone" if freeze else "replace_head"
        tail = f"model.{mode}(); outputs = model({io.describe(drawn)})"
        fresh = building.uninitialised_copy(model) if twin else None

        def context() -> FailureContext:
            # The reproduce lines follow how the hooks were used (an in-place swap or not).
            steps = _swap_steps(gate, name, n, freeze=freeze, tail=tail) if io.has_head else []
            return _context(gate, name, hook, n=n, shape=drawn.shape, mode=mode, steps=steps)

        with (
            _raises_as_failure(
                gate, context(), "replace_head, then freeze_backbone," if freeze else "replace_head"
            ),
            under(),
        ):
            swapped, trace = _hooked(gate, model, n, has_head=io.has_head, freeze=freeze)
        plan = (
            _plan(gate, name, reference, swapped, trace)
            if reference is not None
            else _Plan.end_to_end(swapped)
        )
        if writes == "anything" or (writes == "trainable" and not plan.must_train <= trace.introduced):
            swapped = copy.deepcopy(swapped)
        subject = _Prepared(name, swapped, plan, io, drawn, n, device, gate.norm_policy, fresh)
        try:
            report = run(subject)
        finally:
            # A full backward leaves a model-sized set of gradients on the session's build.
            for parameter in swapped.parameters():
                parameter.grad = None
            del subject, swapped
            return_freed_memory()
        if report is not None and report.skipped is not None:
            import pytest

            pytest.skip(report.skipped)
        if report is not None and not report.ok:
            raise ConformanceFailure(
                render(
                    context(),
                    f"{what}: " + "; ".join(report.problems),
                    expected=dict(report.expected) or None,
                    found=dict(report.found) or None,
                    details=report.details,
                )
            )

    check()


def training_step(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:

    def run(p: _Prepared) -> training.CheckReport:
        frozen = list(p.plan.norms) if p.policy.stats == "frozen" else []
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=True)
        return training.training_step(
            p.model, inputs, p.io.score, must_train=p.plan.must_train, frozen_norm_modules=frozen
        )

    _value_check(gate, zoo_model_name, zoo_device, "the training step", run, train=True, writes="trainable")


def finite_outputs_and_backward(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:

    def run(p: _Prepared) -> training.CheckReport:
        report = training.nonfinite_state(p.model)
        if not report.ok:
            return report
        for train in (False, True):
            inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=train)
            report = training.finite_outputs(p.model, inputs, train=train)
            if not report.ok:
                return report
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=True)
        declared = training.declared_without_grad(p.name)
        return training.full_backward(p.model, inputs, p.io.score, declared_without_grad=declared)

    _value_check(
        gate,
        zoo_model_name,
        zoo_device,
        "finite outputs and gradients",
        run,
        freeze=False,
        train=True,
        under=building.uninitialised_as_nan,
    )


def state_dict_round_trip(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:
    has_head = tasks.task_io(zoo_model_name).has_head

    def run(p: _Prepared) -> training.CheckReport:
        as_built = p.twin
        assert as_built is not None

        def fresh() -> nn.Module:
            model = building.uninitialised_copy(as_built)
            return _hooked(gate, model, p.n, has_head=has_head, freeze=True)[0]

        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        return deployment.state_dict_round_trip(p.model, fresh, inputs)

    _value_check(gate, zoo_model_name, zoo_device, "the state_dict round trip", run, twin=True)


def batch_equivalence(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:
    io = tasks.task_io(zoo_model_name)
    if io.task not in _BATCHED_TASKS:
        import pytest

        pytest.skip(f"{io.task} models take a list of inputs, not one batched tensor")

    def run(p: _Prepared) -> training.CheckReport:
        (x, *_), kwargs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        return deployment.batch_equivalence(p.model, x, kwargs=kwargs)

    _value_check(gate, zoo_model_name, zoo_device, "batch equivalence", run, min_batch=2)


def channels_last_and_autocast(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:

    def run(p: _Prepared) -> training.CheckReport:
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        report = deployment.channels_last_equivalence(p.model, inputs)
        if not report.ok and report.skipped is None:
            return report
        gap = autocast_gap(p.model, p.device.type)
        if gap is not None:
            return training.CheckReport("autocast", skipped=gap)
        return deployment.precision_forward(p.model, inputs)

    _value_check(gate, zoo_model_name, zoo_device, "channels_last / autocast", run)


def deployability(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:
    methods = tuple(gate.deploy)
    if not methods:
        import pytest

        pytest.skip(
            "deployability is opt-in: set deploy = ('export', 'compile', 'script', 'fx') on the class"
        )
    declared: list[str] = []
    fixed: list[str] = []

    def run(p: _Prepared) -> training.CheckReport | None:
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        for method in methods:
            report = deployment.deployability(p.model, inputs, method)
            exception = deployment.deploy_exception(p.name, method)
            if exception is None:
                if not report.ok:
                    return report
            elif report.ok:
                fixed.append(f"{method} ({exception.reason})")
            elif any(exception.error in problem for problem in report.problems):
                declared.append(f"{method}: {exception.reason}")
            else:
                return report
        return None

    _value_check(gate, zoo_model_name, zoo_device, "deployability", run, writes="anything")
    if fixed:
        raise ConformanceFailure(
            f"{zoo_model_name}: declared not deployable, but it deploys now: "
            f"{'; '.join(sorted(set(fixed)))}. Remove its row from "
            "pytest_zoo.deployment.DEPLOY_EXCEPTIONS."
        )
    if declared:
        import pytest

        pytest.xfail(f"{zoo_model_name}: declared: " + "; ".join(sorted(set(declared))))


def default_weights_metadata(gate: ZooConformance, zoo_model_name: str) -> None:
    name = zoo_model_name
    if not gate.builder_oracle:
        import pytest

        pytest.skip(f"builder_oracle = False: {name} is not checked against torchvision's weights")
    from torchvision.models import get_model_weights

    try:
        weights: Any = get_model_weights(name).DEFAULT
    except (AttributeError, ValueError):
        import pytest

        pytest.skip(f"{name} has no DEFAULT weights enum")
    meta = weights.meta
    if not tasks.task_io(name).has_head:
        meta = {**meta, "categories": meta.get("categories") or []}  # flow has no classes to name
    categories = meta.get("categories")
    classes = _class_count(building.build_model(name, structural=True))
    where = f"{name}: {type(weights).__name__}.{weights.name}.meta"
    _expect(isinstance(categories, list), lambda: f"{where}['categories'] is {categories!r}, not a list")
    # COCO's 91 detection categories keep 'N/A' placeholders for the ids the dataset never used,
    # so that label i is category i: those repeat by design, every real name must not.
    named = [c for c in categories if c != "N/A"]
    _expect(
        len(named) == len(set(named)) and all(isinstance(c, str) for c in categories),
        lambda: f"{where}['categories'] are not unique strings (apart from 'N/A' placeholders)",
    )
    _expect(
        classes is None or len(categories) == classes,
        lambda: (
            f"{where}['categories'] has {len(categories)} names, the builder's head has {classes} outputs"
        ),
    )
    recipe = meta.get("recipe")
    _expect(isinstance(recipe, str) and recipe.startswith("http"), lambda: f"{where}['recipe'] is {recipe!r}")
    _expect(callable(weights.transforms), lambda: f"{where}: transforms is not callable")
    _expect(callable(weights.transforms()), lambda: f"{where}: transforms() did not return a callable")


def _value_example(
    io: tasks.TaskIO, spec: InputSpec, model: nn.Module, *, train: bool, min_batch: int
) -> tuple[int, tasks.Example]:
    """The one example a value check runs: 5 classes (or the task's minimum), a batch of 2 where
    the spec allows it, the legal side nearest to 32 pixels, the shortest legal clip."""
    low, high = spec.sizes(train=train)
    side = min(high, max(low, 32 // spec.multiple * spec.multiple or spec.multiple))
    batch = min(max(2, min_batch, strategies.min_train_batch(model) if train else 1), spec.max_batch or 2)
    frames = spec.frames[0] if spec.frames is not None else None
    return max(5, io.min_classes), tasks.Example(max(batch, min_batch), (side, side), frames, seed=0)
