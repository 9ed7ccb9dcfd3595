"""The value checks of :class:`~pytest_zoo.conformance.checks.ZooConformance`: the fine-tuned model trains,
reloads, batches and deploys; and the DEFAULT weights' metadata.

Each public function is the body of the ``test_*`` method of the same name (``deployability``: of
``test_deployability``), taking the gate instance; the method stays on the class.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..compat import autocast_gap
from ..models import building
from ..models.cache import active_cache, return_freed_memory
from ..models.meta import require_values
from ..zoo.families import InputSpec
from . import attribution, deployment, strategies, training
from . import task_io as tasks
from .defects import _class_count
from .failures import ConformanceFailure, FailureContext, _expect, render
from .feature_maps import side_for_feature_maps
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
    attribute: bool = False,
    diverge: attribution.Divergence | None = None,
    maps: bool = False,
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

    ``attribute`` runs the check under an :class:`~.attribution.Recorder` and, when it fails,
    finds the module where the wrong values start (``diverge`` says how a mismatch check's runs
    pair up; a mismatch is traced on a second, recorded run). A start in a module the hooks did
    not introduce or change skips the test naming torch; anywhere else the hook is blamed, and
    the failure says where. ``maps`` widens the input until every feature map that follows its
    size is 2x2 or more (:func:`~.feature_maps.side_for_feature_maps`).
    """
    model = gate._model(name, device)
    io = tasks.task_io(name)
    require_values(device, what)
    reference = _reference(gate, name, model, device) if io.has_head else None
    spec = gate._spec(name, model)

    n, example = _value_example(io, spec, model, train=train, min_batch=min_batch)

    def check() -> None:
        nonlocal model
        model = _fresh(gate, model)
        drawn = example  # until the hooks ran: then fitted to the model they returned
        if maps and io.task in _BATCHED_TASKS:
            # A function of the architecture alone (probes of a meta copy of the as-built model):
            # the model's checks that widen their input share one search.
            side = active_cache().memo(
                ("feature maps", type(gate), name, str(device), drawn.size, drawn.frames),
                lambda: side_for_feature_maps(model, io, spec, drawn, device),
                group=name,
            )
            drawn = dataclasses.replace(drawn, size=(side, side))
        mode = "train" if train else "eval"
        hook = "freeze_backbone" if freeze else "replace_head"
        tail = f"model.{mode}(); outputs = model({io.describe(drawn)})"
        fresh = building.uninitialised_copy(model) if twin else None
        as_built = attribution.Snapshot.of(model) if attribute else None

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
        drawn = tasks.fit_example(drawn, swapped, spec, train=train)
        plan = (
            _plan(gate, name, reference, swapped, trace)
            if reference is not None
            else _Plan.end_to_end(swapped)
        )
        # What the hooks introduced or changed, decided before anything runs the model.
        head = [
            k
            for k, _ in swapped.named_parameters()
            if reference and trace.original(k) in reference.head_names
        ]
        changed = attribution.changed_modules(as_built, swapped, head) if as_built is not None else set()
        if writes == "anything" or (writes == "trainable" and not plan.must_train <= trace.introduced):
            swapped = copy.deepcopy(swapped)
        subject = _Prepared(name, swapped, plan, io, drawn, n, device, gate.norm_policy, fresh)
        start: attribution.Origin | None = None
        try:
            with attribution.recording(swapped, enabled=attribute) as recorder:
                report = run(subject)
            if attribute and report is not None and report.skipped is None and not report.ok:
                start = attribution.origin(recorder, changed)
                if start is None and diverge is not None:
                    with attribution.recording(swapped, keep=True) as recorder:
                        again = run(subject)
                    start = attribution.origin(recorder, changed, diverge) if again and not again.ok else None
        finally:
            # A full backward leaves a model-sized set of gradients on the session's build.
            for parameter in swapped.parameters():
                parameter.grad = None
            del subject, swapped
            return_freed_memory()
        if report is not None and report.skipped is not None:
            import pytest

            pytest.skip(report.skipped)
        if start is not None and start.blames_torch():
            import pytest

            pytest.skip(start.skip_reason(what))
        if start is not None and report is not None:
            hooks = "replace_head or freeze_backbone" if freeze else "replace_head"
            report = dataclasses.replace(report, details=(start.blame(hooks), *report.details))
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
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        report = training.finite_outputs(p.model, inputs, train=False)
        if not report.ok:
            return report
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=True)
        declared = training.declared_without_grad(p.name)
        return training.full_backward(  # the train-mode outputs are judged on the backward's forward
            p.model, inputs, p.io.score, declared_without_grad=declared, judge_outputs=True
        )

    _value_check(
        gate,
        zoo_model_name,
        zoo_device,
        "finite outputs and gradients",
        run,
        freeze=False,
        train=True,
        under=building.uninitialised_as_nan,
        attribute=True,
    )


def state_dict_round_trip(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:
    has_head = tasks.task_io(zoo_model_name).has_head

    def run(p: _Prepared) -> training.CheckReport:
        as_built = p.twin
        assert as_built is not None

        def fresh() -> nn.Module:
            model = building.uninitialised_copy(as_built)
            return _hooked(gate, model, p.n, has_head=has_head, freeze=True)[0]

        if p.io.task in _BATCHED_TASKS:  # one batched tensor in (a detector in train mode wants targets)
            deployment.move_statistics(p.model, p.io.inputs(p.model, p.example, p.n, p.device, train=True))
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        return deployment.state_dict_round_trip(p.model, fresh, inputs)

    _value_check(gate, zoo_model_name, zoo_device, "the state_dict round trip", run, twin=True, maps=True)


def batch_equivalence(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:
    io = tasks.task_io(zoo_model_name)
    if io.task not in _BATCHED_TASKS:
        import pytest

        pytest.skip(f"{io.task} models take a list of inputs, not one batched tensor")

    def run(p: _Prepared) -> training.CheckReport:
        (x, *_), kwargs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        return deployment.batch_equivalence(p.model, x, kwargs=kwargs)

    diverge = attribution.Divergence(attribution.batch_pairs, deployment.BATCH_ATOL, deployment.BATCH_RTOL)
    _value_check(
        gate,
        zoo_model_name,
        zoo_device,
        "batch equivalence",
        run,
        min_batch=2,
        attribute=True,
        diverge=diverge,
        maps=True,
    )


def channels_last_and_autocast(gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device) -> None:

    def run(p: _Prepared) -> training.CheckReport:
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        eager = deployment.EagerForward(p.model, inputs)  # channels_last's reference, autocast's shapes
        report = deployment.channels_last_equivalence(p.model, inputs, eager=eager)
        if not report.ok and report.skipped is None:
            return report
        gap = autocast_gap(p.model, p.device.type)
        if gap is not None:
            return training.CheckReport("autocast", skipped=gap)
        return deployment.precision_forward(p.model, inputs, eager=eager)

    diverge = attribution.Divergence(attribution.layout_pairs, deployment.LAYOUT_TOL, deployment.LAYOUT_TOL)
    _value_check(
        gate,
        zoo_model_name,
        zoo_device,
        "channels_last / autocast",
        run,
        attribute=True,
        diverge=diverge,
        maps=True,
    )


def deploy_methods(cls: type, session: Sequence[str] = ()) -> tuple[str, ...]:
    """What ``test_deployability`` checks for gate class ``cls``: its own ``deploy`` where a class
    below the base declares one (even ``()``), else the session's ``--zoo-deploy``."""
    declared = [klass for klass in cls.__mro__ if "deploy" in vars(klass)]
    return tuple(vars(declared[0])["deploy"]) if len(declared) > 1 else tuple(session)


def deployability(
    gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device, session: Sequence[str] = ()
) -> None:
    methods = deploy_methods(type(gate), session)
    if not methods:
        import pytest

        pytest.skip(
            "deployability is opt-in: set deploy = ('export', 'compile', 'script', 'fx') on the class, "
            "or run with --zoo-deploy=all"
        )
    declared: list[str] = []
    fixed: list[str] = []

    def run(p: _Prepared) -> training.CheckReport | None:
        inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
        for method in methods:
            report = deployment.deployability(p.model, inputs, method)  # type: ignore[arg-type]
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
    # The default hook's model is the builder's default, and a structural run (--zoo-device=meta)
    # has it cached on the meta device already; a gate with a hook of its own builds something else.
    own = not gate._kit_default("build_model")
    built = building.build_model(name, structural=True) if own else gate._model(name, torch.device("meta"))
    classes = _class_count(built)
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
