"""The reference a gate's head is judged against: torchvision's builder, or one derived from the hooks.

Also the checks of what has no class head (RAFT) and of a ``quantized_*`` builder's converted model,
and the adoption of an inferred head for a model no adapter knows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..models import building, heads, inference
from ..models.cache import active_cache, builder_oracle
from ..models.freezing import NORM_TYPES, backbone_prefix
from ..models.reference import (
    PROBE,
    Shapes,
    SwapTrace,
    architecture_mismatch,
    class_dependent,
    line_through,
    reference_kwargs,
    state_shapes,
)
from ..zoo.families import find_family
from . import converted
from . import task_io as tasks
from .failures import ConformanceFailure, _expect, hook_origin, render
from .hooks import _context, _fresh, _raises_as_failure, _swap, _swap_steps
from .plan import _Plan, _Reference

if TYPE_CHECKING:
    from .gate import Gate


#: (gate class, model name) -> the test that reported an architecture mismatch, so it fails once.
_MISMATCH_REPORTED: dict[tuple[type, str], str] = {}


def _uses_builder(gate: Gate, name: str) -> bool:
    return gate.builder_oracle and _is_builder(name)


def _reference(gate: Gate, name: str, model: nn.Module, device: torch.device) -> _Reference:
    """The one reference for ``name``, matched to ``model`` (the hook's as-built model), cached.

    With torchvision's builder: built with the configuration read back from ``model``, and
    compared with it first; another architecture under the same name fails here, once,
    instead of every check blaming a hook. Without it: derived from what ``replace_head``
    does at two class counts; a ``replace_head`` that ignores ``num_classes`` fails here,
    blamed on ``replace_head``.
    """
    key = ("reference", type(gate), name, str(device))
    reported = _MISMATCH_REPORTED.get((type(gate), name))
    if reported is not None:
        import pytest

        pytest.skip(f"{name}: its architecture differs from torchvision's {name}; reported by {reported}")
    if _uses_builder(gate, name):
        reference = active_cache().memo(key, lambda: _builder_reference(gate, name, model), group=name)
    else:
        reference = active_cache().memo(key, lambda: _derived_reference(gate, name, model), group=name)
    if isinstance(reference, str):
        from .failures import current_test

        _MISMATCH_REPORTED[(type(gate), name)] = current_test() or "the first check of this model"
        raise ConformanceFailure(reference)
    return reference


def _builder_reference(gate: Gate, name: str, model: nn.Module) -> _Reference | str:
    """torchvision's ``builder(num_classes=n, **configuration of model)``, or why it can't be."""
    kwargs = reference_kwargs(name, model)
    call = ", ".join(["num_classes=n", *(f"{k}={v!r}" for k, v in sorted(kwargs.items()))])
    against = f"torchvision's {name}({call})"
    oracle = builder_oracle(name, kwargs)
    mismatch = architecture_mismatch(state_shapes(model), oracle.shapes(PROBE), oracle.head_keys)
    if mismatch is not None:
        cls = type(gate).__qualname__
        return "\n".join(
            [
                f"{name}: the model build_model returns is not torchvision's {name} architecture, so "
                f"{against} cannot be the reference for its head",
                f"  built by:   build_model -> {hook_origin(gate, 'build_model')}",
                f"  compared:   its state_dict with {against}: " + mismatch.describe(),
                f"  way out:    if this is another network under a torchvision name (another zoo's "
                f"{name}), set builder_oracle = False on {cls} and the checks derive its head from "
                "your replace_head; if it is meant to be torchvision's model, build it with "
                f"torchvision.models.get_model({name!r}, ...).",
            ]
        )
    return _Reference(oracle.shapes, frozenset(oracle.head_keys), frozenset(oracle.head_names), against)


def _derived_reference(gate: Gate, name: str, model: nn.Module) -> _Reference:
    """Head shapes from ``replace_head`` at two class counts; every other size as built.

    Each dimension that changes between the probes follows that line (``n``, ``4 * n`` for
    box regressors, ``n + 1`` with a background class); a dimension that does not change
    keeps the size the as-built model has under that name, so a head with the wrong input
    width still shows.
    """
    built = state_shapes(model)
    probes: list[tuple[Shapes, set[str]]] = []
    for k in (PROBE, PROBE + 1):
        fresh = _fresh(gate, model)
        context = _context(gate, name, "replace_head", n=k, steps=_swap_steps(gate, name, k))
        with _raises_as_failure(gate, context, "replace_head"):
            swapped, trace = _swap(gate, fresh, k)
        shapes = {trace.original(key): shape for key, shape in state_shapes(swapped).items()}
        probes.append((shapes, {trace.original(key) for key, _ in swapped.named_parameters()}))
        _fresh(gate, model)
    (low, low_params), (high, _) = probes
    head_keys = class_dependent(low, high) | (high.keys() ^ low.keys())
    if not head_keys:
        context = _context(gate, name, "replace_head", steps=_swap_steps(gate, name, PROBE))
        raise ConformanceFailure(
            render(
                context,
                f"replace_head(model, {PROBE}) and replace_head(model, {PROBE + 1}) give models of "
                "identical shapes: nothing in them depends on num_classes",
                defects=[
                    "replace_head ignores num_classes: the head it installs must have num_classes "
                    "outputs (nn.Linear(old.in_features, num_classes, ...))"
                ],
            )
        )

    def expected(n: int) -> Shapes:
        shapes: Shapes = {}
        for key, a in low.items():
            b = high.get(key, a)
            if len(a) != len(b):
                continue
            grown = line_through(a, b, n)
            as_built = built.get(key)
            if as_built is not None and len(as_built) == len(a) and a != b:
                grown = tuple(g if x != y else o for g, x, y, o in zip(grown, a, b, as_built, strict=True))
            shapes[key] = grown
        return shapes

    head_names = frozenset(k for k in head_keys if k in low_params)
    return _Reference(expected, frozenset(head_keys), head_names, "the hook-derived oracle")


def _plan(gate: Gate, name: str, reference: _Reference, swapped: nn.Module, trace: SwapTrace) -> _Plan:
    """Which parameters of ``swapped`` must train, and which norm layers are the backbone's.

    The backbone is the model's own backbone module where it has one (:attr:`backbone_module`;
    what was under it as built, :func:`~pytest_zoo.freezing.backbone_prefix`), else everything
    but the head; everything outside it that the hooks kept trains too (a decoder, RPN, ROI heads).
    """
    params = [k for k, _ in swapped.named_parameters()]
    prefix = backbone_prefix(trace.kept.values(), gate.backbone_module)

    def in_backbone(key: str) -> bool:
        return key in trace.kept and (prefix is None or trace.original(key).startswith(prefix))

    head = {k for k in params if not in_backbone(k) or trace.original(k) in reference.head_names}
    declared = {k for k in params if gate.must_train(name, swapped, k)}
    norms: dict[str, nn.Module] = {}
    for path, module in swapped.named_modules():
        own = [f"{path}.{k}" if path else k for k, _ in module.named_parameters(recurse=False)]
        own += [f"{path}.{k}" if path else k for k, _ in module.named_buffers(recurse=False)]
        if isinstance(module, NORM_TYPES) and own and all(in_backbone(k) for k in own):
            norms[path] = module
    affine = frozenset(
        f"{path}.{k}" if path else k for path, m in norms.items() for k, _ in m.named_parameters()
    )
    must = head | declared | (affine if gate.norm_policy.affine == "trainable" else set())
    class_dependent_only = {k for k in params if trace.original(k) in reference.head_names}
    return _Plan(frozenset(must), norms, affine, head_only=must == class_dependent_only, backbone=prefix)


def _aux_heads(gate: Gate, name: str, model: nn.Module) -> tuple[str, ...]:
    family = find_family(name)
    adapter = heads.find_adapter(model)
    found = (family.aux_heads if family else ()) + (adapter.aux_heads if adapter else ())
    return tuple(dict.fromkeys(found))


def _expect_no_head(gate: Gate, name: str, model: nn.Module) -> None:
    """A model without a class head (RAFT): its adapter says so, and the hooks refuse clearly.

    ``replace_head`` and ``freeze_backbone`` must raise :class:`~pytest_zoo.heads.NoHeadError`
    naming the model and leave it untouched, and the builder must not take ``num_classes``.
    """
    adapter = heads.find_adapter(model)
    _expect(
        adapter is not None and bool(adapter.no_head),
        lambda: f"{name}: its task has no class head, but no adapter says so (found {adapter})",
    )
    before = {k: p.requires_grad for k, p in model.named_parameters()}
    hooks: dict[str, Callable[[], object]] = {
        "replace_head": lambda: gate.replace_head(model, 10),
        "freeze_backbone": lambda: gate.freeze_backbone(model),
    }
    for hook, call in hooks.items():
        try:
            call()
        except heads.NoHeadError as error:
            _expect(
                type(model).__qualname__ in str(error),
                lambda error=error, hook=hook: f"{name}: {hook}'s error does not name the model: {error}",  # type: ignore[misc]
            )
        else:
            raise ConformanceFailure(f"{name} has no class head, yet {hook} returned without an error")
    after = {k: p.requires_grad for k, p in model.named_parameters()}
    _expect(before == after, lambda: f"{name}: a refused replace_head/freeze_backbone changed requires_grad")
    if gate.builder_oracle:
        try:
            building.build_model(name, num_classes=3, structural=True)
        except TypeError:
            return
        raise ConformanceFailure(
            f"{name}: the builder now accepts num_classes; the family row says it has no class head. "
            "Give the row its heads."
        )


def _converted(gate: Gate, name: str) -> nn.Module | None:
    """A ``quantized_*`` builder's converted model (``quantize=True``), built once per test, on CPU.

    Conversion needs real values (it calibrates on one image), so it has no structural form. Its
    checks read shapes only, so its initial values are zeros rather than random draws, and it
    calibrates on its smallest legal input rather than 299 x 299 pixels (see
    :func:`~pytest_zoo.models.building.zero_init` and ``small_calibration``).
    """
    if not gate.builder_oracle:
        return None
    if not torch.backends.quantized.supported_engines:
        return None
    with building.zero_init(), building.small_calibration(converted.calibration_side(name)):
        return building.build_model(name, quantize=True, device="cpu")


def _check_converted(gate: Gate, name: str, model: nn.Module, n: int, example: tasks.Example) -> None:
    # The kit built the converted model itself, with its own defaults: so is its reference.
    oracle = builder_oracle(name)
    expected = {k: v for k, v in oracle.shapes(n).items() if k in oracle.head_names}
    side = max(converted.CONVERTED_MIN_SIZE, *example.size)
    example = tasks.Example(min(example.batch, 2), (side, side), None, example.seed)
    steps = [
        f"model = t.replace_head(pytest_zoo.build_model({name!r}, quantize=True), {n}).eval()",
        f"outputs = model(torch.rand{example.shape})",
    ]
    context = _context(gate, name, "replace_head", n=n, shape=example.shape, mode="eval", steps=steps)
    with _raises_as_failure(gate, context, "the converted (quantize=True) model"):
        head, output = converted.converted_quantized_problems(model, n, example, expected, gate.replace_head)
    for report, problem in (
        (head, "the converted model's head does not match the float builder's head for num_classes"),
        (output, "the converted model's output does not have num_classes scores per example"),
    ):
        if not report.ok:
            raise ConformanceFailure(render(context, problem, expected=report.expected, found=report.found))


def _is_builder(name: str) -> bool:
    from torchvision.models import list_models

    return name in list_models()


def _same_design(found: Shapes, expected: Shapes, head_paths: Iterable[str]) -> tuple[Shapes, Shapes, bool]:
    """The head tensors to compare exactly, and whether some head is of the user's own design.

    A head module the swapped model has in the reference's form (the same tensor names under
    that path) is compared exactly. One with other tensors there, or none (a multi-layer head, a
    functional swap), is the user's design: comparing it with the builder's layer would only
    measure whether it was written like torchvision's.
    """
    strict_found: Shapes = {}
    strict_expected: Shapes = {}
    own_design = False
    for path in sorted(head_paths):
        want = {k: v for k, v in expected.items() if k.rpartition(".")[0] == path}
        have = {k: v for k, v in found.items() if k.rpartition(".")[0] == path or k.startswith(path + ".")}
        if have.keys() == want.keys():
            strict_found.update(have)
            strict_expected.update(want)
        else:
            own_design = True
    return strict_found, strict_expected, own_design


def adopt_head(gate: Gate, name: str, model: nn.Module) -> None:
    """The fallback for a class no adapter knows: infer its head, verify it, say so in the report.

    Only when a default hook needs an adapter (a user's own ``replace_head``/``freeze_backbone``
    need none). With the builder oracle, the inference is verified against torchvision's
    ``builder(num_classes=n)`` and a refuted one fails the check; every check that uses an
    inferred head emits a :class:`~pytest_zoo.inference.HeadInferredWarning` (``stacklevel=3``:
    it points at :meth:`ZooConformance._model`, which calls ``_adopt_head``, which calls this).
    """
    cls = type(gate)
    adapter = heads.find_adapter(model)
    if adapter is None:
        build = None
        if gate.builder_oracle and _is_builder(name) and building.takes_num_classes(name):
            build = lambda n: building.build_model(name, num_classes=n, structural=True)  # noqa: E731
        try:
            adapter = inference.adopt(model, build=build, builder=f"torchvision's {name}(num_classes=n)")
        except inference.HeadInferenceError as error:
            if build is None and cls.__module__.startswith("pytest_zoo."):
                return  # nothing inferred: the hooks raise NoAdapterError, the suite skips the model
            if build is None:
                # A user's own gate listed this model on purpose: a skip would pass CI silently.
                try:
                    heads.get_adapter(model)
                except heads.NoAdapterError as missing:
                    raise ConformanceFailure(f"{name}: {missing}\n(inference: {error})") from None
            raise ConformanceFailure(f"{name}: {error}") from None
    if inference.is_inferred(adapter):
        cls_name = type(model).__qualname__
        pin = f"pytest_zoo.register_adapter({cls_name}, heads={list(adapter.heads)!r}"
        pin += f", aux_heads={list(adapter.aux_heads)!r})" if adapter.aux_heads else ")"
        warnings.warn(
            inference.HeadInferredWarning(
                f"{name}: head {adapter.source}. If that is right, pin it: {pin}; if not, register "
                "the right layers the same way (turn this warning into an error to require it)"
            ),
            stacklevel=3,
        )
