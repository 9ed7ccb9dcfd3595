"""Pretrained weights, offline: every torchvision checkpoint a test asks for is served from a file.

Fine-tuning code starts from ``get_model(name, weights="DEFAULT")``; a gate that could not run it
would test every path but the one projects ship. Inside :meth:`PretrainedServer.serve` torch.hub's
own ``load_state_dict_from_url`` runs unchanged (so does every torchvision caller of it: a builder's
``weights``, a detection builder's default ``weights_backbone``, ``Weights.get_state_dict``), with
one difference: where it would download a torchvision URL, the file is put in place instead,

* from a directory of real checkpoints the user already has (:data:`CHECKPOINTS_ENV`, ini
  ``zoo_checkpoints``), searched first, by file name; else
* fabricated (:func:`write_fabricated`): the load-time ``state_dict`` of the model the builder makes
  with those weights (exact keys, shapes and dtypes, quantized ones included), its values
  deterministic (:func:`fabricated_values`), so a tensor the load never reached cannot pass for
  loaded.

The files live in one temporary hub directory per session (never the user's ``~/.cache/torch``),
are fabricated once and deleted when the session ends; reads are memory-mapped, so a build costs
the model and the file's pages, not a second copy. Any other URL still reaches the network guard.
:func:`~pytest_zoo.weights.loading.fabricate_checkpoint` (``test_load_pretrained``) writes its
files through the same function.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import secrets
import shutil
import tempfile
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from ..atomic import replace_atomically
from ..compat import mappable, save_unchecked
from ..models.building import on_device, real_init, small_calibration
from ..models.initialisers import filled_init
from .cases import WeightsCase

__all__ = [
    "CHECKPOINTS_ENV",
    "FABRICATED_BLOCK",
    "KeptCheckpoint",
    "PretrainedServer",
    "case_for_url",
    "checkpoint_dirs",
    "fabricated_signature",
    "fabricated_values",
    "write_fabricated",
]

#: Directories of real checkpoint files (``os.pathsep``-separated), searched before fabricating.
CHECKPOINTS_ENV = "PYTEST_ZOO_CHECKPOINTS"


def checkpoint_dirs(configured: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, ...]:
    """The directories searched for real checkpoint files: ``configured`` first, then the env var."""
    from_env = [p for p in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if p]
    return tuple(Path(p).expanduser() for p in [*configured, *from_env])


#: How many values each key's generator draws; a larger tensor repeats them. Drawing is what costs
#: (a tenth of a second per 50M values, against a hundredth to copy them), and a prime length is
#: divided by no row length, so the rows of a large matrix are distinct shifts of the block.
FABRICATED_BLOCK = 65521


def fabricated_values(key: str, tensor: torch.Tensor) -> None:
    """Fill ``tensor`` with the values the served checkpoint holds under ``key``, in place.

    Seeded by the key alone, so every run (and every xdist worker) serves the same bits, and two
    keys of the same shape hold different ones. No initialiser produces them: norm scales and
    variances lie in [0.5, 1.5] (never the ones of a fresh BatchNorm), biases and means in
    [-0.1, 0.1] (never its zeros), and weights are uniform with a standard deviation of
    1/sqrt(fan_in), which keeps eval-mode activations finite through a deep network.
    """
    if tensor.dim() >= 2:
        bound = 3**0.5 * max(math.prod(tensor.shape[1:]), 1) ** -0.5
        low, high = -bound, bound
    elif key.endswith(("weight", "running_var")):
        low, high = 0.5, 1.5
    else:
        low, high = -0.1, 0.1
    count = tensor.numel()
    if count == 0:
        return
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    in_place = tensor.is_contiguous()
    flat = tensor.view(-1) if in_place else torch.empty(count, dtype=tensor.dtype)
    size = min(count, FABRICATED_BLOCK)
    whole, rest = divmod(count, size)
    with torch.no_grad():
        block = flat[:size].uniform_(low, high, generator=generator)
        flat[size : whole * size].view(whole - 1, size).copy_(block.expand(whole - 1, size))
        flat[whole * size :].copy_(block[:rest])
        if not in_place:
            tensor.copy_(flat.view(tensor.shape))


def write_fabricated(
    case: WeightsCase, path: Path, *, kept: KeptCheckpoint | None = None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """Write the fabricated checkpoint of ``case`` to ``path`` (atomically); return its contents.

    The builder runs for real with ``weights=W`` while its checkpoint read is short-circuited, under
    a NaN-poisoned initialisation that spares parameters (they are overwritten anyway): the one
    extra model-sized allocation. Parameters, running statistics and whatever the poison reached
    get :func:`fabricated_values`; buffers the builder computed (position indices, coordinate
    tables) keep their real values. A quantized model is converted for real (quantizing needs
    float weights), its values seeded once; it calibrates on its smallest legal image, not
    torchvision's 299 x 299 (a third of a conversion), which changes the ranges the file holds,
    not what a load of them is checked for.
    A ``kept`` file that holds the very same state is moved to ``path`` instead of writing it again.
    """
    from ..conformance.converted import calibration_side
    from .interception import build_with_weights

    quantized = case.task == "quantized"
    spared: list[torch.Tensor] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(real_init())  # even inside a structural (meta) build of the gate
        stack.enter_context(on_device("cpu"))  # real CPU tensors, whatever the default device
        if quantized:
            stack.enter_context(torch.random.fork_rng())
            torch.manual_seed(0)
            kwargs.setdefault("quantize", True)
            stack.enter_context(small_calibration(calibration_side(case.model)))
        else:
            # Parameters are all overwritten below: they are spared the poison, and held (so that
            # no other tensor of the build gets their memory) to be recognised by their storage.
            stack.enter_context(filled_init(float("nan"), spared=spared))
        built = build_with_weights(case, structural=False, **kwargs)
    state = built.checkpoint
    signature = None
    if not quantized:
        parameters = {name for name, _ in built.model.named_parameters()}
        unfilled = {t.untyped_storage().data_ptr() for t in spared if t.numel()}
        fabricated = set()
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                continue
            if (
                key in parameters
                or key.endswith(("running_mean", "running_var"))
                or (value.numel() and value.untyped_storage().data_ptr() in unfilled)
                or value.isnan().any()
            ):
                fabricated_values(key, value)
                fabricated.add(key)
        signature = fabricated_signature(state, fabricated) if kept is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    if kept is not None and kept.take(signature, path):
        return state
    replace_atomically(path, lambda tmp: save_unchecked(state, tmp), durable=False)
    if kept is not None:
        kept.placed(path, signature)
    return state


def fabricated_signature(state: Mapping[str, Any], fabricated: Set[str]) -> bytes:
    """A digest that two fabricated states share only if ``torch.save`` writes the same tensors.

    The ``fabricated`` keys hold :func:`fabricated_values`, a function of the key, shape and dtype
    alone, so their layout stands for their bytes; every other tensor (what the builder computed)
    and every other value count by content. Cheap: the computed buffers are small.
    """
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr(getattr(state, "_metadata", None)).encode())
    storages: dict[int, int] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            digest.update(repr((key, value)).encode())
            continue
        storage = value.untyped_storage()
        shared = storages.setdefault(storage.data_ptr(), len(storages))
        layout = (key, value.dtype, tuple(value.shape), value.stride(), value.storage_offset())
        digest.update(repr((*layout, shared, storage.nbytes(), key in fabricated)).encode())
        if key not in fabricated:
            raw = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            digest.update(raw.numpy().tobytes())
    return digest.digest()


class KeptCheckpoint:
    """The last fabricated checkpoint a loading check was done with, kept for the next one.

    Consecutive weights enums of one builder often load the very same state (regnet_y_32gf's four,
    RAFT's six): the file is moved on to the next check's path instead of written again. One file
    at most: a state that differs replaces it, and it is deleted with this object (the model cache
    holds it for as long as the model's checks run) or at interpreter exit. A file is only kept
    as this object placed it: one that was written over since (a size or time stamp that changed)
    is deleted instead. It is kept beside the checks' ``torch_home`` directories, on their file
    system (scratch storage, :func:`~pytest_zoo.atomic.scratch_dir`), so that keeping and taking it
    are renames.
    """

    def __init__(self) -> None:
        self._name = f"pytest-zoo-kept-{os.getpid()}-{secrets.token_hex(4)}.pth"
        #: Where the kept file is (one path at most), for :meth:`discard` and the exit finaliser.
        self._files: list[Path] = []
        self._finalizer = weakref.finalize(self, _unlink_all, self._files)
        #: The signature of the kept file, and its identity when it was placed.
        self._kept: tuple[bytes, tuple[int, ...]] | None = None
        self._placed: tuple[Path, bytes, tuple[int, ...]] | None = None

    def take(self, signature: bytes | None, path: Path) -> bool:
        """Move the kept file to ``path`` if it holds the state of ``signature``; whether it did."""
        kept, self._kept = self._kept, None
        file = self._files[0] if self._files else None
        if file is None or kept is None or signature is None or kept != (signature, _identity(file)):
            _unlink_all(self._files)
            return False
        try:
            os.replace(file, path)
        except OSError:  # another file system
            _unlink_all(self._files)
            return False
        self._files.clear()
        self._placed = (path, signature, _identity(path))
        return True

    def placed(self, path: Path, signature: bytes | None) -> None:
        """``path`` now holds the fabricated state of ``signature`` (``None``: not to be kept)."""
        self._placed = (path, signature, _identity(path)) if signature is not None else None

    def keep(self, path: Path, into: Path) -> None:
        """The check is done with ``path``: keep it in directory ``into`` if it is the file placed
        there, else delete it."""
        placed, self._placed = self._placed, None
        _unlink_all(self._files)
        if placed is not None and placed[0] == path and placed[2] == _identity(path):
            file = into / self._name
            try:
                os.replace(path, file)
            except OSError:  # another file system: the next check writes its own
                pass
            else:
                self._files.append(file)
                self._kept = (placed[1], _identity(file))
                return
        path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._kept = self._placed = None
        _unlink_all(self._files)


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is written over or replaced; ``()`` for a missing file."""
    try:
        found = path.stat()
    except OSError:
        return ()
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
    paths.clear()


@functools.cache
def _cases_by_file() -> dict[str, WeightsCase]:
    """Every torchvision weights enum member, by the file name torch.hub caches it under."""
    from torchvision.models import list_models

    from .cases import weights_cases

    found: dict[str, WeightsCase] = {}
    for case in weights_cases(list_models()):
        found.setdefault(os.path.basename(str(case.weights.url)), case)
    return found


def case_for_url(url: str) -> WeightsCase | None:
    """The torchvision weights a URL belongs to, or ``None`` for any other URL."""
    return _cases_by_file().get(os.path.basename(url.split("?", 1)[0]))


class PretrainedServer:
    """One session's served checkpoints: a temporary hub directory, and the user's real files.

    Hashable on purpose (pytest puts registered plugins in sets); :meth:`close` deletes the files.
    """

    def __init__(self, search: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.search = checkpoint_dirs(search)
        self._home: Path | None = None
        #: File name -> where it came from ("fabricated" or the user's path), for messages.
        self.sources: dict[str, str] = {}

    @property
    def hub_dir(self) -> Path:
        """The session's hub directory: named at first use, created by the first checkpoint request.

        Deleted by :meth:`close`, or at interpreter exit for a process that never gets there (an
        xdist worker that is shut down without unconfiguring).
        """
        if self._home is None:
            name = f"pytest-zoo-pretrained-{os.getpid()}-{secrets.token_hex(4)}"
            self._home = Path(tempfile.gettempdir()) / name
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._home, True)
        return self._home / "hub"

    def close(self) -> None:
        if self._home is not None:
            self._cleanup()
            self._home = None

    def provide(self, url: str, dst: Path, fallback: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Put the checkpoint of ``url`` at ``dst``: the user's file, else a fabricated one."""
        name = os.path.basename(url.split("?", 1)[0])
        for directory in self.search:
            real = directory / name
            if real.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.symlink(real.resolve(), dst)
                self.sources[name] = str(real)
                return
        case = case_for_url(url)
        if case is None:
            fallback(url, str(dst), *args, **kwargs)  # not torchvision's: the network guard decides
            return
        write_fabricated(case, dst)
        self.sources[name] = "fabricated"

    def is_served(self, path: object) -> bool:
        """Whether ``path`` is a checkpoint file this server put in place."""
        if not isinstance(path, (str, os.PathLike)) or self._home is None:
            return False
        return Path(path).parent == self.hub_dir / "checkpoints"

    @contextlib.contextmanager
    def serve(self) -> Iterator[PretrainedServer]:
        """torch.hub answers torchvision URLs from this server's files until the block exits."""
        import torch.hub as hub

        original_download = hub.download_url_to_file
        original_load = torch.load

        def download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
            self.provide(url, Path(dst), original_download, *args, **kwargs)

        def load(f: Any, *args: Any, **kwargs: Any) -> Any:
            if self.is_served(f) and self.sources.get(os.path.basename(os.fspath(f))) == "fabricated":
                kwargs.setdefault("mmap", True)  # the user's files may predate the zip format
                f = mappable(f)
            return original_load(f, *args, **kwargs)

        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(hub, "_hub_dir", str(self.hub_dir)))
            stack.enter_context(mock.patch.object(hub, "download_url_to_file", download))
            stack.enter_context(mock.patch.object(torch, "load", load))
            yield self
