"""The conformance checks, as a class whose model-building steps are overridable hooks.

:class:`ZooConformance` is the single mechanism behind both the shipped suite (``pytest
--zoo-models=...`` collects a plain subclass of it) and users' own gates: a subclass overrides
``build_model``/``replace_head``/``freeze_backbone`` with their code and inherits every check.

Oracles never come from the code under test: head shapes are compared with torchvision's own
builder called with ``num_classes=n`` (built structurally, on the meta device), and the parameters
that must train are the ones whose shape depends on the class count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from hypothesis import example, given, settings
from torch import nn

from . import building, freezing, heads
from .strategies import batch_sizes, input_sizes, input_spec, num_classes

__all__ = ["ZooConformance", "class_dependent_parameters", "named_outputs"]


def named_outputs(output: object) -> dict[str, torch.Tensor]:
    """Name every class-score tensor a classifier returns: a tensor, a named tuple of them, or a dict."""
    if isinstance(output, torch.Tensor):
        return {"logits": output}
    if isinstance(output, tuple) and hasattr(output, "_asdict"):
        return {k: v for k, v in output._asdict().items() if isinstance(v, torch.Tensor)}
    if isinstance(output, Mapping):
        return {str(k): v for k, v in output.items() if isinstance(v, torch.Tensor)}
    raise TypeError(f"cannot interpret a model output of type {type(output).__qualname__}")


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
    selected model names (``models`` below, intersected with ``--zoo-models`` when given).
    """

    #: fnmatch patterns of the builder names this class checks.
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

    # -- plumbing ------------------------------------------------------------------------------

    def _model(self, name: str, device: torch.device) -> nn.Module:
        return self.build_model(name).to(device)

    def _oracle_shapes(self, name: str, model: nn.Module, n: int) -> dict[str, tuple[int, ...]]:
        if self.builder_oracle:
            return _shapes(building.build_model(name, num_classes=n, structural=True))
        return _shapes(model)

    def _head_names(self, name: str, model: nn.Module) -> set[str]:
        if self.builder_oracle:
            return class_dependent_parameters(
                lambda n: building.build_model(name, num_classes=n, structural=True)
            )
        return class_dependent_parameters(lambda n: self.replace_head(model, n))

    # -- checks --------------------------------------------------------------------------------

    def test_head_matches_builder(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """``replace_head(build(name), n)`` has exactly the state_dict of ``builder(num_classes=n)``."""
        if not self.builder_oracle:
            import pytest

            pytest.skip("builder_oracle = False: no torchvision builder to compare against")
        name = zoo_model_name
        model = self._model(name, zoo_device)

        @zoo_hypothesis_settings
        @given(n=num_classes())
        def check(n: int) -> None:
            swapped = self.replace_head(model, n)
            found, expected = _shapes(swapped), self._oracle_shapes(name, swapped, n)
            _expect(
                found == expected,
                lambda: (
                    f"{name}: replace_head hook with num_classes={n} does not match "
                    f"torchvision's builder(num_classes={n}):\n{_diff_shapes(found, expected)}"
                ),
            )

        check()

    def test_forward_shape(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """Outputs are ``(batch, num_classes)`` in eval mode, and aux outputs too in train mode."""
        name = zoo_model_name
        model = self._model(name, zoo_device)
        spec = input_spec(name)

        @zoo_hypothesis_settings
        @given(
            n=num_classes(),
            batch=batch_sizes(),
            size=input_sizes(spec),
            train_batch=batch_sizes(model, train=True),
            train_size=input_sizes(spec, train=True),
        )
        def check(
            n: int, batch: int, size: tuple[int, int], train_batch: int, train_size: tuple[int, int]
        ) -> None:
            self.replace_head(model, n)
            for mode, b, (h, w) in (("eval", batch, size), ("train", train_batch, train_size)):
                model.train(mode == "train")
                x = torch.randn(b, 3, h, w, device=zoo_device)
                with torch.no_grad():
                    outputs = named_outputs(model(x))
                found = {key: tuple(out.shape) for key, out in outputs.items()}
                expected = {key: (b, n) for key in outputs}
                if found != expected:
                    raise ConformanceFailure(
                        f"{name} in {mode} mode, num_classes={n}, input {tuple(x.shape)}: output shapes "
                        f"{found}, expected {expected} (check the replace_head hook)"
                    )
            model.eval()

        check()

    def test_freeze_counts(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """After freezing, exactly the class-dependent parameters train, and they are the minority."""
        name = zoo_model_name
        model = self._model(name, zoo_device)
        head_names = self._head_names(name, model)
        native = _class_count(model)

        @zoo_hypothesis_settings
        @given(n=num_classes())
        @example(n=native or 1)
        def check(n: int) -> None:
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            self.replace_head(model, n)
            self.freeze_backbone(model)
            params = dict(model.named_parameters())
            trainable = {k for k, p in params.items() if p.requires_grad}
            _expect(
                trainable == head_names,
                lambda: (
                    f"{name}, num_classes={n}: the freeze_backbone hook left the wrong parameters "
                    f"trainable.\n  should train but frozen: {sorted(head_names - trainable)}\n"
                    f"  should be frozen but trainable: {sorted(trainable - head_names)}"
                ),
            )
            counts = freezing.count_parameters(model)
            expected = sum(params[k].numel() for k in head_names)
            _expect(
                counts.trainable == expected and counts.frozen == counts.total - expected,
                lambda: f"{name}, num_classes={n}: counts {counts}, expected {expected:,} trainable",
            )
            # A 10,000-class head can legitimately outweigh a small backbone (mobilenet_v3_small), so
            # the backbone must dominate only up to the class count the architecture was designed for.
            _expect(
                native is None or n > native or counts.frozen > counts.trainable,
                lambda: (
                    f"{name}, num_classes={n}: {counts}; at or below the builder's {native} classes "
                    "a frozen backbone should outweigh its head"
                ),
            )

        check()

    def test_gradients_reach_head_only(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """A backward pass through every output puts ``.grad`` on each head parameter and nowhere else."""
        name = zoo_model_name
        model = self._model(name, zoo_device)
        head_names = self._head_names(name, model)
        spec = input_spec(name)

        @zoo_hypothesis_settings
        @given(n=num_classes(), batch=batch_sizes(model, train=True), size=input_sizes(spec, train=True))
        def check(n: int, batch: int, size: tuple[int, int]) -> None:
            for parameter in model.parameters():
                parameter.requires_grad_(True)
                parameter.grad = None
            self.replace_head(model, n)
            self.freeze_backbone(model)
            model.train()
            outputs = named_outputs(model(torch.randn(batch, 3, *size, device=zoo_device)))
            sum(out.float().sum() for out in outputs.values()).backward()  # type: ignore[union-attr]
            with_grad = {k for k, p in model.named_parameters() if p.grad is not None}
            _expect(
                with_grad == head_names,
                lambda: (
                    f"{name}, num_classes={n}, input {(batch, 3, *size)}, outputs {sorted(outputs)}:\n"
                    f"  head parameters without .grad: {sorted(head_names - with_grad)}\n"
                    f"  backbone parameters with .grad: {sorted(with_grad - head_names)[:10]}"
                ),
            )
            model.eval()

        check()

    def test_default_weights_metadata(self, zoo_model_name: str) -> None:
        """The DEFAULT weights enum describes the model the builder makes; nothing is downloaded."""
        from torchvision.models import get_model_weights

        name = zoo_model_name
        try:
            weights: Any = get_model_weights(name).DEFAULT
        except (AttributeError, ValueError):
            import pytest

            pytest.skip(f"{name} has no DEFAULT weights enum")
        meta = weights.meta
        categories = meta.get("categories")
        classes = _class_count(building.build_model(name, structural=True))
        where = f"{name}: {type(weights).__name__}.{weights.name}.meta"
        _expect(isinstance(categories, list), lambda: f"{where}['categories'] is {categories!r}, not a list")
        _expect(
            len(categories) == len(set(categories)) and all(isinstance(c, str) for c in categories),
            lambda: f"{where}['categories'] are not unique strings",
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


def _class_count(model: nn.Module) -> int | None:
    """Outputs of the model's (first) head layer, or ``None`` for a model with no adapter."""
    adapter = heads.find_adapter(model)
    if adapter is None:
        return None
    head = model.get_submodule(adapter.heads[0])
    return int(getattr(head, "out_features", getattr(head, "out_channels", 0))) or None
