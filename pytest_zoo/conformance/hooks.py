"""Running a gate's hooks as the checks do, and the failure context (reproduce lines) of each step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from torch import nn

from ..models.cache import active_cache
from ..models.reference import SwapTrace, state_shapes, tensor_names, trace_swap
from .failures import ConformanceFailure, FailureContext, exception_defects, hook_origin, render

if TYPE_CHECKING:
    from .gate import Gate


def run_examples(check: Callable[[], None]) -> None:
    """Run a check's ``@given`` examples, then let go of what its test function closed over.

    Hypothesis' wrapper and its handle form a reference cycle, so whatever the test function
    closes over (the session's build of the model, model-sized) outlived the test until the next
    full garbage collection: a quarter of a second or more with torch loaded, paid when the cache
    released the model. The examples have run, so the cells are emptied (``check()`` is the last
    statement of every check).
    """
    try:
        check()
    finally:
        inner = getattr(getattr(check, "hypothesis", None), "inner_test", None)
        for cell in getattr(inner, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                del cell.cell_contents


def _fresh(gate: Gate, model: nn.Module) -> nn.Module:
    """``model`` back in its as-built state (head, flags, buffers, hooks) for the next example.

    Use the returned model: a model whose weights were changed in place is rebuilt instead.
    """
    return active_cache().restore(model)


def _swap(gate: Gate, model: nn.Module, n: int) -> tuple[nn.Module, SwapTrace]:
    """Run the ``replace_head`` hook; the model it returns, and what it kept and introduced."""
    before, shapes = tensor_names(model), state_shapes(model)
    returned = gate.replace_head(model, n)
    gate._swapped_in_place = returned is None
    if returned is not None and not isinstance(returned, nn.Module):
        raise TypeError(
            f"replace_head returned {type(returned).__qualname__}, not an nn.Module: return the model "
            "to use from now on (or None after an in-place swap)"
        )
    swapped = model if returned is None else returned
    return swapped, trace_swap(before, swapped, shapes)


def _freeze(gate: Gate, model: nn.Module) -> nn.Module:
    """Run the ``freeze_backbone`` hook; a hook that returns a model hands that one on."""
    returned: object = gate.freeze_backbone(model)  # type: ignore[func-returns-value]
    return returned if isinstance(returned, nn.Module) else model


def _hooked(
    gate: Gate, model: nn.Module, n: int, *, has_head: bool, freeze: bool
) -> tuple[nn.Module, SwapTrace]:
    """``replace_head`` (then ``freeze_backbone``) on ``model``, as the checks that train run
    them; a model without a class head (RAFT) is used as it is."""
    if not has_head:
        return model, trace_swap(tensor_names(model), model)
    swapped, trace = _swap(gate, model, n)
    return (_freeze(gate, swapped) if freeze else swapped), trace


def _swap_steps(gate: Gate, name: str, n: int, *, freeze: bool = False, tail: str = "") -> list[str]:
    """The reproduce lines that rebuild what a check ran, as the hooks were actually used."""
    if gate.create_model is not None:  # a factory gate: its factory is what to call
        return [f"model = t.create_model({name!r}, {n})", *([tail] if tail else [])]
    if getattr(gate, "_swapped_in_place", False):
        lines = [f"model = t.build_model({name!r}); t.replace_head(model, {n})"]
    else:
        lines = [f"model = t.replace_head(t.build_model({name!r}), {n})"]
    if freeze:
        lines[0] += "; t.freeze_backbone(model)"
    return [*lines, tail] if tail else lines


def _context(
    gate: Gate,
    name: str,
    hook: str,
    *,
    n: int | None = None,
    shape: tuple[int, ...] | None = None,
    mode: str | None = None,
    steps: Sequence[str] = (),
) -> FailureContext:
    cls = type(gate).__qualname__.split(".")[0]
    imports = ["import torch"] if any("torch." in step for step in steps) else []
    setup = [f"from {type(gate).__module__} import {cls}", f"t = {cls}(); t.model_name = {name!r}"]
    reproduce = [*imports, *setup, *steps] if steps else []
    origin = hook_origin(gate, hook)
    return FailureContext(name, hook, origin, n, shape, mode, reproduce)


@contextlib.contextmanager
def _raises_as_failure(gate: Gate, context: FailureContext, step: str) -> Iterator[None]:
    """Turn an exception from a hook or a forward pass into a failure with the full context."""
    try:
        yield
    except ConformanceFailure:
        raise
    except Exception as error:
        problem = f"{step} raised {type(error).__name__}: {error}"
        raise ConformanceFailure(render(context, problem, defects=exception_defects(error))) from error
