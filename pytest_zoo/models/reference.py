"""The one reference a user's model is judged against, and the one class-dependence probe.

A gate must judge *the user's* model, not the model the kit would have built. So the reference is
matched to the user's as-built model before anything is compared: the build configuration that
changes parameter shapes without changing the architecture (ViT's ``image_size``, GoogLeNet's
``aux_logits``, a segmentation model's ``aux_loss``) is read back from that model
(:func:`reference_kwargs`), and torchvision's builder is asked for exactly that configuration.
Only the class-dependent part of the expected model comes from the builder; everything else is
the user's own model as built. When the two still differ beyond the head, the model is another
architecture under a torchvision name (another zoo's ``efficientnet_b0``), and
:func:`architecture_mismatch` says so once, instead of every check blaming a hook.

The class-dependence probe lives here, once: build for ``probe`` and ``probe + 1`` classes, and
the tensors whose shape changed are the head, by definition. The checks, the model cache's
:class:`HeadOracle`, head inference and the weights checks all call :func:`probe` /
:func:`class_dependent`.

Which parameters a ``replace_head`` hook introduced is decided by identity, not by name
(:func:`trace_swap`): a functional head swap returns ``nn.Sequential(body, head)`` whose names
all differ from the original's, yet its body's parameters are the original objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..zoo.families import find_family

__all__ = [
    "ArchitectureMismatch",
    "HeadOracle",
    "Shapes",
    "SwapTrace",
    "architecture_mismatch",
    "class_dependent",
    "class_dependent_parameters",
    "parameter_shapes",
    "probe",
    "reference_kwargs",
    "state_bytes",
    "state_shapes",
    "trace_swap",
]

Shapes = dict[str, tuple[int, ...]]

#: The class counts every probe builds with: small enough to be cheap, never a real class count.
PROBE = 3


def state_bytes(state: Mapping[str, object]) -> int:
    """The bytes of the tensors in ``state``: what ``torch.save`` writes of it, pickling aside."""
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, Tensor))


def state_shapes(model: nn.Module) -> Shapes:
    """``state_dict`` shapes: what a checkpoint of ``model`` holds.

    Read from the modules' own tables where ``state_dict`` would do nothing else with them: it
    detaches every tensor, one operator call each, and every check asks for these shapes after
    every swap (a tenth of a structural sweep went there). A module that customises its saving
    (hooks, ``_save_to_state_dict``, extra state: quantized layers, user code) gets the real thing.
    """
    shapes: Shapes = {}
    modules: list[tuple[str, nn.Module]] = [("", model)]
    while modules:
        prefix, module = modules.pop()
        if not _plain_state(module):
            return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        for name, parameter in module._parameters.items():
            if parameter is not None:
                shapes[prefix + name] = tuple(parameter.shape)
        skipped = module._non_persistent_buffers_set
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in skipped:
                shapes[prefix + name] = tuple(buffer.shape)
        children = [
            (f"{prefix}{name}.", child) for name, child in module._modules.items() if child is not None
        ]
        modules.extend(reversed(children))  # depth first, in state_dict's order
    return shapes


def _plain_state(module: nn.Module) -> bool:
    """Whether ``module.state_dict`` only lists its parameters and persistent buffers, then its children's."""
    cls = type(module)
    return (
        cls.state_dict is nn.Module.state_dict
        and cls._save_to_state_dict is nn.Module._save_to_state_dict
        and cls.get_extra_state is nn.Module.get_extra_state
        and not module._state_dict_hooks
        and not getattr(module, "_state_dict_pre_hooks", None)
    )


def parameter_shapes(model: nn.Module) -> Shapes:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def class_dependent(low: Mapping[str, tuple[int, ...]], high: Mapping[str, tuple[int, ...]]) -> set[str]:
    """Names in ``low`` whose shape differs in ``high`` (the probe at one more class)."""
    return {name for name, shape in low.items() if high.get(name) != shape}


def probe(
    build: Callable[[int], nn.Module],
    shapes: Callable[[nn.Module], Shapes] = parameter_shapes,
    at: int = PROBE,
) -> tuple[Shapes, Shapes]:
    """``shapes(build(at))`` and ``shapes(build(at + 1))``: the raw material of every head oracle."""
    return shapes(build(at)), shapes(build(at + 1))


def class_dependent_parameters(build: Callable[[int], nn.Module], at: int = PROBE) -> set[str]:
    """Names of the parameters whose shape changes with the class count: the head, by definition.

    ``build(n)`` must return a model with ``n`` classes; it is called for ``at`` and ``at + 1``.
    """
    return class_dependent(*probe(build, at=at))


def line_through(low: tuple[int, ...], high: tuple[int, ...], n: int, at: int = PROBE) -> tuple[int, ...]:
    """The shape at ``n`` classes of a tensor whose dimensions are affine in the class count."""
    return tuple(a if a == b else (b - a) * (n - at) + a for a, b in zip(low, high, strict=True))


@dataclass
class HeadOracle:
    """A builder as the oracle for head shapes, at any class count, cheaply.

    ``build(n)`` must build the reference model with ``n`` classes (structurally: it is only ever
    asked for shapes). Two probe builds give the class-dependent parameters (:attr:`head_names`)
    and, per dimension, the affine rule ``size = a * n + b``; the first other ``n`` asked for is
    built for real and compared, and only when that agrees are further shapes derived.
    """

    build: Callable[[int], nn.Module]
    probe: int = PROBE
    builds: int = 0
    on_build: Callable[[], None] | None = None
    #: Says which builder this is in failure messages.
    description: str = "the builder"
    _probes: dict[int, tuple[Shapes, Shapes]] = field(default_factory=dict)
    _verified: bool | None = None  # None: not yet checked against a real build

    def _build(self, n: int) -> tuple[Shapes, Shapes]:
        if n not in self._probes:
            model = self.build(n)
            self.builds += 1
            if self.on_build is not None:
                self.on_build()
            self._probes[n] = (state_shapes(model), parameter_shapes(model))
        return self._probes[n]

    def probe_shapes(self) -> tuple[Shapes, Shapes]:
        """The state_dict shapes at the two probe class counts, ``probe`` and ``probe + 1``."""
        return dict(self._build(self.probe)[0]), dict(self._build(self.probe + 1)[0])

    @property
    def head_names(self) -> set[str]:
        """Names of the parameters whose shape depends on the class count: the head, by definition."""
        return class_dependent(self._build(self.probe)[1], self._build(self.probe + 1)[1])

    @property
    def head_keys(self) -> set[str]:
        """Like :attr:`head_names`, over the whole state_dict (buffers too)."""
        return class_dependent(self._build(self.probe)[0], self._build(self.probe + 1)[0])

    def _derive(self, n: int) -> Shapes | None:
        low, high = self._build(self.probe)[0], self._build(self.probe + 1)[0]
        if low.keys() != high.keys() or any(len(low[k]) != len(high[k]) for k in low):
            return None  # the class count adds or removes tensors: nothing to interpolate
        return {key: line_through(shape, high[key], n, self.probe) for key, shape in low.items()}

    def shapes(self, n: int) -> Shapes:
        """The state_dict shapes of ``build(n)``."""
        if n in self._probes or n in (self.probe, self.probe + 1):
            return dict(self._build(n)[0])  # a probe verifies nothing: the line runs through it
        if self._verified is None:
            real = self._build(n)[0]
            self._verified = self._derive(n) == real
            return dict(real)
        derived = self._derive(n) if self._verified else None
        return derived if derived is not None else dict(self._build(n)[0])


def reference_kwargs(name: str, model: nn.Module) -> dict[str, Any]:
    """The builder keywords that reproduce ``model``'s configuration, read back from the model.

    Only keywords that change parameter shapes while keeping the architecture are read: the
    build-time input size a model records under the builder keyword's own name (ViT's
    ``image_size``), and whether the family's auxiliary heads were built (``aux_logits``,
    ``aux_loss``). Everything else keeps the kit's offline defaults, which change no shape.
    """
    family = find_family(name)
    if family is None:
        return {}
    kwargs: dict[str, Any] = {}
    size_kwarg = family.inputs.size_kwarg
    if size_kwarg is not None:
        size = getattr(model, size_kwarg, None)
        if isinstance(size, int) and not isinstance(size, bool):
            kwargs[size_kwarg] = (size, size) if family.inputs.size_as_pair else size
    if family.aux_kwarg is not None and family.aux_heads:
        kwargs[family.aux_kwarg] = any(_has_module(model, path) for path in family.aux_heads)
    return kwargs


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


@dataclass(frozen=True)
class ArchitectureMismatch:
    """How a user's as-built model differs from the reference, beyond the head."""

    agreeing_keys: int
    agreeing_shapes: int
    total: int
    differences: tuple[str, ...]

    def describe(self, limit: int = 6) -> str:
        lines = [
            f"{self.agreeing_keys} of {self.total} state_dict keys agree "
            f"({self.agreeing_shapes} with the same shape); first differences:"
        ]
        lines += [f"  {line}" for line in self.differences[:limit]]
        if len(self.differences) > limit:
            lines.append(f"  ... and {len(self.differences) - limit} more")
        return "\n".join(lines)


def architecture_mismatch(
    found: Shapes, reference: Shapes, head_keys: set[str]
) -> ArchitectureMismatch | None:
    """``None`` when ``found`` (the user's as-built model) is ``reference``'s architecture.

    Class-dependent tensors (``head_keys``) must exist in both, with any size: the user may have
    built with another class count. Every other tensor must agree in name and shape, except a
    BatchNorm's ``num_batches_tracked``: torchvision's detection builders swap BatchNorm2d for
    FrozenBatchNorm2d (which has none) when they load weights, and the architecture is the same.
    """
    counter = "num_batches_tracked"
    found = {k: v for k, v in found.items() if not k.endswith(counter)}
    reference = {k: v for k, v in reference.items() if not k.endswith(counter)}
    differences = [f"missing: {k} {reference[k]}" for k in sorted(reference.keys() - found.keys())]
    differences += [f"unexpected: {k} {found[k]}" for k in sorted(found.keys() - reference.keys())]
    common = found.keys() & reference.keys()
    same_shape = {k for k in common if found[k] == reference[k] or k in head_keys}
    differences += [
        f"{k}: torchvision's {reference[k]}, yours {found[k]}" for k in sorted(common - same_shape)
    ]
    if not differences:
        return None
    total = len(found.keys() | reference.keys())
    return ArchitectureMismatch(len(common), len(same_shape), total, tuple(differences))


@dataclass(frozen=True)
class SwapTrace:
    """What a ``replace_head`` hook did to a model, decided by object identity.

    ``kept`` maps a state_dict key of the returned model to the key the same tensor had in the
    as-built model (the body of a functional swap keeps its tensors under new names);
    ``introduced`` are the returned model's parameters that did not exist before the hook ran.
    """

    kept: dict[str, str]
    introduced: frozenset[str]
    #: Whether ``replace_head`` returned a rebuilt model (no tensor kept by identity).
    rebuilt: bool = False

    def original(self, key: str) -> str:
        """The as-built name of ``key``, or ``key`` itself for a tensor the hook created."""
        return self.kept.get(key, key)


def tensor_names(model: nn.Module) -> dict[int, str]:
    """``id(tensor) -> name`` for every parameter and buffer of ``model``, to trace a swap by.

    The caller must keep ``model`` alive while the ids are in use, so that no id is reused.
    """
    parameters, buffers = _named_tensors(model, remove_duplicate=False)
    names: dict[int, str] = {}
    for name, tensor in [*parameters, *buffers]:
        names.setdefault(id(tensor), name)
    return names


def _named_tensors(
    model: nn.Module, *, remove_duplicate: bool = True
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, Tensor]]]:
    """``list(named_parameters())`` and ``list(named_buffers())`` from one walk of the modules.

    Each of those walks the whole tree again, and every swap of every example asks for both
    (as :func:`tensor_names` and :func:`trace_swap` do); same names, order and deduplication.
    """
    parameters: list[tuple[str, nn.Parameter]] = []
    buffers: list[tuple[str, Tensor]] = []
    seen: tuple[set[int], set[int]] = (set(), set())
    for path, module in model.named_modules(remove_duplicate=remove_duplicate):
        prefix = f"{path}." if path else ""
        for parameter_name, parameter in module._parameters.items():
            if parameter is not None and _first(parameter, seen[0], remove_duplicate):
                parameters.append((prefix + parameter_name, parameter))
        for buffer_name, buffer in module._buffers.items():
            if buffer is not None and _first(buffer, seen[1], remove_duplicate):
                buffers.append((prefix + buffer_name, buffer))
    return parameters, buffers


def _first(tensor: Tensor, seen: set[int], remove_duplicate: bool) -> bool:
    if not remove_duplicate:
        return True
    if id(tensor) in seen:
        return False
    seen.add(id(tensor))
    return True


def trace_swap(before: Mapping[int, str], swapped: nn.Module, shapes: Shapes | None = None) -> SwapTrace:
    """Which tensors of ``swapped`` existed (under which name) before ``replace_head`` ran.

    A ``replace_head`` that returns a *rebuilt* model (a factory called again for ``n`` classes)
    keeps no tensor by identity. Then ``shapes`` (the as-built model's :func:`state_shapes`)
    decides: a tensor with a counterpart of the same name and shape there is the backbone, kept
    under its name; the rest is new. A rebuild is no defect by itself; losing pretrained weights
    in it is, and ``test_pretrained_weights_reach_model`` says so.
    """
    kept: dict[str, str] = {}
    introduced: set[str] = set()
    parameters, buffers = _named_tensors(swapped)
    rebuilt = shapes is not None and bool(parameters) and not any(id(t) in before for _, t in parameters)
    for name, tensor in [*parameters, *buffers]:
        if id(tensor) in before:
            kept[name] = before[id(tensor)]
        elif rebuilt and shapes is not None and shapes.get(name) == tuple(tensor.shape):
            kept[name] = name
        elif isinstance(tensor, nn.Parameter):
            introduced.add(name)
    return SwapTrace(kept, frozenset(introduced), rebuilt)
