"""Every difference between the torch and torchvision releases the kit supports, in one place.

The kit supports torch 2.1 / torchvision 0.16 (October 2023) and later (README, "Tested
versions"): a snapshot has to be recorded on the versions a project runs *before* it upgrades.
The rest of the kit calls the functions here instead of an API that some supported release lacks,
so that dropping an old release later is a matter of deleting lines in this module.

A feature an old release lacks is not emulated: a function here says why it cannot run, naming the
release that has it, and the check skips with that reason (:func:`autocast_gap`).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "autocast_gap",
    "default_device",
    "global_forward_hooks",
    "is_in_place",
    "mappable",
    "release",
    "save_unchecked",
    "set_fill_uninitialized_memory",
]


def release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string: ``"2.1.2+cu121"`` -> ``(2, 1)``."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"cannot read a release from version {version!r}")
    return int(match[1]), int(match[2])


def torchvision_release() -> tuple[int, int]:
    import torchvision

    return release(torchvision.__version__)


def is_in_place(func: torch._ops.OpOverload) -> bool:
    """Whether an aten operator is an in-place variant (``add_``, ``normal_``, ``__iand__``).

    Newer torch tags them (``torch.Tag.inplace``; torch 2.5.1 has no such tag); before it, the
    schema's name says the same thing,
    by the rule torchgen itself uses to make that tag: a trailing underscore, or an ``__i*__``
    dunder. On torch 2.14.1 the rule and the tag agree on every aten overload but the few that
    TorchScript registers without tags (``add_.t`` on lists, ``copy_.int``, ``*.hacked_twin``),
    which eager code never dispatches.
    """
    import torch

    inplace = getattr(torch.Tag, "inplace", None)
    if inplace is not None:
        return inplace in func.tags
    name = func._schema.name.split("::")[-1]
    if name.startswith("__") and name.endswith("__"):
        return name.startswith("__i")
    return name.endswith("_")


def default_device() -> torch.device:
    """The device a tensor created without one lands on, a ``with torch.device(...)`` block included.

    ``torch.get_default_device`` does not answer that everywhere: torch 2.1 lacks it, and torch 2.5.1's
    sees ``torch.set_default_device`` but not a ``with torch.device("meta")`` block (it answers
    ``cpu`` there; torch 2.14.1's answers ``meta``). Asking for an empty tensor answers it on every
    release, for a microsecond.
    """
    import torch

    return torch.empty(0).device


def set_fill_uninitialized_memory(fill: bool) -> bool:
    """Set whether deterministic mode fills uninitialised memory (NaN for floats); return the old value.

    torch 2.2 made it a switch (``torch.utils.deterministic.fill_uninitialized_memory``, on by
    default); torch 2.1 always fills under ``torch.use_deterministic_algorithms(True)``, so there is
    nothing to set and the answer is ``True``.
    """
    try:
        import torch.utils.deterministic as deterministic
    except ImportError:
        return True
    previous: Any = getattr(deterministic, "fill_uninitialized_memory", True)
    setattr(deterministic, "fill_uninitialized_memory", fill)  # noqa: B010 (a module property)
    return bool(previous)


def global_forward_hooks() -> list[dict[Any, Any]]:
    """The hooks ``register_module_forward_hook`` and friends run on every module's call (forward,
    forward pre, backward, backward pre): private to torch, the same in every supported release; a
    release without them reads as one hook registered, so that nothing is taken for hook-free."""
    from torch.nn.modules import module

    kinds = ("forward", "forward_pre", "backward", "backward_pre")
    return [getattr(module, f"_global_{kind}_hooks", {None: None}) for kind in kinds]


def mappable(path: str | os.PathLike[str]) -> str:
    """``path`` as ``torch.load(path, mmap=True)`` takes it on every supported torch.

    torch 2.1 memory-maps only a ``str`` (a ``pathlib.Path`` raises "f must be a string filename
    in order to use mmap argument"); later releases take any path-like.
    """
    return os.fspath(path)


def save_unchecked(obj: object, f: str | os.PathLike[str]) -> None:
    """``torch.save(obj, f)`` without the CRC32 of every record it writes.

    For the kit's own scratch files, read back within the same run, the checksum guards against no
    failure there is, and it was half of a 100 MB save's CPU time. Newer torch makes it a switch
    (``torch.utils.serialization.config.save.compute_crc32``); torch 2.1 and 2.5 lack it and always
    compute it, so there this is plain ``torch.save``.
    """
    import torch

    try:
        from torch.utils.serialization import config
    except ImportError:
        torch.save(obj, f)
        return
    switch: Any = getattr(config, "save", None)
    if switch is None or not hasattr(switch, "compute_crc32"):
        torch.save(obj, f)
        return
    previous = switch.compute_crc32
    switch.compute_crc32 = False
    try:
        torch.save(obj, f)
    finally:
        switch.compute_crc32 = previous


def autocast_gap(model: torch.nn.Module, device_type: str) -> str | None:
    """Why ``model`` cannot run under ``torch.autocast(device_type)`` with this torchvision, or ``None``.

    torchvision 0.17 gave ``nms`` and ``roi_align`` a CPU autocast kernel (pytorch/vision#8049);
    before it every detection model fails under CPU autocast inside torchvision's postprocessing
    (``"nms_kernel" not implemented for 'BFloat16'``), whatever the user's code does.
    """
    import torchvision

    if device_type != "cpu" or torchvision_release() >= (0, 17):
        return None
    if not any(type(m).__module__.startswith("torchvision.models.detection") for m in model.modules()):
        return None
    return (
        "autocast on CPU of a torchvision detection model needs torchvision>=0.17 (nms and roi_align "
        f"have no CPU autocast kernel before it; installed: torchvision {torchvision.__version__})"
    )
