"""Keeping one zoo test from changing what the next one sees, and one broken model from the rest.

Two jobs, both applied by the plugin around every zoo test (a test parametrized by
``zoo_model_name``):

* **No state leaks.** :func:`capture` snapshots the process-wide settings a model test can change
  by accident (torch's default dtype, grad mode, deterministic-algorithm and cuDNN/TF32 flags, the
  environment, ``TORCH_HOME``) and every random number generator (Python's, NumPy's, torch's CPU
  and CUDA ones). After the test, :meth:`StateSnapshot.restore` puts all of it back, so test order
  cannot change outcomes. Random generators are restored silently (every model test draws from
  them); any other change is reported by :meth:`StateSnapshot.leaks`, because a test that flips the
  default dtype to float64 is a bug the user wants to hear about.

* **Fault isolation.** :func:`classify` turns the failures that are about one model rather than
  about the check into precise outcomes: a model with no head adapter skips with the registration
  recipe, an out-of-memory error fails with the model, device and the way out, after the memory
  held by the failing frames is released, so the next model starts with a clean allocator.

Nothing here imports torch at module level; a snapshot only looks at torch if it is loaded.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import models

__all__ = ["ModelOutOfMemoryError", "StateSnapshot", "capture", "classify", "is_out_of_memory"]

#: Environment variables that are not the test's doing: pytest sets and clears the first around each
#: phase; torch sets the others once, when a subsystem is first imported or initialised (inductor,
#: triton, CUDA), and they must stay set for it to keep working.
_VOLATILE_ENV = frozenset(
    {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_MODULE_LOADING"}
)


def _torch() -> Any:
    return sys.modules.get("torch")


def _flags(torch: Any) -> dict[str, object]:
    """The global torch switches a test can flip, each read through its public getter."""
    backends = torch.backends
    flags: dict[str, object] = {
        "torch default dtype": torch.get_default_dtype(),
        "torch grad mode (torch.is_grad_enabled())": torch.is_grad_enabled(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.is_deterministic_algorithms_warn_only_enabled()": (
            torch.is_deterministic_algorithms_warn_only_enabled()
        ),
        "torch.backends.cudnn.deterministic": backends.cudnn.deterministic,
        "torch.backends.cudnn.benchmark": backends.cudnn.benchmark,
        "torch.backends.cudnn.allow_tf32": backends.cudnn.allow_tf32,
        "torch.backends.cuda.matmul.allow_tf32": backends.cuda.matmul.allow_tf32,
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
    }
    return flags


def _set_flags(torch: Any, flags: Mapping[str, object]) -> None:
    """Set back only the switches that differ: some setters are costly (``use_deterministic_algorithms``
    imports torch._inductor, seconds on a small machine), and most tests change nothing."""
    current = _flags(torch)
    changed = {name for name, value in flags.items() if current.get(name) != value}
    backends = torch.backends
    if "torch default dtype" in changed:
        torch.set_default_dtype(flags["torch default dtype"])
    if "torch grad mode (torch.is_grad_enabled())" in changed:
        torch.set_grad_enabled(flags["torch grad mode (torch.is_grad_enabled())"])
    if changed & {
        "torch.are_deterministic_algorithms_enabled()",
        "torch.is_deterministic_algorithms_warn_only_enabled()",
    }:
        torch.use_deterministic_algorithms(
            flags["torch.are_deterministic_algorithms_enabled()"],
            warn_only=flags["torch.is_deterministic_algorithms_warn_only_enabled()"],
        )
    attributes = {
        "torch.backends.cudnn.deterministic": (backends.cudnn, "deterministic"),
        "torch.backends.cudnn.benchmark": (backends.cudnn, "benchmark"),
        "torch.backends.cudnn.allow_tf32": (backends.cudnn, "allow_tf32"),
        "torch.backends.cuda.matmul.allow_tf32": (backends.cuda.matmul, "allow_tf32"),
    }
    for name, (owner, attribute) in attributes.items():
        if name in changed:
            setattr(owner, attribute, flags[name])
    if "torch.get_float32_matmul_precision()" in changed:
        torch.set_float32_matmul_precision(flags["torch.get_float32_matmul_precision()"])


@dataclass
class StateSnapshot:
    """Process-wide state at one moment; see the module docstring for what is covered and why."""

    environ: dict[str, str]
    flags: dict[str, object] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)

    def leaks(self, after: StateSnapshot | None = None) -> list[str]:
        """One line per setting that differs between this snapshot and ``after`` (default: now).

        Random generator states are not compared: they are expected to move, and are restored.
        """
        after = after if after is not None else capture()
        lines = [
            f"{name}: {self.flags[name]!r} before, {after.flags[name]!r} after"
            for name in self.flags
            if name in after.flags and after.flags[name] != self.flags[name]
        ]
        before_env = {k: v for k, v in self.environ.items() if k not in _VOLATILE_ENV}
        after_env = {k: v for k, v in after.environ.items() if k not in _VOLATILE_ENV}
        for key in sorted(before_env.keys() | after_env.keys()):
            old, new = before_env.get(key), after_env.get(key)
            if old != new:
                change = "set" if old is None else "removed" if new is None else "changed"
                lines.append(f"environment variable {key} {change}: {old!r} before, {new!r} after")
        return lines

    def restore(self) -> None:
        """Put every captured setting and random generator back as it was."""
        for key in set(os.environ) - set(self.environ) - _VOLATILE_ENV:
            del os.environ[key]
        for key, value in self.environ.items():
            if key not in _VOLATILE_ENV and os.environ.get(key) != value:
                os.environ[key] = value
        torch = _torch()
        if torch is not None and self.flags:
            _set_flags(torch, self.flags)
        if "python" in self.rng:
            random.setstate(self.rng["python"])
        numpy = sys.modules.get("numpy")
        if numpy is not None and "numpy" in self.rng:
            numpy.random.set_state(self.rng["numpy"])
        if torch is not None and "torch" in self.rng:
            torch.random.set_rng_state(self.rng["torch"])
            if "cuda" in self.rng:
                torch.cuda.set_rng_state_all(self.rng["cuda"])


def capture() -> StateSnapshot:
    """Snapshot the environment, torch's global flags and every random generator that is loaded."""
    snapshot = StateSnapshot(environ=dict(os.environ))
    snapshot.rng["python"] = random.getstate()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        snapshot.rng["numpy"] = numpy.random.get_state()
    torch = _torch()
    if torch is not None and hasattr(torch, "get_default_dtype"):
        snapshot.flags = _flags(torch)
        snapshot.rng["torch"] = torch.random.get_rng_state()
        if torch.cuda.is_initialized():  # never initialise CUDA just to look at it
            snapshot.rng["cuda"] = torch.cuda.get_rng_state_all()
    return snapshot


class ModelOutOfMemoryError(RuntimeError):
    """A model ran out of memory; raised instead of the original so its frames (and tensors) are freed."""


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside an exception group (Hypothesis raises one for several distinct failures)."""
    inner_exceptions = getattr(exc, "exceptions", None)  # BaseExceptionGroup, without needing 3.11
    if isinstance(inner_exceptions, tuple) and inner_exceptions:
        for inner in inner_exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of an explicit ``raise ... from`` chain.

    The checks wrap what a model raised in a ``ConformanceFailure`` that says which hook and inputs
    were involved; whether it was an out-of-memory or a missing adapter is in the cause.
    """
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) is an allocation failure, on any device."""
    leaves = [_root_cause(e) for e in _leaves(exc)]
    torch = _torch()
    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    if torch is not None and hasattr(torch, "OutOfMemoryError"):
        oom_types += (torch.OutOfMemoryError,)

    def one(e: BaseException) -> bool:
        if isinstance(e, oom_types):
            return True
        text = str(e).lower()
        return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)

    return bool(leaves) and all(one(e) for e in leaves)


def _release_memory(exc: BaseException) -> None:
    """Drop the tensors that the failed frames still reference, then give cached memory back."""
    for leaf in _leaves(exc):
        e: BaseException | None = leaf
        while e is not None:
            if e.__traceback__ is not None:
                traceback.clear_frames(e.__traceback__)
            e = e.__cause__ if e.__cause__ is not e else None
    gc.collect()
    torch = _torch()
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Fault:
    """What a per-model failure should become: a skip with ``reason``, or a failure with ``error``."""

    skip_reason: str | None = None
    error: BaseException | None = None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def classify(exc: BaseException, model: str, device: str, phase: str) -> Fault | None:
    """The precise outcome for a per-model failure, or ``None`` to let ``exc`` through unchanged."""
    # A NoAdapterError can only exist once heads (and so torch) is loaded: never import it here.
    # A loaded submodule is an attribute of its package; asking that names no module in a string.
    heads = getattr(models, "heads", None)
    no_adapter: tuple[type[BaseException], ...] = (heads.NoAdapterError,) if heads is not None else ()
    leaves = [_root_cause(e) for e in _leaves(exc)]
    if leaves and no_adapter and all(isinstance(e, no_adapter) for e in leaves):
        no_head = getattr(heads, "NoHeadError", ())
        what = "no class head" if isinstance(leaves[0], no_head) else "no head adapter"
        return Fault(skip_reason=f"{model}: {what}: {_one_line(str(leaves[0]))}")
    if is_out_of_memory(exc):
        first = _one_line(str(leaves[0]))[:300] or type(leaves[0]).__name__
        _release_memory(exc)
        return Fault(
            error=ModelOutOfMemoryError(
                f"{model} ran out of memory on {device} during test {phase} "
                f"({type(leaves[0]).__name__}: {first}). The memory it held was released and the "
                f"session goes on. Run it on a device with more memory, or leave it out with "
                f"--zoo-exclude={model}."
            )
        )
    return None
