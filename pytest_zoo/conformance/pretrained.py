"""The body of ``test_pretrained_weights_reach_model``: the served checkpoint, bit for bit, after the hooks.

Weights that never reach the fine-tuned model keep every shape, key and ``requires_grad`` flag
right, so no other check can see them. Here every backbone tensor of the model the hooks return is
compared with the checkpoint its build was served (:mod:`pytest_zoo.weights.serving`): the
class-dependent head, the layers ``replace_head`` introduced and the declared ``reinitialised``
parameters are excepted. Which checkpoint tensor a model tensor should hold is known from the load
itself where a load wrote it (:mod:`.loadlog`), else from its name, aligned with the checkpoint's
keys under whatever prefix the model puts them (a detection model's ``backbone.body.``).
A mismatch is classified (never loaded, or changed after loading), blamed on the hook in which it
arose, and explained from what the load calls reported: a key prefix under ``strict=False``, keys
filtered away, a re-initialisation after loading, no weights requested.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..models.meta import require_values
from ..models.reference import SwapTrace
from . import task_io as tasks
from .failures import ConformanceFailure, render
from .hooks import _context, _freeze, _raises_as_failure, _swap, _swap_steps
from .loadlog import LoadLog, build_log, recording

if TYPE_CHECKING:
    from .gate import Gate

#: How many tensor names a failure lists per category.
_SHOWN = 5

_NOT_REQUESTED = (
    "no pretrained weights were requested: the build asked torchvision for no checkpoint (weights=None "
    "where weights='DEFAULT' was meant: a pretrained flag read the wrong way round, or ignored)"
)
_REINITIALISED = (
    "a re-initialisation after loading: these tensors held the checkpoint's values once load_state_dict "
    "wrote them and were overwritten afterwards (an init_weights / model.apply(init) meant for the new "
    "head ran over the whole model): initialise only the new layers, or before loading; if the recipe "
    "re-initialises them on purpose, declare them: reinitialised = ('layer4.*',) (fnmatch patterns)"
)


def _aligned(names: Mapping[str, tuple[int, ...]], state: Mapping[str, Any]) -> dict[str, str]:
    """Model name -> checkpoint key, under the one prefix most names agree on (``""`` mostly)."""
    votes: Counter[str] = Counter()
    for name, shape in names.items():
        parts = name.split(".")
        for i in range(len(parts)):
            value = state.get(".".join(parts[i:]))
            if isinstance(value, torch.Tensor) and tuple(value.shape) == shape:
                votes[".".join(parts[:i])] += 1
                break
    if not votes:
        return {}
    prefix = votes.most_common(1)[0][0]
    lead = prefix + "." if prefix else ""
    found = {}
    for name, shape in names.items():
        key = name[len(lead) :] if name.startswith(lead) else None
        value = state.get(key) if key is not None else None
        if isinstance(value, torch.Tensor) and tuple(value.shape) == shape:
            found[name] = key
    return found  # type: ignore[return-value]


class _Served:
    """The checkpoints a log read, loaded once each (memory-mapped), and the expected value lookup."""

    def __init__(self, log: LoadLog) -> None:
        self.log = log
        self._states: dict[str, Mapping[str, Any]] = {}

    @property
    def paths(self) -> list[str]:
        return list(dict.fromkeys(read.path for read in self.log.reads))

    def state(self, path: str) -> Mapping[str, Any]:
        if path not in self._states:
            self._states[path] = self.log.load_state(path)
        return self._states[path]

    def expected(self, model: nn.Module, trace: SwapTrace | None) -> dict[str, tuple[torch.Tensor, str]]:
        """Returned-model name -> (the checkpoint tensor it should hold, its checkpoint key)."""
        tensors = {k: t for k, t in model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)}
        original = {k: trace.original(k) if trace else k for k in tensors}
        shapes = {original[k]: tuple(t.shape) for k, t in tensors.items()}
        found: dict[str, tuple[torch.Tensor, str]] = {}
        for path in self.paths:
            state = self.state(path)
            aligned = _aligned(shapes, state)
            for name in tensors:
                key = aligned.get(original[name])
                if key is not None and name not in found:
                    found[name] = (state[key], key)
        for name, tensor in tensors.items():
            source = self.log.loaded_from(tensor)
            if source is not None:  # the load itself says where it came from
                index, key = source
                state = self.state(self.log.reads[index].path)
                if key in state and tuple(state[key].shape) == tuple(tensor.shape):
                    found[name] = (state[key], key)
        return found


def _differs(tensor: torch.Tensor, expected: torch.Tensor) -> bool:
    value = tensor.detach()
    return value.dtype != expected.dtype or not torch.equal(value.cpu(), expected)


def _wrong(model: nn.Module, served: _Served, trace: SwapTrace | None) -> set[int]:
    """``id`` of every tensor of ``model`` that differs from the checkpoint value it should hold."""
    tensors = model.state_dict(keep_vars=True)
    return {
        id(tensors[n])
        for n, (value, _) in served.expected(model, trace).items()
        if _differs(tensors[n], value)
    }


def pretrained_weights_reach_model(gate: Gate, name: str, device: torch.device) -> None:
    require_values(device, "comparing the fine-tuned model with the served checkpoint bit for bit")
    io = tasks.task_io(name)
    model = gate._model(name, device)
    built = build_log(model)
    log = LoadLog(list(built.reads), list(built.calls), dict(built.loaded), list(built.alive))
    # No torchvision checkpoint has 5 classes, so the class-dependent head has other shapes than any
    # checkpoint tensor and is never expected to hold one: it needs no exception of its own.
    n = max(5, io.min_classes)
    served = _Served(log)
    wrong_built = _wrong(model, served, None)
    built_ids = {id(t) for t in model.state_dict(keep_vars=True).values()}
    swapped, trace = model, None
    if io.has_head:
        steps = _swap_steps(gate, name, n, freeze=True)
        context = _context(gate, name, "replace_head", n=n, steps=steps)
        with _raises_as_failure(gate, context, "replace_head"), recording(log, "replace_head"):
            swapped, trace = _swap(gate, model, n)
        wrong_swapped = _wrong(swapped, served, trace)
        swapped_ids = {id(t) for t in swapped.state_dict(keep_vars=True).values()}
        context = _context(gate, name, "freeze_backbone", n=n, steps=steps)
        with _raises_as_failure(gate, context, "freeze_backbone"), recording(log, "freeze_backbone"):
            swapped = _freeze(gate, swapped)
    else:
        wrong_swapped, swapped_ids = wrong_built, built_ids
    if not log.reads:
        _nothing_requested(gate, name)
    stages = (built_ids, wrong_built), (swapped_ids, wrong_swapped)
    _judge(gate, name, n, swapped, trace, served, stages)


def _nothing_requested(gate: Gate, name: str) -> None:
    """Neither the build nor the hooks asked for weights: a skip, or a failure if declared."""
    if not gate.pretrained:
        import pytest

        pytest.skip(
            f"{name}: the build requested no pretrained weights; declare pretrained = True on "
            f"{type(gate).__qualname__} to require them"
        )
    context = _context(gate, name, "build_model", steps=[f"model = t.build_model({name!r})"])
    raise ConformanceFailure(
        render(
            context,
            "the class declares pretrained = True, but the build requested no pretrained weights",
            expected="a torchvision checkpoint read (weights='DEFAULT', an enum, weights_backbone, "
            "Weights.get_state_dict or torch.hub.load_state_dict_from_url)",
            found="no checkpoint requested",
            defects=[_NOT_REQUESTED],
        )
    )


def _judge(
    gate: Gate,
    name: str,
    n: int,
    model: nn.Module,
    trace: SwapTrace | None,
    served: _Served,
    stages: tuple[tuple[set[int], set[int]], tuple[set[int], set[int]]],
) -> None:
    tensors = model.state_dict(keep_vars=True)

    def judged(key: str) -> bool:
        original = trace.original(key) if trace is not None else key
        if trace is not None and key not in trace.kept:
            return False  # a layer replace_head introduced
        return not any(fnmatch.fnmatchcase(k, p) for p in gate.reinitialised for k in (key, original))

    # Integer tensors (num_batches_tracked) hold no value a load could be told apart by.
    expected = {
        k: v for k, v in served.expected(model, trace).items() if judged(k) and v[0].is_floating_point()
    }
    never: list[tuple[str, str]] = []
    changed: list[tuple[str, str]] = []
    for key, (value, checkpoint_key) in expected.items():
        if _differs(tensors[key], value):
            (changed if served.log.loaded_from(tensors[key]) else never).append((key, checkpoint_key))
    if expected and not never and not changed:
        return
    bad = [tensors[k] for k, _ in [*never, *changed]]
    hook = _blame(bad, stages)
    steps = _swap_steps(gate, name, n, freeze=True)
    context = _context(gate, name, hook, n=n, steps=steps)
    files = ", ".join(sorted({p.rsplit("/", 1)[-1] for p in served.paths}))
    if not expected:
        problem = (
            f"no tensor of the fine-tuned model corresponds to a tensor of the served checkpoint ({files})"
        )
    else:
        problem = (
            f"the pretrained weights did not reach the fine-tuned model: {len(never)} backbone tensors were "
            f"never loaded, {len(changed)} changed after loading"
        )
    details = [
        f"{label}: " + _listed([k for k, _ in items])
        for label, items in (("never loaded", never), ("changed after loading", changed))
        if items
    ]
    raise ConformanceFailure(
        render(
            context,
            problem,
            expected=f"all {len(expected)} backbone tensors bit-identical to the served checkpoint {files}",
            found=f"{len(expected) - len(never) - len(changed)} loaded, {len(never)} never loaded, "
            f"{len(changed)} changed after loading",
            details=details,
            defects=_causes(served.log, never, changed, hook, stages[0][0], bad),
        )
    )


def _listed(keys: Sequence[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _blame(bad: Sequence[torch.Tensor], stages: tuple[tuple[set[int], set[int]], ...]) -> str:
    """The first hook after which one of the ``bad`` tensors existed and was already wrong."""
    for hook, (present, wrong) in zip(("build_model", "replace_head"), stages, strict=True):
        if any(id(t) in present and id(t) in wrong for t in bad):
            return hook
    return "freeze_backbone"


def _causes(
    log: LoadLog,
    never: Sequence[tuple[str, str]],
    changed: Sequence[tuple[str, str]],
    hook: str,
    built: set[int],
    bad: Sequence[torch.Tensor],
) -> list[str]:
    causes = []
    if changed:
        causes.append(_REINITIALISED)
    if not never:
        return causes
    missing_keys = {checkpoint_key for _, checkpoint_key in never}
    for call in log.calls:
        if call.strict:
            continue
        prefix = _prefix(call)
        if prefix:
            causes.append(
                f"a key prefix under strict=False: the state_dict given to {call.module}.load_state_dict"
                f"(strict=False) in {call.phase} has its keys under {prefix!r}, which the model's keys lack, "
                "so it loaded none of them and raised nothing (DataParallel saves under 'module.', Lightning "
                f"under 'model.'): strip it, {{k.removeprefix({prefix!r}): v for k, v in state.items()}}, "
                "and load with strict=True"
            )
            continue
        dropped = [key for key in call.missing if key in missing_keys]
        if dropped:
            causes.append(
                f"keys filtered away: the state_dict given to {call.module}.load_state_dict(strict=False) in "
                f"{call.phase} lacks {len(dropped)} keys the served checkpoint has ({_listed(dropped)}), and "
                "strict=False let it pass: filter out exactly the head's keys, and check the missing_keys "
                "load_state_dict returns"
            )
    if (
        hook == "replace_head"
        and any(id(t) not in built for t in bad)
        and not any(r.phase == "replace_head" for r in log.reads)
    ):
        causes.append(
            "replace_head returned a rebuilt model and requested no pretrained weights for it: "
            + _NOT_REQUESTED.partition(": ")[2]
        )
    if not causes and not any(call.served for call in log.calls):
        causes.append(
            "the served checkpoint was read but none of its tensors was given to load_state_dict of this "
            "model (loaded into another model, or not loaded at all)"
        )
    return causes or ["these tensors hold other values than the checkpoint's and no load wrote them"]


def _prefix(call: Any) -> str:
    """The prefix on a ``strict=False`` call's unexpected keys that, removed, names the module's own keys."""
    own = set(call.own)
    found: Counter[str] = Counter()
    for key in call.unexpected:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in own:
                found[".".join(parts[:i]) + "."] += 1
                break
    if not found:
        return ""
    prefix, count = found.most_common(1)[0]
    return prefix if count * 2 >= len(call.unexpected) else ""
