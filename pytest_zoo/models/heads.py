"""Head adapters: where a model's task head lives, and how to swap it for any number of classes.

Adapters are keyed by model class and looked up along the model's MRO, so a subclass (for example
torchvision's ``QuantizableResNet``) inherits its parent's adapter unless it registers its own.
The built-in adapters come from :data:`pytest_zoo.zoo.families.FAMILIES`; users add theirs with
:func:`register_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..zoo.families import FAMILIES

__all__ = [
    "HeadAdapter",
    "NoAdapterError",
    "NoHeadError",
    "find_adapter",
    "get_adapter",
    "head_modules",
    "head_parameter_names",
    "layer_outputs",
    "register_adapter",
    "replace_head",
    "replace_layer",
]

#: Makes the replacement layer for one head path: ``(old_layer, num_classes) -> new_layer``.
LayerFactory = Callable[[nn.Module, int], nn.Module]


class NoAdapterError(LookupError):
    """Raised when pytest-zoo does not know where a model's head is."""


class NoHeadError(NoAdapterError):
    """Raised for a model that has no class head by design (RAFT predicts optical flow).

    A subclass of :class:`NoAdapterError` so that code handling "no adapter" keeps working, but
    distinct, because registering an adapter is not the way out: there is nothing to replace.
    """


@dataclass(frozen=True)
class HeadAdapter:
    """Where the class-dependent layers of one model class are.

    ``heads`` must exist; ``aux_heads`` are replaced only when present (a module that is missing
    or ``None``, as GoogLeNet's ``aux1`` is when built with ``aux_logits=False``, is left alone).
    ``layer_factory`` builds each replacement; the default handles ``Linear`` and ``Conv1d/2d/3d``.
    ``multiples`` maps a head path to ``k`` when that layer has ``k * num_classes`` outputs (a box
    regressor's 4 coordinates per class). ``no_head`` is set, with the reason, for a model class
    that has no class head at all; ``heads`` is then empty and :func:`replace_head` raises.
    """

    heads: tuple[str, ...]
    aux_heads: tuple[str, ...] = ()
    num_classes_attrs: tuple[str, ...] = ()
    layer_factory: LayerFactory | None = None
    source: str = "registered"
    multiples: Mapping[str, int] = field(default_factory=dict)
    no_head: str = ""

    def __post_init__(self) -> None:
        if not self.heads and not self.no_head:
            raise ValueError("a HeadAdapter needs at least one head path, e.g. heads=('fc',)")
        bad = {path: k for path, k in self.multiples.items() if not (isinstance(k, int) and k >= 1)}
        if bad:
            raise ValueError(f"HeadAdapter multiples must be positive ints, got {bad}")

    def multiple(self, path: str) -> int:
        """How many outputs the layer at ``path`` has per class (1 for an ordinary class head)."""
        return self.multiples.get(path, 1)

    def fits(self, model: nn.Module) -> bool:
        """Whether every required head path of this adapter names a leaf layer of ``model``."""
        return all(
            (module := _get(model, path)) is not None and not any(module.children()) for path in self.heads
        )

    def present_heads(self, model: nn.Module) -> list[str]:
        """The head paths this model actually has: every required head, and the aux heads present."""
        if self.no_head:
            raise NoHeadError(
                f"{type(model).__qualname__} has no class head to replace or keep trainable ({self.source}): "
                f"{self.no_head}. Use it as it is; the zoo suite checks its outputs instead."
            )
        missing = [path for path in self.heads if _get(model, path) is None]
        if missing:
            raise NoAdapterError(
                f"{type(model).__qualname__} has no module at {', '.join(map(repr, missing))}, where its "
                f"adapter ({self.source}) says the head is. Modules it does have at the top level: "
                f"{', '.join(name for name, _ in model.named_children()) or '(none)'}."
            )
        return [*self.heads, *(path for path in self.aux_heads if _get(model, path) is not None)]


def _class_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_REGISTRY: dict[str, HeadAdapter] = {}
#: Further built-in adapters for a class that several families share with different head layouts
#: (SSD300's heads are Conv2d layers, SSDLite's sit one level deeper): the first that fits wins.
_ALTERNATIVES: dict[str, list[HeadAdapter]] = {}
for _family in FAMILIES:
    _adapter = HeadAdapter(
        _family.heads,
        _family.aux_heads,
        _family.num_classes_attrs,
        source=f"family {_family.name!r}",
        multiples=dict(_family.head_multiples),
        no_head="" if _family.heads else _family.notes,
    )
    _REGISTRY.setdefault(_family.model_class, _adapter)
    _ALTERNATIVES.setdefault(_family.model_class, []).append(_adapter)


def register_adapter(
    model_class: type[nn.Module],
    heads: Sequence[str],
    *,
    aux_heads: Sequence[str] = (),
    num_classes_attrs: Sequence[str] = (),
    layer_factory: LayerFactory | None = None,
    multiples: Mapping[str, int] | None = None,
    replace: bool = False,
    source: str | None = None,
) -> HeadAdapter:
    """Teach pytest-zoo where the head of ``model_class`` (and of its subclasses) is.

    Registering a class twice is an error unless ``replace=True``: two adapters silently competing
    for one class is exactly the kind of bug this kit exists to catch.
    """
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise TypeError(f"register_adapter expects an nn.Module subclass, got {model_class!r}")
    key = _class_key(model_class)
    if key in _REGISTRY and not replace:
        raise ValueError(
            f"An adapter is already registered for {key}: {_REGISTRY[key]}. Pass replace=True to override it."
        )
    adapter = HeadAdapter(
        tuple(heads),
        tuple(aux_heads),
        tuple(num_classes_attrs),
        layer_factory,
        source=source or f"registered for {model_class.__qualname__}",
        multiples=dict(multiples or {}),
    )
    _REGISTRY[key] = adapter
    _ALTERNATIVES.pop(key, None)
    return adapter


def unregister_adapter(model_class: type[nn.Module]) -> None:
    """Remove a user registration (tests and notebooks re-register freely)."""
    _REGISTRY.pop(_class_key(model_class), None)
    _ALTERNATIVES.pop(_class_key(model_class), None)


def find_adapter(model: nn.Module) -> HeadAdapter | None:
    """The adapter for ``model``'s class or its nearest registered base class, or ``None``."""
    for cls in type(model).__mro__:
        key = _class_key(cls)
        adapter = _REGISTRY.get(key)
        if adapter is not None:
            return next((a for a in _ALTERNATIVES.get(key, ()) if a.fits(model)), adapter)
    return None


def get_adapter(model: nn.Module) -> HeadAdapter:
    adapter = find_adapter(model)
    if adapter is None:
        cls = type(model)
        raise NoAdapterError(
            f"pytest-zoo does not know where the head of {cls.__module__}.{cls.__qualname__} is. "
            "Register it once, before use:\n"
            "    import pytest_zoo\n"
            f"    pytest_zoo.register_adapter({cls.__qualname__}, heads=['<dotted.path.to.head>'])\n"
            "where the head is the layer whose output size is the number of classes "
            f"(candidates: {', '.join(_last_layer_names(model)) or 'none found'})."
        )
    return adapter


def _last_layer_names(model: nn.Module, limit: int = 3) -> list[str]:
    names = [name for name, module in model.named_modules() if isinstance(module, _REPLACEABLE) and name]
    return names[-limit:]


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def head_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, module)`` for every head layer the model has, aux heads included."""
    for path in get_adapter(model).present_heads(model):
        yield path, model.get_submodule(path)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the head's parameters, as ``model.named_parameters()`` spells them."""
    return [f"{path}.{name}" for path, module in head_modules(model) for name, _ in module.named_parameters()]


_REPLACEABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layer_outputs(layer: nn.Module) -> int:
    """A head layer's output count: a Linear's ``out_features``, a Conv's ``out_channels``, else 0.

    For a head with ``k`` outputs per class (see :meth:`HeadAdapter.multiple`) that is ``k`` times
    the class count.
    """
    return int(getattr(layer, "out_features", getattr(layer, "out_channels", 0)))


def replace_layer(old: nn.Module, num_outputs: int) -> nn.Module:
    """A fresh layer like ``old`` with ``num_outputs`` outputs, on ``old``'s device and dtype."""
    weight = getattr(old, "weight", None)
    device = weight.device if isinstance(weight, torch.Tensor) else None
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else None
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_outputs, bias=old.bias is not None, device=device, dtype=dtype)
    quantized = _replace_quantized_linear(old, num_outputs)
    if quantized is not None:
        return quantized
    if isinstance(old, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if old.groups != 1:
            raise TypeError(f"cannot resize a grouped convolution head ({old}); register a layer_factory")
        return type(old)(
            old.in_channels,
            num_outputs,
            kernel_size=old.kernel_size,  # type: ignore[arg-type]
            stride=old.stride,  # type: ignore[arg-type]
            padding=old.padding,  # type: ignore[arg-type]
            dilation=old.dilation,  # type: ignore[arg-type]
            bias=old.bias is not None,
            padding_mode=old.padding_mode,
            device=device,
            dtype=dtype,
        )
    raise TypeError(
        f"pytest-zoo can resize Linear and Conv1d/2d/3d heads, not {type(old).__qualname__}. "
        "Pass layer_factory=... to register_adapter to build the replacement yourself."
    )


def _replace_quantized_linear(old: nn.Module, num_outputs: int) -> nn.Module | None:
    """A converted (``quantize=True``) model's head: a fresh int8 Linear with the old output scale.

    The new weights are drawn like ``nn.Linear``'s and quantized per tensor; the output keeps the
    old layer's ``scale``/``zero_point``, which is all the following ``DeQuantStub`` needs.
    """
    from torch.ao.nn import quantized as nnq

    if not isinstance(old, nnq.Linear) or isinstance(old, nnq.dynamic.Linear):
        return None
    weight, bias = old._weight_bias()  # type: ignore[no-untyped-call]
    values = torch.empty(num_outputs, old.in_features)
    nn.init.kaiming_uniform_(values, a=5**0.5)
    scale = float(values.abs().max()) / 127 or 1.0
    new = nnq.Linear(  # type: ignore[no-untyped-call]
        old.in_features, num_outputs, bias_=bias is not None, dtype=weight.dtype
    )
    new.set_weight_bias(
        torch.quantize_per_tensor(values, scale, 0, weight.dtype),
        torch.zeros(num_outputs) if bias is not None else None,
    )
    new.scale, new.zero_point = old.scale, old.zero_point
    return new


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the task head(s) of ``model`` for ``num_classes`` outputs, in place, and return it.

    Aux heads are swapped too, so a model trained with auxiliary losses stays consistent. All
    replacements are built before any is installed: a failure leaves the model untouched.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    adapter = get_adapter(model)
    factory = adapter.layer_factory or replace_layer
    new = {
        path: factory(model.get_submodule(path), adapter.multiple(path) * num_classes)
        for path in adapter.present_heads(model)
    }
    for path, module in new.items():
        _set(model, path, module)
    for attr in adapter.num_classes_attrs:
        owner_path, _, name = attr.rpartition(".")
        setattr(model.get_submodule(owner_path) if owner_path else model, name, num_classes)
    return model
