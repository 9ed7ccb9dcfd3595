"""Replacing ``torch.nn.init``'s initialisers for the length of a build, wherever a module holds them.

Patching the attributes of ``torch.nn.init`` reaches every caller that looks them up there
(``nn.init.kaiming_uniform_(...)``), but not a module that imported one by name: torch's
``activation.py`` does ``from torch.nn.init import xavier_uniform_``, so ``MultiheadAttention``
kept drawing its ``in_proj_weight`` for real under a poisoned build (a tenth of the weights
loading check on the ViTs). :func:`filled_init` patches those module-level aliases too; they are
found by identity with the original functions, so an alias under another name counts as well.
Only torch's and torchvision's modules are searched: they are what the kit builds.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import nn

__all__ = ["INITIALISERS", "filled_init", "initialiser_aliases"]

#: The in-place initialisers of ``torch.nn.init``: what builders and ``reset_parameters`` call.
INITIALISERS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)

#: The originals, taken when this module is imported (before any build could patch them).
_ORIGINALS = {name: getattr(nn.init, name) for name in INITIALISERS}
_NAMES = {id(function): name for name, function in _ORIGINALS.items()}

#: The modules already searched, by name (a module imported again under its name is searched
#: again), and ``(attribute, initialiser)`` of each alias it holds.
_SEARCHED: dict[str, ModuleType | None] = {}
_ALIASES: dict[str, tuple[ModuleType, tuple[tuple[str, str], ...]]] = {}


def initialiser_aliases() -> list[tuple[ModuleType, str, str]]:
    """``(module, attribute, initialiser)`` of every loaded torch or torchvision module holding one.

    ``torch.nn.init`` itself is not among them. Each module is searched once, when first seen
    (about 10 ms for all of torch and torchvision); later calls look only at the modules imported
    since, which is a pass over ``sys.modules`` that costs microseconds.
    """
    for name, module in list(sys.modules.items()):
        if _SEARCHED.get(name, _SEARCHED) is module:
            continue
        _SEARCHED[name] = module
        _ALIASES.pop(name, None)
        if name == "torch.nn.init" or not _is_torchs(name):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or module is None:
            continue
        held = list(namespace.items())
        found = tuple((attr, _NAMES[id(value)]) for attr, value in held if id(value) in _NAMES)
        if found:
            _ALIASES[name] = (module, found)
    return [(module, attr, name) for module, found in _ALIASES.values() for attr, name in found]


def _is_torchs(name: str) -> bool:
    return name in ("torch", "torchvision") or name.startswith(("torch.", "torchvision."))


@contextlib.contextmanager
def filled_init(value: float | None, *, spared: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Within this context every initialiser fills floating tensors with ``value``; ``None``: it
    does nothing. Integer tensors are left as they are either way (NaN has no integer form).

    Given ``spared``, a parameter is not filled but appended to it: for a build that overwrites
    every parameter afterwards (a fabricated checkpoint), where the fill is a model-sized write
    thrown away, and which must know every tensor it has to overwrite, the load-time parameters a
    builder drops afterwards included (GoogLeNet's aux heads).

    A module imported inside the context that takes an initialiser by name takes the stand-in; it
    gets the original back on exit, so that no later build of the session inherits the fill.
    """
    fills = {name: _filler(value, spared) for name in INITIALISERS}
    targets: list[tuple[Any, str, str]] = [(nn.init, name, name) for name in INITIALISERS]
    targets += initialiser_aliases()
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
    loaded = set(sys.modules)
    for owner, attr, name in targets:
        setattr(owner, attr, fills[name])
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)
        originals = {id(fill): _ORIGINALS[name] for name, fill in fills.items()}
        for name in sys.modules.keys() - loaded:
            namespace = getattr(sys.modules.get(name), "__dict__", None) if _is_torchs(name) else None
            if isinstance(namespace, dict):
                for attr, held in list(namespace.items()):
                    if id(held) in originals:
                        namespace[attr] = originals[id(held)]


def _filler(value: float | None, spared: list[torch.Tensor] | None) -> Callable[..., torch.Tensor]:
    def fill(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if spared is not None and isinstance(tensor, nn.Parameter):
            spared.append(tensor)
        elif value is not None and tensor.is_floating_point():
            with torch.no_grad():
                tensor.fill_(value)
        return tensor

    return fill
