"""Failure messages that tell a user what to fix, not only that something is wrong.

A conformance check that fails in someone's CI is read by a person who did not write the check.
Every message therefore names the model, the drawn ``num_classes``/batch/input, the hook whose
output was wrong (and where that hook is defined), expected vs found, the defect in words when it
can be recognised (an auxiliary head left alone, a hard-coded ``in_features``, BatchNorm affine
parameters left trainable, a head built on the wrong dtype or device), and how to reproduce it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "ConformanceFailure",
    "FailureContext",
    "exception_defects",
    "hook_origin",
    "parameter_groups",
    "render",
    "shape_defects",
]

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


class ConformanceFailure(AssertionError):
    """A check failed; the message says which model, which inputs, which hook, expected vs found."""


def _expect(condition: bool, message: Callable[[], str]) -> None:
    if not condition:
        raise ConformanceFailure(message())


def hook_origin(obj: object, hook: str) -> str:
    """``Class.hook (file:line)`` for the implementation a check actually called.

    In a factory gate the three hooks are the factory's: the origin is ``create_model``'s.
    """
    if hook in ("build_model", "replace_head", "freeze_backbone") and getattr(obj, "create_model", None):
        return f"{hook_origin(obj, 'create_model')}, the factory"
    for cls in type(obj).__mro__:
        if hook in vars(cls):
            function = inspect.unwrap(vars(cls)[hook])
            if cls.__module__.partition(".")[0] == __name__.partition(".")[0]:  # one of the kit's classes
                return f"{cls.__qualname__}.{hook} (pytest-zoo's default)"
            try:
                path = os.path.relpath(inspect.getsourcefile(function) or "?")
                line = inspect.getsourcelines(function)[1]
            except (OSError, TypeError):
                return f"{cls.__qualname__}.{hook}"
            return f"{cls.__qualname__}.{hook} ({path}:{line})"
    return hook


def current_test() -> str | None:
    """The node id of the running test, from the variable pytest sets for exactly this purpose."""
    value = os.environ.get("PYTEST_CURRENT_TEST")
    return value.rsplit(" (", 1)[0] if value else None


@dataclass
class FailureContext:
    """What a check was doing when it failed: enough to say where to look and to redo it by hand."""

    model: str
    hook: str
    origin: str
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    mode: str | None = None
    #: Python statements that redo the failing step without pytest or Hypothesis.
    reproduce: list[str] = field(default_factory=list)


def render(
    context: FailureContext,
    problem: str,
    *,
    expected: object = None,
    found: object = None,
    defects: Sequence[str] = (),
    details: Iterable[str] = (),
) -> str:
    """The full message: problem, hook, inputs, expected vs found, diagnosis, how to reproduce."""
    inputs = [f"model={context.model}"]
    if context.num_classes is not None:
        inputs.append(f"num_classes={context.num_classes}")
    if context.input_shape is not None:
        inputs.append(f"batch={context.input_shape[0]}")
        inputs.append(f"input shape={tuple(context.input_shape)}")
    if context.mode is not None:
        inputs.append(f"{context.mode} mode")
    lines = [f"{context.model}: {problem}", f"  hook:       {context.hook} -> {context.origin}"]
    lines.append(f"  inputs:     {', '.join(inputs)}")
    if expected is not None or found is not None:
        lines.append(f"  expected:   {expected}")
        lines.append(f"  found:      {found}")
    lines += [f"  {line}" for line in details]
    lines += [f"  defect:     {defect}" for defect in dict.fromkeys(defects)]
    if context.reproduce:
        lines.append("  reproduce:  " + context.reproduce[0])
        lines += [f"              {statement}" for statement in context.reproduce[1:]]
    test = current_test()
    lines.append(
        "  hypothesis: the example Hypothesis drew is printed below; rerunning "
        + (f"pytest '{test}'" if test else "this test")
        + " replays it first (failing examples are kept in .hypothesis/)."
    )
    return "\n".join(lines)


def _under(name: str, prefixes: Iterable[str]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def shape_defects(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    num_classes: int,
    aux_heads: Sequence[str] = (),
) -> list[str]:
    """Name the defects a state_dict shape difference points at, most specific first."""
    defects: list[str] = []
    for key in sorted(found.keys() & expected.keys()):
        got, want = found[key], expected[key]
        if got == want:
            continue
        aux = _under(key, aux_heads)
        if want[:1] == (num_classes,) and got[:1] != (num_classes,):
            where = f"auxiliary head {aux!r}" if aux else f"{key.rpartition('.')[0] or key}"
            defects.append(
                f"{where} still has {got[0]} outputs, not num_classes={num_classes}: "
                + (
                    "replace_head must swap the auxiliary heads too (or build without them, "
                    "e.g. aux_logits=False)"
                    if aux
                    else "replace_head did not resize this layer"
                )
            )
        elif len(got) == len(want) >= 2 and got[0] == want[0] and got[1:] != want[1:]:
            defects.append(
                f"{key} takes {got[1]} input features where the layer it replaced took {want[1]}: "
                "a hard-coded in_features? Build the new head from the old one "
                "(nn.Linear(old.in_features, num_classes, ...))"
            )
    for key in sorted(expected.keys() - found.keys()):
        aux = _under(key, aux_heads)
        if aux:
            defects.append(f"auxiliary head {aux!r} is gone: replace_head removed it instead of resizing it")
        elif key.endswith(".bias") and key.rpartition(".")[0] + ".weight" in found:
            defects.append(
                f"{key} is missing: the new layer lacks a parameter the builder's has (bias=False?)"
            )
    for key in sorted(found.keys() - expected.keys()):
        if key.endswith(".bias") and key.rpartition(".")[0] + ".weight" in expected:
            defects.append(
                f"{key} is unexpected: the new layer has a bias the builder's does not (bias=True?)"
            )
    return defects


def parameter_groups(model: nn.Module, names: Iterable[str], limit: int = 4) -> list[str]:
    """Group parameter names by the kind of module that owns them, naming BatchNorm affine ones.

    ``34 BatchNorm2d affine parameters (bn1.weight, bn1.bias, ...)`` says what went wrong in a
    way that a sorted list of 34 names does not.
    """
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        owner_path = name.rpartition(".")[0]
        try:
            owner = model.get_submodule(owner_path)
        except AttributeError:
            groups.setdefault("parameters", []).append(name)
            continue
        kind = type(owner).__name__
        label = f"{kind} affine parameters" if isinstance(owner, _BATCH_NORMS) else f"{kind} parameters"
        groups.setdefault(label, []).append(name)
    rendered = []
    for label, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        shown = ", ".join(members[:limit]) + (", ..." if len(members) > limit else "")
        rendered.append(f"{len(members)} {label} ({shown})")
    return rendered


def exception_defects(error: BaseException) -> list[str]:
    """Recognise the exceptions a broken head or a missing adapter typically raises."""
    text = str(error)
    if "mat1 and mat2 shapes cannot be multiplied" in text:
        return [
            "a head's in_features does not match the features that reach it (a hard-coded "
            "in_features?): build the new head from the old one (nn.Linear(old.in_features, ...))"
        ]
    if type(error).__name__ == "NoAdapterError":
        return ["pytest-zoo does not know this model class's head: see the register_adapter call above"]
    if "Expected all tensors to be on the same device" in text or "should be the same" in text:
        return ["the new head is on a different device or dtype than the model it was put into"]
    return []
