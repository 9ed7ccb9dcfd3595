"""The shape checks of :class:`~pytest_zoo.conformance.checks.ZooConformance`.

Head, forward, freeze, gradients, dtype.

Each function is the body of the ``test_*`` method of the same name, taking the gate instance;
the method (its docstring says what it checks) stays on the class, where pytest collects it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from hypothesis import example, given, settings

from ..models import building, freezing
from ..models.cache import active_cache
from ..models.reference import state_shapes
from . import scheduled
from . import task_io as tasks
from .defects import (
    TRAIN_SHAPES_HERE,
    _bias_defects,
    _bias_mismatches,
    _class_count,
    _describe_policy,
    _diff_shapes,
    _freeze_defects,
    _layer_types,
    _norm_buffers,
    _on,
    expect_output_shapes,
)
from .failures import ConformanceFailure, FailureContext, _expect, parameter_groups, render, shape_defects
from .hooks import _context, _freeze, _fresh, _hooked, _raises_as_failure, _swap, _swap_steps, run_examples
from .oracle import (
    _aux_heads,
    _check_converted,
    _converted,
    _derived_reference,
    _expect_no_head,
    _plan,
    _reference,
    _same_design,
    _uses_builder,
)
from .plan import _STATS_MOVED, _Plan
from .strategies import num_classes

if TYPE_CHECKING:
    from .checks import ZooConformance


def gradient_check_runs(cls: type, name: str, device: torch.device) -> bool:
    """Whether this session's gradient check of ``cls`` for ``name`` (the kit's own: neither opted
    out with ``None`` nor overridden, which the gate asks) asserts the train-mode output shapes on
    its forward, so that :func:`forward_shape` runs eval mode only: :mod:`.scheduled` is sure it
    runs here. Not on the meta device for a task whose verdict reads values (detection losses,
    RAFT's flows): the gradient check would skip for want of them."""
    return (device.type != "meta" or tasks.task_io(name).class_scores) and scheduled.will_run(
        cls, name, "test_gradients_reach_head_only"
    )


def head_matches_builder(
    gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
) -> None:
    name = zoo_model_name
    model = gate._model(name, zoo_device)
    io = tasks.task_io(name)
    if not io.has_head:
        _expect_no_head(gate, name, model)
        return
    reference = _reference(gate, name, model, zoo_device)
    aux = _aux_heads(gate, name, model)
    built = _layer_types(model, reference.head_paths())

    @zoo_hypothesis_settings
    @given(n=io.num_classes())
    def check(n: int) -> None:
        nonlocal model
        model = _fresh(gate, model)
        context = _context(gate, name, "replace_head", n=n, steps=_swap_steps(gate, name, n))
        with _raises_as_failure(gate, context, "replace_head"):
            swapped, trace = _swap(gate, model, n)
        context = _context(gate, name, "replace_head", n=n, steps=_swap_steps(gate, name, n))
        found = {trace.original(key): shape for key, shape in state_shapes(swapped).items()}
        expected = reference.shapes(n)
        judged, wrong = _bias_mismatches(swapped, built, found, expected, gate.head_bias)
        if wrong:
            raise ConformanceFailure(
                render(
                    context,
                    f"a head layer of the builder's type, at the builder's place, differs in its bias "
                    f"from {reference.against}",
                    expected={p: f"bias={not has}" for p, has in sorted(wrong.items())},
                    found={p: f"bias={has}" for p, has in sorted(wrong.items())},
                    defects=_bias_defects(wrong, built, gate.head_bias, type(gate).__qualname__),
                )
            )
        # Biases were judged above (as the builder's, or as declared): the rest compares as built.
        bias = {f"{path}.bias" for path in judged}
        found = {k: v for k, v in found.items() if k not in bias}
        expected = {k: v for k, v in expected.items() if k not in bias}
        found, expected, own_design = _same_design(found, expected, reference.head_paths())
        if found != expected:
            raise ConformanceFailure(
                render(
                    context,
                    f"the model's state_dict after replace_head differs from {reference.against}",
                    details=["differences (expected vs found):", _diff_shapes(found, expected)],
                    defects=shape_defects(found, expected, n, aux),
                )
            )
        if own_design and _uses_builder(gate, name):
            # Its own head design: the hook-derived reference proves that it follows n.
            active_cache().memo(
                ("derived", type(gate), name, str(zoo_device)),
                lambda: _derived_reference(gate, name, model),
                group=name,
            )

    run_examples(check)


def forward_shape(
    gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
) -> None:
    name = zoo_model_name
    model = gate._model(name, zoo_device)
    spec = gate._spec(name, model)
    aux = _aux_heads(gate, name, model)
    io = tasks.task_io(name)
    converted = _converted(gate, name) if io.task == "quantized" else None
    # The gradient check runs a train-mode forward per example anyway and asserts these shapes on
    # it; a second, no-grad one here is needed only where that check will not run this session.
    modes = ("eval",) if gate._train_shapes_checked_elsewhere(name, zoo_device) else ("eval", "train")

    @zoo_hypothesis_settings
    @given(
        n=io.num_classes(),
        eval_example=io.examples(spec),
        train_example=io.examples(spec, model, train=True),
    )
    def check(n: int, eval_example: tasks.Example, train_example: tasks.Example) -> None:
        nonlocal model
        model = _fresh(gate, model)
        swapped = model
        if io.has_head:
            with _raises_as_failure(gate, _context(gate, name, "replace_head", n=n), "replace_head"):
                swapped, _ = _swap(gate, model, n)
        for mode in modes:
            train = mode == "train"
            drawn = tasks.fit_example(train_example if train else eval_example, swapped, spec, train=train)
            swapped.train(train)
            args, kwargs = io.inputs(swapped, drawn, n, zoo_device, train=train)
            built = _swap_steps(gate, name, n)[0] if io.has_head else f"model = t.build_model({name!r})"
            steps = [f"{built}; model.{mode}()", f"outputs = model({io.describe(drawn)})"]
            context = _context(gate, name, "replace_head", n=n, shape=drawn.shape, mode=mode, steps=steps)
            with _raises_as_failure(gate, context, "the forward pass"), torch.no_grad():
                output = swapped(*args, **kwargs)
            expect_output_shapes(io, output, drawn, n, aux, context, train=train)
        swapped.eval()
        if converted is not None:
            _check_converted(gate, name, converted, n, eval_example)

    run_examples(check)


def freeze_counts(
    gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
) -> None:
    name = zoo_model_name
    model = gate._model(name, zoo_device)
    io = tasks.task_io(name)
    if not io.has_head:
        _expect_no_head(gate, name, model)
        return
    reference = _reference(gate, name, model, zoo_device)
    native = _class_count(model)
    # shufflenet_v2_x0_5 as built: a 1,025,000-element head on a 341,792-element backbone. Where
    # the architecture itself is head-heavy, "the backbone outweighs the head" is no invariant.
    sizes = {k: p.numel() for k, p in model.named_parameters()}
    head_heavy = sum(sizes[k] for k in reference.head_names if k in sizes) * 2 >= sum(sizes.values())

    @zoo_hypothesis_settings
    @given(n=io.num_classes())
    @example(n=max(native or 1, io.min_classes))
    def check(n: int) -> None:
        nonlocal model
        model = _fresh(gate, model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        context = _context(gate, name, "freeze_backbone", n=n, steps=_swap_steps(gate, name, n, freeze=True))
        with _raises_as_failure(gate, context, "replace_head, then freeze_backbone,"):
            swapped, trace = _swap(gate, model, n)
            swapped = _freeze(gate, swapped)
        tail = "print(sorted(k for k, p in model.named_parameters() if p.requires_grad))"
        context = _context(
            gate, name, "freeze_backbone", n=n, steps=_swap_steps(gate, name, n, freeze=True, tail=tail)
        )
        plan = _plan(gate, name, reference, swapped, trace)
        params = dict(swapped.named_parameters())
        trainable = {k for k, p in params.items() if p.requires_grad}
        if trainable != plan.must_train:
            raise ConformanceFailure(
                render(
                    context,
                    "the wrong parameters are trainable after freeze_backbone",
                    expected=f"exactly the {len(plan.must_train)} parameters that must train "
                    f"({_describe_policy(gate.norm_policy)})",
                    found=f"{len(trainable)} trainable",
                    details=[
                        "should train but frozen: "
                        + ("; ".join(parameter_groups(swapped, plan.must_train - trainable)) or "none"),
                        "should be frozen but trainable: "
                        + ("; ".join(parameter_groups(swapped, trainable - plan.must_train)) or "none"),
                    ],
                    defects=_freeze_defects(trainable, plan, trace),
                )
            )
        counts = freezing.count_parameters(swapped)
        expected = sum(params[k].numel() for k in plan.must_train)
        _expect(
            counts.trainable == expected and counts.frozen == counts.total - expected,
            lambda: render(
                context,
                "trainable/frozen element counts are off (a parameter shared between head and backbone?)",
                expected=f"{expected:,} trainable",
                found=str(counts),
            ),
        )
        # A 10,000-class head can legitimately outweigh a small backbone (mobilenet_v3_small), so
        # the backbone must dominate only up to the class count the architecture was designed for,
        # and only for a head that is the class-dependent layers alone (a head of your own
        # design may be as large as you like).
        _expect(
            not plan.head_only
            or native is None
            or n > native
            or head_heavy
            or counts.frozen > counts.trainable,
            lambda: (
                f"{name}, num_classes={n}: {counts}; at or below the builder's {native} classes "
                "a frozen backbone should outweigh its head"
            ),
        )

    run_examples(check)


def gradients_reach_head_only(
    gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
) -> None:
    name = zoo_model_name
    model = gate._model(name, zoo_device)
    io = tasks.task_io(name)
    reference = _reference(gate, name, model, zoo_device) if io.has_head else None
    spec = gate._spec(name, model)
    stats_frozen = gate.norm_policy.stats == "frozen" and zoo_device.type != "meta"
    # test_forward_shape leaves the train-mode output shapes to this forward when this test runs.
    train_shapes = gate._train_shapes_checked_elsewhere(name, zoo_device)
    aux = _aux_heads(gate, name, model) if train_shapes else ()

    @zoo_hypothesis_settings
    @given(n=io.num_classes(), drawn=io.examples(spec, model, train=True))
    def check(n: int, drawn: tasks.Example) -> None:
        nonlocal model
        model = _fresh(gate, model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
            parameter.grad = None

        def context() -> FailureContext:
            train = (
                f"model.train(); outputs = model({io.describe(drawn)})  # then backward() through them all"
            )
            steps = _swap_steps(gate, name, n, freeze=True, tail=train)
            return _context(gate, name, "freeze_backbone", n=n, shape=drawn.shape, mode="train", steps=steps)

        with _raises_as_failure(gate, context(), "replace_head, then freeze_backbone,"):
            swapped, trace = _hooked(gate, model, n, has_head=io.has_head, freeze=True)
        drawn = tasks.fit_example(drawn, swapped, spec, train=True)
        with _raises_as_failure(gate, context(), "replace_head, freeze_backbone, forward and backward"):
            must = (
                _plan(gate, name, reference, swapped, trace)
                if reference is not None
                else _Plan.end_to_end(swapped)
            )
            before = _norm_buffers(must.norms, clone=True) if stats_frozen else {}
            swapped.train()
            args, kwargs = io.inputs(swapped, drawn, n, zoo_device, train=True)
            output = swapped(*args, **kwargs)
            if train_shapes:
                forward = f"model.train(); outputs = model({io.describe(drawn)})"
                steps = _swap_steps(gate, name, n, freeze=True, tail=forward)
                where = _context(
                    gate, name, "replace_head", n=n, shape=drawn.shape, mode="train", steps=steps
                )
                expect_output_shapes(io, output, drawn, n, aux, where, train=True, details=TRAIN_SHAPES_HERE)
            io.score(output).backward()  # type: ignore[no-untyped-call]
        outputs = sorted(output) if isinstance(output, Mapping) else [type(output).__name__]
        with_grad = {k for k, p in swapped.named_parameters() if p.grad is not None}
        if with_grad != must.must_train:
            raise ConformanceFailure(
                render(
                    context(),
                    f"a backward pass through the outputs {outputs} reached the wrong parameters",
                    expected=f".grad on exactly the {len(must.must_train)} parameters that must train",
                    found=f".grad on {len(with_grad)}",
                    details=[
                        "parameters that must train without .grad: "
                        + ("; ".join(parameter_groups(swapped, must.must_train - with_grad)) or "none"),
                        "backbone parameters with .grad: "
                        + ("; ".join(parameter_groups(swapped, with_grad - must.must_train)) or "none"),
                    ],
                    defects=_freeze_defects(with_grad, must, trace),
                )
            )
        after = _norm_buffers(must.norms, clone=False)
        moved = sorted(k for k, value in before.items() if not torch.equal(value, after[k]))
        if moved:
            layers = sorted({k.rpartition(".")[0] for k in moved})
            raise ConformanceFailure(
                render(
                    context(),
                    f"the running statistics of {len(layers)} backbone normalisation layers moved during "
                    "one train-mode forward",
                    expected=f"{_describe_policy(gate.norm_policy)}: every backbone running_mean, "
                    "running_var and num_batches_tracked unchanged in train mode",
                    found="moved: " + ", ".join(moved[:6]) + (", ..." if len(moved) > 6 else ""),
                    defects=[_STATS_MOVED],
                )
            )
        swapped.eval()

    run_examples(check)


def replace_head_keeps_dtype_and_device(
    gate: ZooConformance, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
) -> None:
    name = zoo_model_name
    if not tasks.task_io(name).has_head:
        _expect_no_head(gate, name, gate._model(name, zoo_device))
        return
    # The build is shared, and only the dtype the new head gets is read: a float64 twin whose
    # weights are uninitialised memory, not a converted copy (vit_h_14: 5 GB).
    model = building.uninitialised_copy(gate._model(name, zoo_device), dtype=torch.float64)

    @zoo_hypothesis_settings
    @given(n=num_classes(max_value=1_000))
    def check(n: int) -> None:
        context = _context(gate, name, "replace_head", n=n)
        with _raises_as_failure(gate, context, "replace_head"):
            swapped, trace = _swap(gate, model, n)
        built = f"t.build_model({name!r})"
        swap = _swap_steps(gate, name, n)[0].replace(built, f"{built}.to(torch.float64)")
        steps = [swap, "print({k: (p.dtype, p.device) for k, p in model.named_parameters()})"]
        context = _context(gate, name, "replace_head", n=n, steps=steps)
        tensors = [
            (k, t)
            for k, t in [*swapped.named_parameters(), *swapped.named_buffers()]
            if t.is_floating_point()
        ]
        # A rebuilt model (a factory called again) owes the float64 twin nothing; it owes itself one
        # dtype throughout, and the device the checks run on.
        dtypes = Counter(t.dtype for _, t in tensors).most_common(1)
        dtype = dtypes[0][0] if trace.rebuilt and dtypes else torch.float64
        wrong = {
            k: f"{t.dtype} on {t.device}" for k, t in tensors if t.dtype != dtype or not _on(t, zoo_device)
        }
        if wrong:
            whole = "the rest of the rebuilt model" if trace.rebuilt else "the rest of the model"
            raise ConformanceFailure(
                render(
                    context,
                    f"replace_head made {len(wrong)} tensors with another dtype or device than the model",
                    expected=f"{dtype} on {zoo_device}, like {whole}",
                    found=", ".join(f"{k}: {v}" for k, v in sorted(wrong.items())[:6]),
                    defects=[
                        "the new head is not created on the old head's dtype/device: build it with "
                        "nn.Linear(old.in_features, num_classes, device=old.weight.device, "
                        "dtype=old.weight.dtype)"
                    ],
                )
            )

    run_examples(check)
