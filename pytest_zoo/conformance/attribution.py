"""Where a wrong value starts, so that a value check blames the hooks only for what the hooks did.

A NaN in a model's output says nothing about who put it there. torch 2.14.1's bfloat16 ``Conv3d``
returns NaN for one-frame clips now and then (the R3D/MC3/R(2+1)D stem); a value check that blamed
``freeze_backbone`` for it would fail a correct project at random. So the checks that can hit a
kernel problem (autocast, channels_last, finite outputs, batch equivalence) run under a
:class:`Recorder`: forward hooks on every module, on the failing run itself, so that a
nondeterministic kernel is caught in the act rather than hunted on a rerun it may not repeat.

:func:`origin` then finds the first module, in execution order, whose inputs were fine and whose
output was not: non-finite, or (a :class:`Divergence`, traced on a recorded rerun: a mismatch of
finite values is deterministic) beyond the check's tolerance from its reference run. Forward hooks
fire when a module returns, children before their parent, so the innermost module wins; a
container is named only when its own code, between its children, made the value.
:func:`changed_modules` says which modules the hooks introduced or changed (new objects, new or
rewritten tensors, a patched ``forward``, hooks of their own, the class-dependent head): a problem
that starts anywhere else is torch's or the architecture's.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.cache import fingerprint
from .reports import named_leaves

__all__ = [
    "Call",
    "Divergence",
    "Origin",
    "Recorder",
    "Snapshot",
    "batch_pairs",
    "changed_modules",
    "layout_pairs",
    "origin",
    "recording",
    "tolerance_scale",
    "within_tolerance",
]


def tolerance_scale(reference: torch.Tensor) -> float:
    """``max(1, max |reference|)``: what ``atol`` is relative to, so that a randomly initialised
    network whose values reach 1e8 (inception_v3) is judged like one whose values reach 1."""
    finite = reference.detach().abs().nan_to_num(0.0, 0.0, 0.0)
    return max(1.0, float(finite.max())) if reference.numel() else 1.0


def within_tolerance(reference: torch.Tensor, candidate: torch.Tensor, *, atol: float, rtol: float) -> bool:
    """Whether ``candidate`` is within ``atol * scale + rtol * |reference|`` of ``reference``
    (:func:`tolerance_scale`); NaN equals NaN (a problem of its own, reported as non-finite)."""
    a = reference.detach()
    b = candidate.detach().to(device=a.device, dtype=a.dtype)
    return bool(torch.allclose(a, b, atol=atol * tolerance_scale(a), rtol=rtol, equal_nan=True))


# -- what the hooks did -----------------------------------------------------------------------------


def _signature(module: nn.Module) -> tuple[object, ...]:
    """What a hook changes when it changes a module's computation (``requires_grad`` and the
    ``train`` flag are not among them: a value check sets the mode itself)."""
    own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    patched = sorted(k for k, v in vars(module).items() if callable(v) and not isinstance(v, nn.Module))
    return (
        type(module),
        tuple((name, id(tensor), fingerprint(tensor)) for name, tensor in own),
        tuple(patched),
        tuple(module._forward_hooks),
        tuple(module._forward_pre_hooks),
    )


@dataclass(frozen=True)
class Snapshot:
    """The as-built model's modules, taken before the hooks run. The modules are held, so that
    no id is reused while the snapshot lives."""

    modules: dict[int, tuple[nn.Module, tuple[object, ...]]]

    @classmethod
    def of(cls, model: nn.Module) -> Snapshot:
        return cls({id(m): (m, _signature(m)) for m in model.modules()})


def changed_modules(before: Snapshot, hooked: nn.Module, head_parameters: Collection[str] = ()) -> set[str]:
    """The paths of ``hooked``'s modules that the hooks introduced or changed, and the owners of
    ``head_parameters`` (the class-dependent head, however the hook rewrote it)."""
    changed = {path.rpartition(".")[0] for path in head_parameters}
    for path, module in hooked.named_modules():
        seen = before.modules.get(id(module))
        if seen is None or seen[1] != _signature(module):
            changed.add(path)
    return changed


# -- recording ------------------------------------------------------------------------------------


class _Flags:
    """One 0-d sum per floating leaf, finite exactly when the leaf is (NaN and inf propagate; a
    float32 sum overflows only for values beyond 1e30): one pass, no mask, and read only when a
    check failed, so a GPU never waits for it.

    Within a run most tensors are seen twice or more, as one module's output and the next ones'
    input (a DenseNet layer takes every earlier feature map of its block), so the sum of a tensor
    whose version counter has not moved since it was summed is reused: any in-place write (a
    ``ReLU(inplace=True)``, through a view too) bumps the counter, and the same values give the
    same sum. A tensor without a counter (made under ``inference_mode``) is summed every time.
    """

    def __init__(self) -> None:
        self._sums: dict[int, tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = {}

    def clear(self) -> None:
        self._sums.clear()

    def __call__(self, value: object) -> list[torch.Tensor]:
        return [self._sum(t) for t in named_leaves(value).values() if t.is_floating_point()]

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            version = tensor._version
        except RuntimeError:  # an inference tensor keeps no version counter
            return tensor.detach().sum(dtype=torch.float32)
        held = self._sums.get(id(tensor))
        if held is not None and held[0]() is tensor and held[1] == version:
            return held[2]
        flag = tensor.detach().sum(dtype=torch.float32)
        self._sums[id(tensor)] = (weakref.ref(tensor), version, flag)
        return flag


def _kept(value: object) -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in named_leaves(value).items() if t.is_floating_point()}


@dataclass
class Call:
    """One module call of a recorded run: its inputs' and outputs' finiteness (and values, when kept)."""

    path: str
    module: nn.Module
    #: The how-many-th call of this path within its run: the key that pairs it with another run's.
    occurrence: int
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor] = field(default_factory=list)
    #: The floating output leaves' shapes, and the first one's dtype.
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dtype: torch.dtype | None = None
    kept_inputs: dict[str, torch.Tensor] | None = None
    kept_outputs: dict[str, torch.Tensor] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.path, self.occurrence

    def finite_inputs(self) -> bool:
        return all(bool(torch.isfinite(flag)) for flag in self.inputs)

    def finite_outputs(self) -> bool:
        return all(bool(torch.isfinite(flag)) for flag in self.outputs)


class Recorder:
    """Forward hooks on every module of ``model``: each top-level call is a run, a list of
    :class:`Call` in the order the modules returned. ``keep`` also clones every input and output
    (for a divergence); otherwise a call costs a sum per tensor not seen before (see :class:`_Flags`).
    Use it as a context manager: the hooks are removed on exit, so the session's cached model goes
    back without them."""

    def __init__(self, model: nn.Module, *, keep: bool = False, values: bool = True) -> None:
        self.model = model
        self.keep = keep
        #: ``False``: shapes only (a geometry probe), no reduction at all.
        self.values = values
        self.runs: list[list[Call]] = []
        self._open: dict[int, list[Call]] = {}
        self._counts: dict[str, int] = {}
        self._handles: list[Any] = []
        self._flags = _Flags()

    def __enter__(self) -> Recorder:
        for path, module in self.model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # TorchScript runs no Python hooks; its caller is recorded instead
            self._handles.append(module.register_forward_pre_hook(self._before(path), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._after(), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._flags.clear()

    def _before(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if module is self.model:
                self.runs.append([])
                self._counts.clear()
                self._flags.clear()
            occurrence = self._counts.get(path, 0)
            self._counts[path] = occurrence + 1
            call = Call(path, module, occurrence, self._flags([args, kwargs]) if self.values else [])
            if self.keep:
                call.kept_inputs = _kept([args, kwargs])
            self._open.setdefault(id(module), []).append(call)

        return hook

    def _after(self) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
            pending = self._open.get(id(module))
            if not pending or not self.runs:
                return
            call = pending.pop()
            call.outputs = self._flags(output) if self.values else []
            leaves = [t for t in named_leaves(output).values() if t.is_floating_point()]
            call.shapes = [tuple(t.shape) for t in leaves]
            call.dtype = leaves[0].dtype if leaves else None
            if self.keep:
                call.kept_outputs = _kept(output)
            self.runs[-1].append(call)

        return hook


@contextlib.contextmanager
def recording(model: nn.Module, *, enabled: bool = True, keep: bool = False) -> Iterator[Recorder | None]:
    """A :class:`Recorder` on ``model`` when ``enabled``, else nothing recorded."""
    if not enabled:
        yield None
        return
    with Recorder(model, keep=keep) as recorder:
        yield recorder


# -- finding the start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """How a mismatch check's runs pair up: each pair is ``(reference run, candidate run, sample)``,
    where ``sample`` slices the reference's batched values (``None``: compare them whole)."""

    pairs: Callable[[int], list[tuple[int, int, int | None]]]
    atol: float
    rtol: float


def layout_pairs(runs: int) -> list[tuple[int, int, int | None]]:
    """Run 1 (another memory format or precision) against run 0 (eager), whole."""
    return [(0, 1, None)] if runs >= 2 else []


def batch_pairs(runs: int) -> list[tuple[int, int, int | None]]:
    """Run 0 is the batch; run ``i + 1`` is sample ``i`` alone, against row ``i`` of the batch's."""
    return [(0, i + 1, i) for i in range(runs - 1)]


@dataclass(frozen=True)
class Origin:
    """The module where a wrong value starts, and whether the hooks introduced or changed it."""

    path: str
    kind: str
    dtype: torch.dtype | None
    touched: bool
    #: ``"non-finite"`` or ``"diverging"``: what went wrong there.
    what: str
    #: The module's own parameters or buffers hold NaN/inf: state, not a kernel.
    bad_state: bool = False

    def where(self) -> str:
        dtype = f", {self.dtype}" if self.dtype is not None else ""
        return f"'{self.path or '<the model itself>'}' ({self.kind}{dtype})"

    def blames_torch(self) -> bool:
        return not self.touched and not self.bad_state

    def skip_reason(self, check: str) -> str:
        return (
            f"{check}: the {self.what} values start in {self.where()}, a module the hooks did not "
            f"introduce or change, from {'finite' if self.what == 'non-finite' else 'matching'} inputs "
            f"and state: torch {torch.__version__}'s kernel or the architecture's problem, not the hooks'"
        )

    def blame(self, hook: str) -> str:
        if self.touched:
            return f"the {self.what} values start in {self.where()}, which {hook} introduced or changed"
        return (
            f"the {self.what} values start in {self.where()}, whose own parameters or buffers are not finite"
        )


def _first_nonfinite(runs: list[list[Call]]) -> Call | None:
    for run in runs:
        for call in run:
            if not call.finite_outputs() and call.finite_inputs():
                return call
    return None


def _agree(
    reference: dict[str, torch.Tensor],
    candidate: dict[str, torch.Tensor],
    sample: int | None,
    spec: Divergence,
) -> bool | None:
    """Whether two calls' values agree; ``None`` when they cannot be paired (another structure)."""
    if reference.keys() != candidate.keys():
        return None
    for name, b in candidate.items():
        a = reference[name]
        if sample is not None and a.dim() and b.dim() and a.shape[0] != b.shape[0] and b.shape[0] == 1:
            a = a[sample : sample + 1]
        if a.shape != b.shape:
            return None
        if not within_tolerance(a, b, atol=spec.atol, rtol=spec.rtol):
            return False
    return True


def _first_divergent(runs: list[list[Call]], spec: Divergence) -> Call | None:
    for r, c, sample in spec.pairs(len(runs)):
        reference = {call.key: call for call in runs[r]}
        for call in runs[c]:
            other = reference.get(call.key)
            if other is None or call.kept_outputs is None or other.kept_outputs is None:
                continue
            assert call.kept_inputs is not None and other.kept_inputs is not None
            if _agree(other.kept_outputs, call.kept_outputs, sample, spec) is False and _agree(
                other.kept_inputs, call.kept_inputs, sample, spec
            ):
                return call
    return None


def origin(
    recorder: Recorder | None,
    changed: Collection[str],
    spec: Divergence | None = None,
) -> Origin | None:
    """Where the recorded runs' problem starts: a non-finite value first (it explains any mismatch),
    else, for a :class:`Divergence` recorded with ``keep``, the first diverging module."""
    if recorder is None:
        return None
    call, what = _first_nonfinite(recorder.runs), "non-finite"
    if call is None and spec is not None and recorder.keep:
        call, what = _first_divergent(recorder.runs, spec), "diverging"
    if call is None:
        return None
    state = [*call.module.parameters(recurse=False), *call.module.buffers(recurse=False)]
    bad_state = any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in state)
    return Origin(call.path, type(call.module).__name__, call.dtype, call.path in changed, what, bad_state)
