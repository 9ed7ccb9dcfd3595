"""The conformance checks, as a class whose model-building steps are overridable hooks.

:class:`ZooConformance` is the single mechanism behind both the shipped suite (``pytest
--zoo-models=...`` collects a plain subclass of it) and users' own gates: a subclass overrides
``build_model``/``replace_head``/``freeze_backbone`` with their code and inherits every check.

Oracles never come from the code under test: head shapes are compared with torchvision's own
builder called with ``num_classes=n`` (built structurally, on the meta device), and the parameters
that must train are the ones whose shape depends on the class count. For architectures with no
builder (``builder_oracle = False``) that set is what ``replace_head`` observably changes between
n and n + 1 classes, so ``freeze_backbone`` is still judged by something other than itself.

Every failure is a :class:`ConformanceFailure` rendered by :mod:`pytest_zoo.failures`: model,
drawn inputs, the hook and where it is defined, expected vs found, the defect, how to reproduce.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from hypothesis import example, given, settings
from torch import nn

from . import building, freezing, heads, inference, strategies, tasks
from .cache import HeadOracle, active_cache
from .failures import FailureContext, exception_defects, hook_origin, parameter_groups, render, shape_defects
from .families import InputSpec, find_family
from .strategies import num_classes
from .tasks import named_outputs

__all__ = ["ZooConformance", "class_dependent_parameters", "named_outputs"]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def class_dependent_parameters(build: Callable[[int], nn.Module], probe: int = 3) -> set[str]:
    """Names of the parameters whose shape changes with the class count: the head, by definition.

    ``build(n)`` must return a model with ``n`` classes; it is called for ``probe`` and ``probe + 1``.
    """
    a = {n: tuple(p.shape) for n, p in build(probe).named_parameters()}
    b = {n: tuple(p.shape) for n, p in build(probe + 1).named_parameters()}
    return {name for name in a if b.get(name) != a[name]}


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


class ZooConformance:
    """Conformance checks for models built from the torchvision zoo.

    Subclass it in a test module named ``Test...``; pytest-zoo parametrizes every check by the
    selected model names (``models`` below, intersected with ``--zoo-models`` when given). To opt
    out of one check, set it to ``None`` in the subclass.
    """

    #: fnmatch patterns of the builder names this class checks; a plain name torchvision does not
    #: know is kept as given, for a ``build_model`` hook that builds a model of your own.
    models: ClassVar[Iterable[str]] = ("*",)
    #: Whether torchvision's builder (``num_classes=n``) is a valid oracle for your models; switch it
    #: off for architectures of your own, and the checks derive head shapes from your hooks instead.
    builder_oracle: ClassVar[bool] = True

    # -- hooks: override these with your own model-building code -------------------------------

    def build_model(self, name: str) -> nn.Module:
        """Build the model under test, with its original head."""
        return building.build_model(name)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Swap the head for ``num_classes`` outputs and return the model."""
        return heads.replace_head(model, num_classes)

    def freeze_backbone(self, model: nn.Module) -> None:
        """Leave exactly the head trainable."""
        freezing.freeze_backbone(model)

    def input_spec(self, name: str) -> InputSpec:
        """The input geometry ``name`` accepts: the family table's row, else any size from 1.

        Override it for an architecture of your own whose inputs are constrained (a fixed size, a
        multiple of a patch size); the checks draw every input from it.
        """
        return strategies.input_spec(name)

    # -- plumbing ------------------------------------------------------------------------------

    def _model(self, name: str, device: torch.device) -> nn.Module:
        """The ``build_model`` hook's model for ``name``: built once per session, handed out as built.

        Every check of a model shares one build (see :mod:`pytest_zoo.cache`). On the meta device
        the hook runs under :func:`~pytest_zoo.building.structural_init`, so any hook, the default
        or a user's, builds structurally: no weight is allocated or initialised.
        """

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

    def _builder_oracle(self, name: str) -> HeadOracle:
        """torchvision's ``builder(num_classes=n)`` as a shape oracle, built structurally, cached."""
        return active_cache().oracle(
            ("builder", name),
            lambda n: building.build_model(name, num_classes=n, structural=True),
            group=name,
        )

    def _oracle_shapes(self, name: str, model: nn.Module) -> Callable[[int], dict[str, tuple[int, ...]]]:
        """Expected state_dict shapes for ``n`` classes, from an oracle that is not the code under test.

        Builder oracle: torchvision's ``builder(num_classes=n)``. Without it: the model as built,
        where each dimension that ``replace_head`` changes between ``probe`` and ``probe + 1``
        classes follows that line (``n``, ``4 * n`` for box regressors, ``n + 1`` with a background
        class) and every other dimension keeps its as-built size, so a head with the wrong input
        width still shows.
        """
        if self.builder_oracle:
            return self._builder_oracle(name).shapes
        probe = 3
        original = _shapes(model)
        low = _shapes(self.replace_head(copy.deepcopy(model), probe))
        high = _shapes(self.replace_head(copy.deepcopy(model), probe + 1))

        def expected(n: int) -> dict[str, tuple[int, ...]]:
            shapes = dict(original)
            for key, built in original.items():
                a, b = low.get(key), high.get(key)
                if a is None or b is None or a == b or not (len(a) == len(b) == len(built)):
                    continue
                grow = zip(a, b, built, strict=True)
                shapes[key] = tuple(x + (y - x) * (n - probe) if x != y else o for x, y, o in grow)
            return shapes

        return expected

    def _head_names(self, name: str, model: nn.Module) -> set[str]:
        """The parameters that must train: those whose shape follows the class count.

        With the builder oracle they come from torchvision's builder. Without it they come from
        what the ``replace_head`` hook observably does to copies of the model for n and n + 1,
        never from what the ``freeze_backbone`` hook claims, so a freeze can still be wrong.
        """
        if self.builder_oracle:
            return self._builder_oracle(name).head_names
        return class_dependent_parameters(lambda n: self.replace_head(copy.deepcopy(model), n))

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
        reproduce = [*imports, f"from {type(self).__module__} import {cls}", f"t = {cls}()", *steps]
        reproduce = reproduce if steps else []
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
        oracle = self._builder_oracle(name)
        expected = {k: v for k, v in oracle.shapes(n).items() if k in oracle.head_names}
        side = max(tasks.CONVERTED_MIN_SIZE, *example.size)
        example = tasks.Example(min(example.batch, 2), (side, side), None, example.seed)
        steps = [
            f"model = t.replace_head(pytest_zoo.build_model({name!r}, quantize=True), {n}).eval()",
            f"outputs = model(torch.rand{example.shape})",
        ]
        context = self._context(name, "replace_head", n=n, shape=example.shape, mode="eval", steps=steps)
        with self._raises_as_failure(context, "the converted (quantize=True) model"):
            head, output = tasks.converted_quantized_problems(model, n, example, expected, self.replace_head)
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
        """``replace_head(build(name), n)`` has exactly the state_dict of ``builder(num_classes=n)``.

        Needs torchvision's builder as the oracle; with ``builder_oracle = False`` the expected
        shapes are derived from the hooks instead (see :meth:`_oracle_shapes`).
        """
        name = zoo_model_name
        model = self._model(name, zoo_device)
        io = tasks.task_io(name)
        if not io.has_head:
            self._expect_no_head(name, model)
            return
        oracle = self._oracle_shapes(name, model)
        aux = self._aux_heads(name, model)
        against = f"torchvision's {name}(num_classes=n)" if self.builder_oracle else "the hook-derived oracle"

        @zoo_hypothesis_settings
        @given(n=io.num_classes())
        def check(n: int) -> None:
            nonlocal model
            model = self._fresh(model)
            steps = [f"model = t.replace_head(t.build_model({name!r}), {n})"]
            context = self._context(name, "replace_head", n=n, steps=steps)
            with self._raises_as_failure(context, "replace_head"):
                swapped = self.replace_head(model, n)
            found, expected = _shapes(swapped), oracle(n)
            if found != expected:
                raise ConformanceFailure(
                    render(
                        context,
                        f"the model's state_dict after replace_head differs from {against}",
                        details=["differences (expected vs found):", _diff_shapes(found, expected)],
                        defects=shape_defects(found, expected, n, aux),
                    )
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
        spec = self.input_spec(name)
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
            if io.has_head:
                with self._raises_as_failure(self._context(name, "replace_head", n=n), "replace_head"):
                    self.replace_head(model, n)
            for mode, drawn in (("eval", eval_example), ("train", train_example)):
                train = mode == "train"
                model.train(train)
                args, kwargs = io.inputs(model, drawn, n, zoo_device, train=train)
                swap = (
                    f"t.replace_head(t.build_model({name!r}), {n})"
                    if io.has_head
                    else f"t.build_model({name!r})"
                )
                steps = [f"model = {swap}.{mode}()", f"outputs = model({io.describe(drawn)})"]
                context = self._context(name, "replace_head", n=n, shape=drawn.shape, mode=mode, steps=steps)
                with self._raises_as_failure(context, "the forward pass"), torch.no_grad():
                    output = model(*args, **kwargs)
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
            model.eval()
            if converted is not None:
                self._check_converted(name, converted, n, eval_example)

        check()

    def test_freeze_counts(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """After freezing, exactly the class-dependent parameters train, and they are the minority."""
        name = zoo_model_name
        model = self._model(name, zoo_device)
        io = tasks.task_io(name)
        if not io.has_head:
            self._expect_no_head(name, model)
            return
        head_names = self._head_names(name, model)
        native = _class_count(model)
        # shufflenet_v2_x0_5 as built: a 1,025,000-element head on a 341,792-element backbone. Where
        # the architecture itself is head-heavy, "the backbone outweighs the head" is no invariant.
        sizes = {k: p.numel() for k, p in model.named_parameters()}
        head_heavy = sum(sizes[k] for k in head_names if k in sizes) * 2 >= sum(sizes.values())

        @zoo_hypothesis_settings
        @given(n=io.num_classes())
        @example(n=max(native or 1, io.min_classes))
        def check(n: int) -> None:
            nonlocal model
            model = self._fresh(model)
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            steps = [
                f"model = t.replace_head(t.build_model({name!r}), {n}); t.freeze_backbone(model)",
                "print(sorted(k for k, p in model.named_parameters() if p.requires_grad))",
            ]
            context = self._context(name, "freeze_backbone", n=n, steps=steps)
            with self._raises_as_failure(context, "replace_head, then freeze_backbone,"):
                self.replace_head(model, n)
                self.freeze_backbone(model)
            params = dict(model.named_parameters())
            trainable = {k for k, p in params.items() if p.requires_grad}
            if trainable != head_names:
                raise ConformanceFailure(
                    render(
                        context,
                        "the wrong parameters are trainable after freeze_backbone",
                        expected=f"exactly the {len(head_names)} class-dependent parameters trainable",
                        found=f"{len(trainable)} trainable",
                        details=[
                            "should train but frozen: "
                            + ("; ".join(parameter_groups(model, head_names - trainable)) or "none"),
                            "should be frozen but trainable: "
                            + ("; ".join(parameter_groups(model, trainable - head_names)) or "none"),
                        ],
                        defects=_freeze_defects(model, trainable, head_names),
                    )
                )
            counts = freezing.count_parameters(model)
            expected = sum(params[k].numel() for k in head_names)
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
            # the backbone must dominate only up to the class count the architecture was designed for.
            _expect(
                native is None or n > native or head_heavy or counts.frozen > counts.trainable,
                lambda: (
                    f"{name}, num_classes={n}: {counts}; at or below the builder's {native} classes "
                    "a frozen backbone should outweigh its head"
                ),
            )

        check()

    def test_gradients_reach_head_only(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """A backward pass through every output puts ``.grad`` on each head parameter and nowhere else.

        Detectors are run in train mode with generated targets and the sum of their losses is
        backpropagated. A model without a class head (RAFT) trains end to end instead: the flow's
        backward pass must reach every parameter.
        """
        name = zoo_model_name
        model = self._model(name, zoo_device)
        io = tasks.task_io(name)
        head_names = (
            self._head_names(name, model) if io.has_head else {k for k, _ in model.named_parameters()}
        )
        spec = self.input_spec(name)

        @zoo_hypothesis_settings
        @given(n=io.num_classes(), drawn=io.examples(spec, model, train=True))
        def check(n: int, drawn: tasks.Example) -> None:
            nonlocal model
            model = self._fresh(model)
            for parameter in model.parameters():
                parameter.requires_grad_(True)
                parameter.grad = None
            shape = drawn.shape
            steps = [
                f"model = t.replace_head(t.build_model({name!r}), {n}); t.freeze_backbone(model)",
                f"model.train(); outputs = model({io.describe(drawn)})  # then backward() through them all",
            ]
            context = self._context(name, "freeze_backbone", n=n, shape=shape, mode="train", steps=steps)
            with self._raises_as_failure(context, "replace_head, freeze_backbone, forward and backward"):
                if io.has_head:
                    self.replace_head(model, n)
                    self.freeze_backbone(model)
                model.train()
                args, kwargs = io.inputs(model, drawn, n, zoo_device, train=True)
                output = model(*args, **kwargs)
                io.score(output).backward()  # type: ignore[no-untyped-call]
            outputs = sorted(output) if isinstance(output, Mapping) else [type(output).__name__]
            with_grad = {k for k, p in model.named_parameters() if p.grad is not None}
            if with_grad != head_names:
                raise ConformanceFailure(
                    render(
                        context,
                        f"a backward pass through the outputs {outputs} reached the wrong parameters",
                        expected=f".grad on exactly the {len(head_names)} class-dependent parameters",
                        found=f".grad on {len(with_grad)}",
                        details=[
                            "head parameters without .grad: "
                            + ("; ".join(parameter_groups(model, head_names - with_grad)) or "none"),
                            "backbone parameters with .grad: "
                            + ("; ".join(parameter_groups(model, with_grad - head_names)) or "none"),
                        ],
                        defects=_freeze_defects(model, with_grad, head_names),
                    )
                )
            model.eval()

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
        model = copy.deepcopy(self._model(name, zoo_device)).to(torch.float64)  # the build is shared

        @zoo_hypothesis_settings
        @given(n=num_classes(max_value=1_000))
        def check(n: int) -> None:
            steps = [
                f"model = t.replace_head(t.build_model({name!r}).to(torch.float64), {n})",
                "print({k: (p.dtype, p.device) for k, p in model.named_parameters()})",
            ]
            context = self._context(name, "replace_head", n=n, steps=steps)
            with self._raises_as_failure(context, "replace_head"):
                swapped = self.replace_head(model, n)
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


def _is_builder(name: str) -> bool:
    from torchvision.models import list_models

    return name in list_models()


def _freeze_defects(model: nn.Module, trainable: set[str], head: set[str]) -> list[str]:
    defects = []
    owners = {k: k.rpartition(".")[0] for k in trainable - head}
    norms = sorted(
        k for k, owner in owners.items() if isinstance(_module(model, owner), nn.modules.batchnorm._BatchNorm)
    )
    if norms:
        defects.append(
            f"{len(norms)} BatchNorm affine parameters (weight/bias) are still trainable: set "
            "requires_grad=False on every backbone parameter, not only on conv/linear weights"
        )
    if trainable - head and len(norms) < len(trainable - head):
        defects.append("backbone parameters other than BatchNorm are trainable: freeze_backbone missed them")
    if head - trainable:
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
    outputs = int(getattr(head, "out_features", getattr(head, "out_channels", 0)))
    return outputs // adapter.multiple(path) or None
