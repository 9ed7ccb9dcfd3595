"""Building zoo models offline, on a device, or structurally (shapes only, no weight memory).

Structural builds put every parameter and buffer on the ``meta`` device *as it is registered*,
instead of running the whole builder under ``torch.device("meta")``. The difference matters: some
builders compute plain tensors while they build (RegNet's ``BlockParams`` calls ``.tolist()``),
which fails on meta tensors but works here, because only registered state goes to meta.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..compat import default_device, set_fill_uninitialized_memory
from ..zoo.families import find_family
from .deferred import overwritten_fills_skipped
from .initialisers import filled_init
from .meta import meta_fast_paths, without_memo

__all__ = [
    "accepts",
    "build_model",
    "builder_kwargs",
    "on_device",
    "poisoned_init",
    "real_init",
    "skipped_init",
    "small_calibration",
    "structural_init",
    "takes_num_classes",
    "uninitialised_as_nan",
    "uninitialised_copy",
    "zero_init",
]


@contextlib.contextmanager
def structural_init(*, cpu_default: bool = True) -> Iterator[None]:
    """Within this context, new modules keep their parameters and buffers on the meta device.

    Initialisers then run on meta tensors, their repeated fills answered by
    :func:`~pytest_zoo.models.meta.meta_fast_paths`, so even regnet_y_128gf (644M parameters)
    builds in well under a second. ``cpu_default`` also makes CPU the default device
    for tensors created without one, for builders that compute with real values; leave it off
    around forward passes, where that ``torch.device`` mode intercepts every torch call and made
    meta forwards several times slower.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def to_meta_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def to_meta_buffer(
        self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        if tensor is not None and tensor.device.type != "meta":
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent=persistent)

    _UNPATCHED.append((register_parameter, register_buffer))
    nn.Module.register_parameter = to_meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = to_meta_buffer  # type: ignore[method-assign]
    try:
        # small, real tensors for whatever the builder computes itself
        with on_device("cpu") if cpu_default else contextlib.nullcontext(), meta_fast_paths():
            yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
        _UNPATCHED.pop()


#: The registration methods each active :func:`structural_init` replaced, outermost first.
_UNPATCHED: list[tuple[Any, Any]] = []


@contextlib.contextmanager
def real_init() -> Iterator[None]:
    """Suspend every active :func:`structural_init`: modules built here get real tensors.

    For the one build in a structural run that needs values on purpose (``build_model(name,
    device="cpu")``, e.g. a quantized conversion that calibrates on an image). The meta memo is
    left too (:func:`~pytest_zoo.models.meta.without_memo`): real tensors get nothing from it.
    """
    if not _UNPATCHED:
        with without_memo():
            yield
        return
    patched = nn.Module.register_parameter, nn.Module.register_buffer
    nn.Module.register_parameter, nn.Module.register_buffer = _UNPATCHED[0]  # type: ignore[method-assign]
    try:
        with without_memo():
            yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = patched  # type: ignore[method-assign]


def uninitialised_copy(model: nn.Module, *, dtype: torch.dtype | None = None) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are new, uninitialised tensors.

    For a check that reads the model's structure but not its values (the dtype a new head gets),
    or that overwrites every value first (a ``load_state_dict`` into a fresh model): the copy's
    module tree, flags, hooks and plain attributes are the model's, while its weights cost an
    allocation the operating system only backs once something writes to it, not a model-sized
    copy. ``dtype`` converts the floating tensors, as ``copy.deepcopy(model).to(dtype)`` would.
    """
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        kind = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        empty = torch.empty_like(tensor, dtype=kind)
        memo[id(tensor)] = (
            nn.Parameter(empty, requires_grad=tensor.requires_grad)
            if isinstance(tensor, nn.Parameter)
            else empty
        )
    # Most of a module's state is empty hook tables, which deepcopy rebuilds the slow, generic way
    # (``__reduce_ex__``): their copies are handed to it, two thirds of the copy's time.
    for module in model.modules():
        for value in vars(module).values():
            if type(value) in _EMPTY_TABLES and not value:
                memo.setdefault(id(value), type(value)())
    return copy.deepcopy(model, memo)


#: The container types of a module's ``__dict__`` whose empty instances copy as new empty ones.
_EMPTY_TABLES = frozenset({collections.OrderedDict, set})


@contextlib.contextmanager
def uninitialised_as_nan() -> Iterator[None]:
    """Within this context, ``torch.empty`` (and every uninitialised allocation) is filled with NaN.

    Run the ``replace_head`` hook inside it, then :func:`nonfinite_state`: a head whose weights come
    from ``torch.empty``/``Tensor.new_empty`` without an initialiser is NaN, deterministically,
    instead of holding whatever the allocator last freed (often plausible-looking numbers). It uses
    torch's own mechanism (``torch.use_deterministic_algorithms`` with
    ``torch.utils.deterministic.fill_uninitialized_memory``), in warn-only mode so that nothing the
    hook does is refused; the previous settings are restored on exit.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    fill = set_fill_uninitialized_memory(True)
    try:
        yield
    finally:
        set_fill_uninitialized_memory(fill)
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def poisoned_init() -> Iterator[None]:
    """Within this context, ``torch.nn.init``'s initialisers fill floating tensors with NaN, under
    whatever name a module holds them (:func:`~pytest_zoo.models.initialisers.filled_init`).

    For a build whose every value is overwritten before it is read, the way torchvision's
    ``builder(weights=W)`` loads a checkpoint into the model it has just initialised: drawing
    regnet_y_128gf's 644M random initial values costs seconds, and they are discarded at once.
    NaN instead of leaving memory as it is: a value the load did not overwrite stays NaN, so it
    cannot pass for a loaded one.
    """
    with filled_init(float("nan")):
        yield


@contextlib.contextmanager
def zero_init() -> Iterator[None]:
    """Within this context, ``torch.nn.init``'s initialisers fill floating tensors with zeros.

    For a real build whose values are read but whose shapes alone are checked: a ``quantize=True``
    build calibrates and converts, which NaN would not survive, and random draws for
    quantized_resnext101's 88M weights were a quarter of the conversion's time.
    """
    with filled_init(0.0):
        yield


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """Within this context, ``torch.nn.init``'s initialisers leave tensors as they are.

    For a structural build only ever asked for shapes (the builder oracle's probes, torchvision's
    own code): on meta tensors an initialiser changes nothing, yet each still costs its Python and
    a dispatch through the meta memo, a fifth of such a build.
    """
    with filled_init(None):
        yield


#: The calibration image torchvision's ``quantize_model`` draws, whatever the model.
_CALIBRATION = (1, 3, 299, 299)


@contextlib.contextmanager
def small_calibration(side: int) -> Iterator[None]:
    """Within this context, torchvision's ``quantize=True`` builders calibrate on a ``side`` image.

    They calibrate their observers on one random 299 x 299 image, a third of what converting
    quantized_resnext101 costs. The image sets the observers' ranges, so the scales the layers
    quantize with, and nothing else: which modules are converted, their state_dict keys and
    shapes and their outputs' shapes are the same from any legal size (quantized
    mobilenet_v3 converts without calibrating at all). ``side`` must be legal for the model.
    Only the draw of that one image in torchvision's quantization utilities is changed; where a
    torchvision has no such draw, the build is left as it is.
    """
    import types
    from unittest import mock

    from torchvision.models.quantization import utils

    if getattr(utils, "torch", None) is not torch or not hasattr(utils, "quantize_model"):
        yield
        return

    class Calibration(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

        def rand(self, *size: Any, **kwargs: Any) -> torch.Tensor:
            if size == _CALIBRATION:
                size = (*_CALIBRATION[:2], side, side)
            return torch.rand(*size, **kwargs)

    with mock.patch.object(utils, "torch", Calibration("torch")):
        yield


def builder_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments the kit builds ``name`` with: offline, cheap, warning-free.

    Family defaults (e.g. ViT's small ``image_size``) come first, the caller's ``overrides`` win,
    and ``weights`` defaults to ``None`` so nothing is ever downloaded unless asked for.
    ``weights=None`` alone is not offline for detection and segmentation builders: they default
    ``weights_backbone`` to ImageNet weights and download them, so a builder that takes
    ``weights_backbone`` gets ``None`` too.
    """
    family = find_family(name)
    kwargs: dict[str, Any] = dict(family.build_kwargs) if family else {}
    if family is not None:
        kwargs.update(family.inputs.size_kwargs())
    kwargs.setdefault("weights", None)
    if accepts(name, "weights_backbone"):
        kwargs.setdefault("weights_backbone", None)
    kwargs.update(overrides)
    return kwargs


@functools.cache
def takes_num_classes(name: str) -> bool:
    """Whether ``builder(num_classes=n)`` builds: most builders take it through ``**kwargs``, so
    only a (structural, cheap) build can tell; RAFT's builders pass it on and its class refuses it.
    """
    try:
        build_model(name, num_classes=3, structural=True)
    except TypeError:
        return False
    return True


def accepts(name: str, parameter: str) -> bool:
    """Whether the torchvision builder ``name`` declares ``parameter``; unknown names take nothing."""
    import inspect

    from torchvision.models import get_model_builder

    try:
        builder = get_model_builder(name)
    except ValueError:
        return False
    return parameter in inspect.signature(builder).parameters


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    structural: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build the torchvision model ``name`` with the kit's offline defaults (see :func:`builder_kwargs`).

    ``structural=True`` gives a model whose parameters live on the meta device: shapes, counts,
    state_dict keys and meta-tensor forwards work; values do not exist. An explicit ``device``
    asks for values: the build is real even inside a :func:`structural_init` (a structural run).
    """
    from torchvision.models import get_model

    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs = builder_kwargs(name, **kwargs)
    if structural:
        with structural_init():
            model: nn.Module = get_model(name, **kwargs)
        return model
    values = real_init() if device is not None else contextlib.nullcontext()
    # Inside a structural run a build without a device is a meta one: nothing there is drawn.
    real = device is not None or not _UNPATCHED
    with on_device(device), values, overwritten_fills_skipped() if real else contextlib.nullcontext():
        model = get_model(name, **kwargs)
    return model


def on_device(device: torch.device | str | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.device(device)`` (CPU if ``None``), or nothing where that is the default already.

    A ``torch.device`` mode intercepts every torch call of the build: in a structural sweep, where
    every build is one, that was a fifth of the time.
    """
    target = torch.device(device if device is not None else "cpu")
    return contextlib.nullcontext() if default_device() == target else torch.device(target)
