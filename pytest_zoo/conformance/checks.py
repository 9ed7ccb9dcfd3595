"""The conformance checks, as a class whose model-building steps are overridable hooks.

:class:`ZooConformance` is the single mechanism behind both the shipped suite (``pytest
--zoo-models=...`` collects a plain subclass of it) and users' own gates: a subclass overrides
``build_model``/``replace_head``/``freeze_backbone`` with their code and inherits every check.

A gate judges what the user's code must guarantee, never whether it matches how the kit would
have written it. So the reference is matched to the user's own as-built model
(:mod:`pytest_zoo.reference`): only the class-dependent part of the expected model comes from
torchvision's builder (or, for architectures of your own, from what ``replace_head`` does at two
class counts), everything else is the user's model as built. The model ``replace_head`` returns
is the model every check goes on with. The parameters that must train after
``freeze_backbone`` are the class-dependent ones, every parameter ``replace_head`` introduced
(a multi-layer head trains whole), whatever the class declares in :attr:`ZooConformance.trainable`,
and the backbone's normalisation parameters when :attr:`ZooConformance.norm_policy` says so.

Every failure is a :class:`ConformanceFailure` rendered by :mod:`pytest_zoo.failures`: model,
drawn inputs, the hook and where it is defined, expected vs found, the defect, how to reproduce.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from hypothesis import example, given, settings
from torch import nn

from ..models import building, freezing, heads, inference
from ..models.cache import active_cache, return_freed_memory
from ..models.freezing import NORM_TYPES, NormPolicy
from ..models.reference import (
    PROBE,
    HeadOracle,
    Shapes,
    SwapTrace,
    architecture_mismatch,
    class_dependent,
    class_dependent_parameters,
    line_through,
    reference_kwargs,
    state_shapes,
    tensor_names,
    trace_swap,
)
from ..zoo.families import InputSpec, find_family
from . import converted, deployment, strategies, training
from . import task_io as tasks
from .failures import FailureContext, exception_defects, hook_origin, parameter_groups, render, shape_defects
from .strategies import num_classes
from .task_io import named_outputs

__all__ = [
    "ConformanceFailure",
    "NormPolicy",
    "ZooConformance",
    "class_dependent_parameters",
    "named_outputs",
]


def _diff_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    lines = [f"  missing: {k} {expected[k]}" for k in sorted(expected.keys() - found.keys())]
    lines += [f"  unexpected: {k} {found[k]}" for k in sorted(found.keys() - expected.keys())]
    lines += [
        f"  {k}: expected {expected[k]}, found {found[k]}"
        for k in sorted(found.keys() & expected.keys())
        if found[k] != expected[k]
    ]
    return "\n".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")


class ConformanceFailure(AssertionError):
    """A check failed; the message says which model, which inputs, which hook, expected vs found."""


def _expect(condition: bool, message: Callable[[], str]) -> None:
    if not condition:
        raise ConformanceFailure(message())


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

#: (gate class, model name) -> the test that reported an architecture mismatch, so it fails once.
_MISMATCH_REPORTED: dict[tuple[type, str], str] = {}


class ZooConformance:
    """Conformance checks for models built from the torchvision zoo.

    Subclass it in a test module named ``Test...``; pytest-zoo parametrizes every check by the
    selected model names (``models`` below, intersected with ``--zoo-models`` when given). To opt
    out of one check, set it to ``None`` in the subclass.
    """

    #: fnmatch patterns of the builder names this class checks; a plain name torchvision does not
    #: know is kept as given, for a ``build_model`` hook that builds a model of your own.
    models: ClassVar[Iterable[str]] = ("*",)
    #: Whether torchvision's builder (``num_classes=n``) is the reference for your models' heads.
    #: Names torchvision has no builder for always use the hook-derived reference; switch this off
    #: for networks of your own under torchvision names (another zoo's ``efficientnet_b0``).
    builder_oracle: ClassVar[bool] = True
    #: What your ``freeze_backbone`` does with the backbone's normalisation layers; the freeze
    #: checks verify exactly this (``NormPolicy(affine="trainable")`` for a ``train_bn`` recipe,
    #: ``NormPolicy(stats="frozen")`` for one whose running statistics must not move).
    norm_policy: ClassVar[NormPolicy] = NormPolicy()
    #: fnmatch patterns of parameter names (as the model ``replace_head`` returns spells them)
    #: that must train besides the head the kit sees, e.g. ``("layer4.*",)`` for a recipe that
    #: fine-tunes the last stage too. Override :meth:`must_train` for anything a pattern can't say.
    trainable: ClassVar[Sequence[str]] = ()
    #: The deployment paths :meth:`test_deployability` checks: any of ``"export"``, ``"compile"``,
    #: ``"script"``, ``"fx"``. Empty by default: deployability is the most expensive check.
    deploy: ClassVar[Sequence[deployment.Method]] = ()
    #: The zoo name of the model being checked, set before any hook runs, so hooks that need the
    #: architecture (a per-architecture cut point) need not tag the model.
    model_name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Deployability is opt-in: the check exists in the classes that name what to deploy.
        if cls.deploy and "test_deployability" not in vars(cls):
            cls.test_deployability = cls._check_deployability  # type: ignore[attr-defined]

    # -- hooks: override these with your own model-building code -------------------------------

    def build_model(self, name: str) -> nn.Module:
        """Build the model under test, with its original head."""
        return building.build_model(name)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Swap the head for ``num_classes`` outputs and return the model to use from now on.

        In place or functional: the checks go on with the returned model (``None`` means the
        swap was in place), so ``nn.Sequential(body, new_head)`` reusing the body is fine.
        """
        return heads.replace_head(model, num_classes)

    def freeze_backbone(self, model: nn.Module) -> None:
        """Leave exactly the head (and what :attr:`norm_policy` says) trainable."""
        policy = self.norm_policy
        freezing.freeze_backbone(model, norm_stats=policy.stats, norm_affine=policy.affine)

    def input_spec(self, name: str) -> InputSpec:
        """The input geometry ``name`` accepts: the family table's row, else any size from 1.

        Override it for an architecture of your own whose inputs are constrained (a fixed size, a
        multiple of a patch size); the checks draw every input from it. The default follows the
        model your ``build_model`` built: a ViT built at 224 gets 224x224 inputs.
        """
        return strategies.input_spec(name)

    def must_train(self, name: str, model: nn.Module, parameter: str) -> bool:
        """Whether ``parameter`` of ``model`` (as ``replace_head`` returned it) must train although
        the kit does not see it as head: by default, whether it matches :attr:`trainable`."""
        return any(fnmatch.fnmatchcase(parameter, pattern) for pattern in self.trainable)

    # -- plumbing ------------------------------------------------------------------------------

    def _model(self, name: str, device: torch.device) -> nn.Module:
        """The ``build_model`` hook's model for ``name``: built once per session, handed out as built.

        Every check of a model shares one build (see :mod:`pytest_zoo.cache`). On the meta device
        the hook runs under :func:`~pytest_zoo.building.structural_init`, so any hook, the default
        or a user's, builds structurally: no weight is allocated or initialised.
        """
        self.model_name = name

        def build() -> nn.Module:
            if device.type != "meta":
                return self.build_model(name).to(device)
            with building.structural_init():
                return self.build_model(name).to(device)

        model = active_cache().get((type(self), name, str(device)), build, group=name)
        self._adopt_head(name, model)
        return model

    def _adopt_head(self, name: str, model: nn.Module) -> None:
        """The fallback for a class no adapter knows: infer its head, verify it, say so in the report.

        Only when a default hook needs an adapter (a user's own ``replace_head``/``freeze_backbone``
        need none). With the builder oracle, the inference is verified against torchvision's
        ``builder(num_classes=n)`` and a refuted one fails the check; every check that uses an
        inferred head emits a :class:`~pytest_zoo.inference.HeadInferredWarning`.
        """
        cls = type(self)
        if cls.replace_head is not ZooConformance.replace_head and cls.freeze_backbone is not (
            ZooConformance.freeze_backbone
        ):
            return
        adapter = heads.find_adapter(model)
        if adapter is None:
            build = None
            if self.builder_oracle and _is_builder(name) and building.takes_num_classes(name):
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
                stacklevel=2,
            )

    def _fresh(self, model: nn.Module) -> nn.Module:
        """``model`` back in its as-built state (head, flags, buffers, hooks) for the next example.

        Use the returned model: a model whose weights were changed in place is rebuilt instead.
        """
        return active_cache().restore(model)

    def _spec(self, name: str, model: nn.Module) -> InputSpec:
        """The ``input_spec`` hook's geometry; the default one follows the model as built."""
        if type(self).input_spec is ZooConformance.input_spec:
            return strategies.input_spec(name, model)
        return self.input_spec(name)

    def _uses_builder(self, name: str) -> bool:
        return self.builder_oracle and _is_builder(name)

    def _swap(self, model: nn.Module, n: int) -> tuple[nn.Module, SwapTrace]:
        """Run the ``replace_head`` hook; the model it returns, and what it kept and introduced."""
        before = tensor_names(model)
        returned = self.replace_head(model, n)
        self._swapped_in_place = returned is None
        if returned is not None and not isinstance(returned, nn.Module):
            raise TypeError(
                f"replace_head returned {type(returned).__qualname__}, not an nn.Module: return the model "
                "to use from now on (or None after an in-place swap)"
            )
        swapped = model if returned is None else returned
        return swapped, trace_swap(before, swapped)

    def _freeze(self, model: nn.Module) -> nn.Module:
        """Run the ``freeze_backbone`` hook; a hook that returns a model hands that one on."""
        returned: object = self.freeze_backbone(model)  # type: ignore[func-returns-value]
        return returned if isinstance(returned, nn.Module) else model

    def _hooked(
        self, model: nn.Module, n: int, *, has_head: bool, freeze: bool
    ) -> tuple[nn.Module, SwapTrace]:
        """``replace_head`` (then ``freeze_backbone``) on ``model``, as the checks that train run
        them; a model without a class head (RAFT) is used as it is."""
        if not has_head:
            return model, trace_swap(tensor_names(model), model)
        swapped, trace = self._swap(model, n)
        return (self._freeze(swapped) if freeze else swapped), trace

    def _swap_steps(self, name: str, n: int, *, freeze: bool = False, tail: str = "") -> list[str]:
        """The reproduce lines that rebuild what a check ran, as the hooks were actually used."""
        if getattr(self, "_swapped_in_place", False):
            lines = [f"model = t.build_model({name!r}); t.replace_head(model, {n})"]
        else:
            lines = [f"model = t.replace_head(t.build_model({name!r}), {n})"]
        if freeze:
            lines[0] += "; t.freeze_backbone(model)"
        return [*lines, tail] if tail else lines

    def _reference(self, name: str, model: nn.Module, device: torch.device) -> _Reference:
        """The one reference for ``name``, matched to ``model`` (the hook's as-built model), cached.

        With torchvision's builder: built with the configuration read back from ``model``, and
        compared with it first; another architecture under the same name fails here, once,
        instead of every check blaming a hook. Without it: derived from what ``replace_head``
        does at two class counts; a ``replace_head`` that ignores ``num_classes`` fails here,
        blamed on ``replace_head``.
        """
        key = ("reference", type(self), name, str(device))
        reported = _MISMATCH_REPORTED.get((type(self), name))
        if reported is not None:
            import pytest

            pytest.skip(f"{name}: its architecture differs from torchvision's {name}; reported by {reported}")
        if self._uses_builder(name):
            reference = active_cache().memo(key, lambda: self._builder_reference(name, model), group=name)
        else:
            reference = active_cache().memo(key, lambda: self._derived_reference(name, model), group=name)
        if isinstance(reference, str):
            from .failures import current_test

            _MISMATCH_REPORTED[(type(self), name)] = current_test() or "the first check of this model"
            raise ConformanceFailure(reference)
        return reference

    def _builder_reference(self, name: str, model: nn.Module) -> _Reference | str:
        """torchvision's ``builder(num_classes=n, **configuration of model)``, or why it can't be."""
        kwargs = reference_kwargs(name, model)
        call = ", ".join(["num_classes=n", *(f"{k}={v!r}" for k, v in sorted(kwargs.items()))])
        against = f"torchvision's {name}({call})"
        oracle = _builder_oracle(name, kwargs)
        mismatch = architecture_mismatch(state_shapes(model), oracle.shapes(PROBE), oracle.head_keys)
        if mismatch is not None:
            cls = type(self).__qualname__
            return "\n".join(
                [
                    f"{name}: the model build_model returns is not torchvision's {name} architecture, so "
                    f"{against} cannot be the reference for its head",
                    f"  built by:   build_model -> {hook_origin(self, 'build_model')}",
                    f"  compared:   its state_dict with {against}: " + mismatch.describe(),
                    f"  way out:    if this is another network under a torchvision name (another zoo's "
                    f"{name}), set builder_oracle = False on {cls} and the checks derive its head from "
                    "your replace_head; if it is meant to be torchvision's model, build it with "
                    f"torchvision.models.get_model({name!r}, ...).",
                ]
            )
        return _Reference(oracle.shapes, frozenset(oracle.head_keys), frozenset(oracle.head_names), against)

    def _derived_reference(self, name: str, model: nn.Module) -> _Reference:
        """Head shapes from ``replace_head`` at two class counts; every other size as built.

        Each dimension that changes between the probes follows that line (``n``, ``4 * n`` for
        box regressors, ``n + 1`` with a background class); a dimension that does not change
        keeps the size the as-built model has under that name, so a head with the wrong input
        width still shows.
        """
        built = state_shapes(model)
        probes: list[tuple[Shapes, set[str]]] = []
        for k in (PROBE, PROBE + 1):
            fresh = self._fresh(model)
            context = self._context(name, "replace_head", n=k, steps=self._swap_steps(name, k))
            with self._raises_as_failure(context, "replace_head"):
                swapped, trace = self._swap(fresh, k)
            shapes = {trace.original(key): shape for key, shape in state_shapes(swapped).items()}
            probes.append((shapes, {trace.original(key) for key, _ in swapped.named_parameters()}))
            self._fresh(model)
        (low, low_params), (high, _) = probes
        head_keys = class_dependent(low, high) | (high.keys() ^ low.keys())
        if not head_keys:
            context = self._context(name, "replace_head", steps=self._swap_steps(name, PROBE))
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
                    grown = tuple(
                        g if x != y else o for g, x, y, o in zip(grown, a, b, as_built, strict=True)
                    )
                shapes[key] = grown
            return shapes

        head_names = frozenset(k for k in head_keys if k in low_params)
        return _Reference(expected, frozenset(head_keys), head_names, "the hook-derived oracle")

    def _plan(self, name: str, reference: _Reference, swapped: nn.Module, trace: SwapTrace) -> _Plan:
        """Which parameters of ``swapped`` must train, and which norm layers are the backbone's."""
        params = [k for k, _ in swapped.named_parameters()]
        head = {k for k in params if k in trace.introduced or trace.original(k) in reference.head_names}
        declared = {k for k in params if self.must_train(name, swapped, k)}
        norms: dict[str, nn.Module] = {}
        for path, module in swapped.named_modules():
            own = [f"{path}.{k}" if path else k for k, _ in module.named_parameters(recurse=False)]
            own += [f"{path}.{k}" if path else k for k, _ in module.named_buffers(recurse=False)]
            if isinstance(module, NORM_TYPES) and own and all(k in trace.kept for k in own):
                norms[path] = module
        affine = frozenset(
            f"{path}.{k}" if path else k for path, m in norms.items() for k, _ in m.named_parameters()
        )
        must = head | declared | (affine if self.norm_policy.affine == "trainable" else set())
        class_dependent_only = {k for k in params if trace.original(k) in reference.head_names}
        return _Plan(frozenset(must), norms, affine, head_only=must == class_dependent_only)

    def _aux_heads(self, name: str, model: nn.Module) -> tuple[str, ...]:
        family = find_family(name)
        adapter = heads.find_adapter(model)
        found = (family.aux_heads if family else ()) + (adapter.aux_heads if adapter else ())
        return tuple(dict.fromkeys(found))

    def _context(
        self,
        name: str,
        hook: str,
        *,
        n: int | None = None,
        shape: tuple[int, ...] | None = None,
        mode: str | None = None,
        steps: Sequence[str] = (),
    ) -> FailureContext:
        cls = type(self).__qualname__.split(".")[0]
        imports = ["import torch"] if any("torch." in step for step in steps) else []
        setup = [f"from {type(self).__module__} import {cls}", f"t = {cls}(); t.model_name = {name!r}"]
        reproduce = [*imports, *setup, *steps] if steps else []
        origin = hook_origin(self, hook)
        return FailureContext(name, hook, origin, n, shape, mode, reproduce)

    @contextlib.contextmanager
    def _raises_as_failure(self, context: FailureContext, step: str) -> Iterator[None]:
        """Turn an exception from a hook or a forward pass into a failure with the full context."""
        try:
            yield
        except ConformanceFailure:
            raise
        except Exception as error:
            problem = f"{step} raised {type(error).__name__}: {error}"
            raise ConformanceFailure(render(context, problem, defects=exception_defects(error))) from error

    def _expect_no_head(self, name: str, model: nn.Module) -> None:
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
            "replace_head": lambda: self.replace_head(model, 10),
            "freeze_backbone": lambda: self.freeze_backbone(model),
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
        _expect(
            before == after, lambda: f"{name}: a refused replace_head/freeze_backbone changed requires_grad"
        )
        if self.builder_oracle:
            try:
                building.build_model(name, num_classes=3, structural=True)
            except TypeError:
                return
            raise ConformanceFailure(
                f"{name}: the builder now accepts num_classes; the family row says it has no class head. "
                "Give the row its heads."
            )

    def _converted(self, name: str) -> nn.Module | None:
        """A ``quantized_*`` builder's converted model (``quantize=True``), built once per test, on CPU.

        Conversion needs real values (it calibrates on one image), so it has no structural form.
        """
        if not self.builder_oracle:
            return None
        if not torch.backends.quantized.supported_engines:
            return None
        return building.build_model(name, quantize=True, device="cpu")

    def _check_converted(self, name: str, model: nn.Module, n: int, example: tasks.Example) -> None:
        # The kit built the converted model itself, with its own defaults: so is its reference.
        oracle = _builder_oracle(name, {})
        expected = {k: v for k, v in oracle.shapes(n).items() if k in oracle.head_names}
        side = max(converted.CONVERTED_MIN_SIZE, *example.size)
        example = tasks.Example(min(example.batch, 2), (side, side), None, example.seed)
        steps = [
            f"model = t.replace_head(pytest_zoo.build_model({name!r}, quantize=True), {n}).eval()",
            f"outputs = model(torch.rand{example.shape})",
        ]
        context = self._context(name, "replace_head", n=n, shape=example.shape, mode="eval", steps=steps)
        with self._raises_as_failure(context, "the converted (quantize=True) model"):
            head, output = converted.converted_quantized_problems(
                model, n, example, expected, self.replace_head
            )
        for report, problem in (
            (head, "the converted model's head does not match the float builder's head for num_classes"),
            (output, "the converted model's output does not have num_classes scores per example"),
        ):
            if not report.ok:
                raise ConformanceFailure(
                    render(context, problem, expected=report.expected, found=report.found)
                )

    # -- checks --------------------------------------------------------------------------------

    def test_head_matches_builder(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """After ``replace_head(model, n)`` every head layer has the reference's shapes at ``n``.

        A head layer the model keeps in the reference's form (``fc`` replaced by one Linear, an
        aux head left where it was) must match ``builder(num_classes=n)`` exactly, which catches
        an aux head left alone or a hard-coded ``in_features``. A head of your own design (several
        layers, a functional ``nn.Sequential(body, head)``) is judged by what it must do instead:
        something in it follows ``num_classes``. Without a builder (``builder_oracle = False``)
        the reference is derived from the hooks (see :meth:`_derived_reference`).
        """
        name = zoo_model_name
        model = self._model(name, zoo_device)
        io = tasks.task_io(name)
        if not io.has_head:
            self._expect_no_head(name, model)
            return
        reference = self._reference(name, model, zoo_device)
        aux = self._aux_heads(name, model)

        @zoo_hypothesis_settings
        @given(n=io.num_classes())
        def check(n: int) -> None:
            nonlocal model
            model = self._fresh(model)
            context = self._context(name, "replace_head", n=n, steps=self._swap_steps(name, n))
            with self._raises_as_failure(context, "replace_head"):
                swapped, trace = self._swap(model, n)
            context = self._context(name, "replace_head", n=n, steps=self._swap_steps(name, n))
            found = {trace.original(key): shape for key, shape in state_shapes(swapped).items()}
            found, expected, own_design = _same_design(found, reference.shapes(n), reference.head_paths())
            if found != expected:
                raise ConformanceFailure(
                    render(
                        context,
                        f"the model's state_dict after replace_head differs from {reference.against}",
                        details=["differences (expected vs found):", _diff_shapes(found, expected)],
                        defects=shape_defects(found, expected, n, aux),
                    )
                )
            if own_design and self._uses_builder(name):
                # Its own head design: the hook-derived reference proves that it follows n.
                active_cache().memo(
                    ("derived", type(self), name, str(zoo_device)),
                    lambda: self._derived_reference(name, model),
                    group=name,
                )

        check()

    def test_forward_shape(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """Outputs have the task's shape for ``num_classes`` in eval and train mode (aux outputs too).

        Classification and video: ``(batch, n)``; segmentation: ``(batch, n, H, W)`` for ``out`` and
        ``aux``; detection: one dict per image with ``labels`` in ``[0, n)`` in eval mode and finite
        losses for generated targets in train mode; optical flow: ``(batch, 2, H, W)`` flows. A
        ``quantized_*`` builder's converted model (``quantize=True``, CPU) is checked too.
        """
        name = zoo_model_name
        model = self._model(name, zoo_device)
        spec = self._spec(name, model)
        aux = self._aux_heads(name, model)
        io = tasks.task_io(name)
        converted = self._converted(name) if io.task == "quantized" else None

        @zoo_hypothesis_settings
        @given(
            n=io.num_classes(),
            eval_example=io.examples(spec),
            train_example=io.examples(spec, model, train=True),
        )
        def check(n: int, eval_example: tasks.Example, train_example: tasks.Example) -> None:
            nonlocal model
            model = self._fresh(model)
            swapped = model
            if io.has_head:
                with self._raises_as_failure(self._context(name, "replace_head", n=n), "replace_head"):
                    swapped, _ = self._swap(model, n)
            for mode, drawn in (("eval", eval_example), ("train", train_example)):
                train = mode == "train"
                swapped.train(train)
                args, kwargs = io.inputs(swapped, drawn, n, zoo_device, train=train)
                built = self._swap_steps(name, n)[0] if io.has_head else f"model = t.build_model({name!r})"
                steps = [f"{built}; model.{mode}()", f"outputs = model({io.describe(drawn)})"]
                context = self._context(name, "replace_head", n=n, shape=drawn.shape, mode=mode, steps=steps)
                with self._raises_as_failure(context, "the forward pass"), torch.no_grad():
                    output = swapped(*args, **kwargs)
                report = io.check(output, drawn, n, train=train)
                if not report.ok:
                    raise ConformanceFailure(
                        render(
                            context,
                            "; ".join(report.problems)
                            or f"an output does not have the shape a {io.task} model with {n} classes gives",
                            expected=report.expected,
                            found=report.found,
                            defects=_output_defects(report.found, n, aux) if io.class_scores else [],
                        )
                    )
            swapped.eval()
            if converted is not None:
                self._check_converted(name, converted, n, eval_example)

        check()

    def test_freeze_counts(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """After freezing, exactly the parameters that must train do, and the backbone outweighs a
        plain class head.

        What must train: the class-dependent parameters, everything ``replace_head`` introduced,
        what the class declares (:attr:`trainable`, :meth:`must_train`), and the backbone's
        normalisation parameters when :attr:`norm_policy` keeps them trainable.
        """
        name = zoo_model_name
        model = self._model(name, zoo_device)
        io = tasks.task_io(name)
        if not io.has_head:
            self._expect_no_head(name, model)
            return
        reference = self._reference(name, model, zoo_device)
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
            model = self._fresh(model)
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            context = self._context(
                name, "freeze_backbone", n=n, steps=self._swap_steps(name, n, freeze=True)
            )
            with self._raises_as_failure(context, "replace_head, then freeze_backbone,"):
                swapped, trace = self._swap(model, n)
                swapped = self._freeze(swapped)
            tail = "print(sorted(k for k, p in model.named_parameters() if p.requires_grad))"
            context = self._context(
                name, "freeze_backbone", n=n, steps=self._swap_steps(name, n, freeze=True, tail=tail)
            )
            plan = self._plan(name, reference, swapped, trace)
            params = dict(swapped.named_parameters())
            trainable = {k for k, p in params.items() if p.requires_grad}
            if trainable != plan.must_train:
                raise ConformanceFailure(
                    render(
                        context,
                        "the wrong parameters are trainable after freeze_backbone",
                        expected=f"exactly the {len(plan.must_train)} parameters that must train "
                        f"({_describe_policy(self.norm_policy)})",
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

        check()

    def test_gradients_reach_head_only(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """A backward pass through every output puts ``.grad`` on exactly the parameters that must train.

        Detectors are run in train mode with generated targets and the sum of their losses is
        backpropagated. A model without a class head (RAFT) trains end to end instead: the flow's
        backward pass must reach every parameter. When :attr:`norm_policy` declares running
        statistics frozen, that same train-mode forward must leave every backbone normalisation
        buffer as it was (``num_batches_tracked`` included).
        """
        name = zoo_model_name
        model = self._model(name, zoo_device)
        io = tasks.task_io(name)
        reference = self._reference(name, model, zoo_device) if io.has_head else None
        spec = self._spec(name, model)
        stats_frozen = self.norm_policy.stats == "frozen" and zoo_device.type != "meta"

        @zoo_hypothesis_settings
        @given(n=io.num_classes(), drawn=io.examples(spec, model, train=True))
        def check(n: int, drawn: tasks.Example) -> None:
            nonlocal model
            model = self._fresh(model)
            for parameter in model.parameters():
                parameter.requires_grad_(True)
                parameter.grad = None
            shape = drawn.shape
            train = (
                f"model.train(); outputs = model({io.describe(drawn)})  # then backward() through them all"
            )
            steps = self._swap_steps(name, n, freeze=True, tail=train)
            context = self._context(name, "freeze_backbone", n=n, shape=shape, mode="train", steps=steps)
            with self._raises_as_failure(context, "replace_head, freeze_backbone, forward and backward"):
                swapped, trace = self._hooked(model, n, has_head=io.has_head, freeze=True)
                must = (
                    self._plan(name, reference, swapped, trace)
                    if reference is not None
                    else _Plan.end_to_end(swapped)
                )
                before = _norm_buffers(must.norms, clone=True) if stats_frozen else {}
                swapped.train()
                args, kwargs = io.inputs(swapped, drawn, n, zoo_device, train=True)
                output = swapped(*args, **kwargs)
                io.score(output).backward()  # type: ignore[no-untyped-call]
            outputs = sorted(output) if isinstance(output, Mapping) else [type(output).__name__]
            with_grad = {k for k, p in swapped.named_parameters() if p.grad is not None}
            if with_grad != must.must_train:
                raise ConformanceFailure(
                    render(
                        context,
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
                        context,
                        f"the running statistics of {len(layers)} backbone normalisation layers moved during "
                        "one train-mode forward",
                        expected=f"{_describe_policy(self.norm_policy)}: every backbone running_mean, "
                        "running_var and num_batches_tracked unchanged in train mode",
                        found="moved: " + ", ".join(moved[:6]) + (", ..." if len(moved) > 6 else ""),
                        defects=[_STATS_MOVED],
                    )
                )
            swapped.eval()

        check()

    def test_replace_head_keeps_dtype_and_device(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """The new head is created where the model lives: same dtype, same device.

        The model is converted to float64 first, so a head built with ``nn.Linear(...)``'s float32
        default shows even on a CPU-only CI machine; on a GPU runner the device is checked too.
        """
        name = zoo_model_name
        if not tasks.task_io(name).has_head:
            self._expect_no_head(name, self._model(name, zoo_device))
            return
        # The build is shared, and only the dtype the new head gets is read: a float64 twin whose
        # weights are uninitialised memory, not a converted copy (vit_h_14: 5 GB).
        model = building.uninitialised_copy(self._model(name, zoo_device), dtype=torch.float64)

        @zoo_hypothesis_settings
        @given(n=num_classes(max_value=1_000))
        def check(n: int) -> None:
            context = self._context(name, "replace_head", n=n)
            with self._raises_as_failure(context, "replace_head"):
                swapped, _ = self._swap(model, n)
            built = f"t.build_model({name!r})"
            swap = self._swap_steps(name, n)[0].replace(built, f"{built}.to(torch.float64)")
            steps = [swap, "print({k: (p.dtype, p.device) for k, p in model.named_parameters()})"]
            context = self._context(name, "replace_head", n=n, steps=steps)
            tensors = [*swapped.named_parameters(), *swapped.named_buffers()]
            wrong = {
                k: f"{t.dtype} on {t.device}"
                for k, t in tensors
                if t.is_floating_point() and (t.dtype != torch.float64 or not _on(t, zoo_device))
            }
            if wrong:
                raise ConformanceFailure(
                    render(
                        context,
                        f"replace_head made {len(wrong)} tensors with another dtype or device than the model",
                        expected=f"torch.float64 on {zoo_device}, like the rest of the model",
                        found=", ".join(f"{k}: {v}" for k, v in sorted(wrong.items())[:6]),
                        defects=[
                            "the new head is not created on the old head's dtype/device: build it with "
                            "nn.Linear(old.in_features, num_classes, device=old.weight.device, "
                            "dtype=old.weight.dtype)"
                        ],
                    )
                )

        check()

    # -- value checks: the fine-tuned model trains, reloads, batches and deploys ----------------

    def _value_check(
        self,
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
        model = self._model(name, device)
        io = tasks.task_io(name)
        if device.type == "meta":
            import pytest

            pytest.skip(
                f"{what} needs tensor values, which --zoo-device=meta does not have; run it with "
                "--zoo-device=cpu (or cuda)"
            )
        reference = self._reference(name, model, device) if io.has_head else None
        spec = self._spec(name, model)

        n, drawn = _value_example(io, spec, model, train=train, min_batch=min_batch)

        def check() -> None:
            nonlocal model
            model = self._fresh(model)
            mode = "train" if train else "eval"
            hook = "freeze_backbone" if freeze else "replace_head"
            tail = f"model.{mode}(); outputs = model({io.describe(drawn)})"
            fresh = building.uninitialised_copy(model) if twin else None

            def context() -> FailureContext:
                # The reproduce lines follow how the hooks were used (an in-place swap or not).
                steps = self._swap_steps(name, n, freeze=freeze, tail=tail) if io.has_head else []
                return self._context(name, hook, n=n, shape=drawn.shape, mode=mode, steps=steps)

            with (
                self._raises_as_failure(
                    context(), "replace_head, then freeze_backbone," if freeze else "replace_head"
                ),
                under(),
            ):
                swapped, trace = self._hooked(model, n, has_head=io.has_head, freeze=freeze)
            plan = (
                self._plan(name, reference, swapped, trace)
                if reference is not None
                else _Plan.end_to_end(swapped)
            )
            if writes == "anything" or (writes == "trainable" and not plan.must_train <= trace.introduced):
                swapped = copy.deepcopy(swapped)
            subject = _Prepared(name, swapped, plan, io, drawn, n, device, self.norm_policy, fresh)
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

    def test_training_step(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """One SGD step (momentum, weight decay, over all of ``model.parameters()``) after
        ``model.train()``: every parameter that must train moves, every other one is bit-identical,
        and under ``NormPolicy(stats="frozen")`` no backbone running statistic moves."""

        def run(p: _Prepared) -> training.CheckReport:
            frozen = list(p.plan.norms) if p.policy.stats == "frozen" else []
            inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=True)
            return training.training_step(
                p.model, inputs, p.io.score, must_train=p.plan.must_train, frozen_norm_modules=frozen
            )

        self._value_check(
            zoo_model_name, zoo_device, "the training step", run, train=True, writes="trainable"
        )

    def test_finite_outputs_and_backward(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """After ``replace_head`` the model holds no NaN (a head from ``torch.empty`` is NaN here),
        its eval and train outputs are finite, and with nothing frozen every parameter gets a finite
        gradient (timm's ``test_model_backward``)."""

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

        self._value_check(
            zoo_model_name,
            zoo_device,
            "finite outputs and gradients",
            run,
            freeze=False,
            train=True,
            under=building.uninitialised_as_nan,
        )

    def test_state_dict_round_trip(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """The fine-tuned ``state_dict`` saved to a file, loaded with ``weights_only=True`` into a fresh
        model made by the same hooks, with ``strict=True``: no missing or unexpected key (a wrapper
        prefix is named), identical eval outputs."""
        has_head = tasks.task_io(zoo_model_name).has_head

        def run(p: _Prepared) -> training.CheckReport:
            as_built = p.twin
            assert as_built is not None

            def fresh() -> nn.Module:
                model = building.uninitialised_copy(as_built)
                return self._hooked(model, p.n, has_head=has_head, freeze=True)[0]

            inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
            return deployment.state_dict_round_trip(p.model, fresh, inputs)

        self._value_check(zoo_model_name, zoo_device, "the state_dict round trip", run, twin=True)

    def test_batch_equivalence(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """In eval mode each sample's output in a batch equals its output alone (transformers'
        ``test_batching_equivalence`` tolerance): a head that mixes samples fails."""
        io = tasks.task_io(zoo_model_name)
        if io.task not in _BATCHED_TASKS:
            import pytest

            pytest.skip(f"{io.task} models take a list of inputs, not one batched tensor")

        def run(p: _Prepared) -> training.CheckReport:
            (x, *_), kwargs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
            return deployment.batch_equivalence(p.model, x, kwargs=kwargs)

        self._value_check(zoo_model_name, zoo_device, "batch equivalence", run, min_batch=2)

    def test_channels_last_and_autocast(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """A channels_last model and input reproduce the eager output (a ``.view`` head breaks
        there), and a forward under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA) is finite
        with the float32 shapes (a head that cannot take the autocast dtype breaks there)."""

        def run(p: _Prepared) -> training.CheckReport:
            inputs = p.io.inputs(p.model, p.example, p.n, p.device, train=False)
            report = deployment.channels_last_equivalence(p.model, inputs)
            if not report.ok and report.skipped is None:
                return report
            return deployment.precision_forward(p.model, inputs)

        self._value_check(zoo_model_name, zoo_device, "channels_last / autocast", run)

    def _check_deployability(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """``torch.export``, ``torch.compile(backend="eager")``, ``torch.jit.script`` and
        ``torch.fx.symbolic_trace`` of the eval model reproduce eager outputs. Collected as
        ``test_deployability`` only in classes that opt in with :attr:`deploy` (it is the most
        expensive check); declared exceptions are strict xfails."""
        methods = tuple(self.deploy)
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

        self._value_check(zoo_model_name, zoo_device, "deployability", run, writes="anything")
        if fixed:
            raise ConformanceFailure(
                f"{zoo_model_name}: declared not deployable, but it deploys now: "
                f"{'; '.join(sorted(set(fixed)))}. Remove its row from "
                "pytest_zoo.deployment.DEPLOY_EXCEPTIONS."
            )
        if declared:
            import pytest

            pytest.xfail(f"{zoo_model_name}: declared: " + "; ".join(sorted(set(declared))))

    def test_default_weights_metadata(self, zoo_model_name: str) -> None:
        """The DEFAULT weights enum describes the model the builder makes; nothing is downloaded."""
        name = zoo_model_name
        if not self.builder_oracle:
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
        _expect(
            isinstance(recipe, str) and recipe.startswith("http"), lambda: f"{where}['recipe'] is {recipe!r}"
        )
        _expect(callable(weights.transforms), lambda: f"{where}: transforms is not callable")
        _expect(callable(weights.transforms()), lambda: f"{where}: transforms() did not return a callable")


def _builder_oracle(name: str, kwargs: Mapping[str, Any]) -> HeadOracle:
    """torchvision's ``name(num_classes=n, **kwargs)`` as a shape oracle, built structurally, cached."""
    return active_cache().oracle(
        ("builder", name, repr(sorted(kwargs.items()))),
        lambda n: building.build_model(name, num_classes=n, structural=True, **kwargs),
        group=name,
    )


def _is_builder(name: str) -> bool:
    from torchvision.models import list_models

    return name in list_models()


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
