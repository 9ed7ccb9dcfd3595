"""What every value check is made of: the inputs it runs, the report it returns, the words it uses.

A check body (:mod:`.training`, :mod:`.equivalence`, :mod:`.round_trip`, :mod:`.deployment`)
never raises for a failing model: it returns a :class:`CheckReport` whose problems are complete
sentences, built from the helpers here so that every check names outputs, tensors and errors alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckReport",
    "Inputs",
    "Score",
    "call_model",
    "describe_error",
    "listed",
    "model_device",
    "named_leaves",
    "needs_values",
    "nonfinite",
]

#: Positional and keyword arguments of one ``model(*args, **kwargs)`` call: what ``TaskIO.inputs`` returns.
Inputs = tuple[tuple[Any, ...], dict[str, Any]]
#: Turns a model output into the scalar to backpropagate (``TaskIO.score``, or a real loss).
Score = Callable[[object], torch.Tensor]


@dataclass(frozen=True)
class CheckReport:
    """The verdict of one value check.

    ``problems`` are complete sentences naming what is wrong (empty when it passed); ``expected``
    and ``found`` are small comparable summaries for the failure layout; ``details`` are extra
    lines (e.g. the largest differences). ``skipped`` is set, and nothing was run, when the check
    cannot run here (the meta device has no values): the caller turns it into ``pytest.skip``.
    """

    check: str
    problems: tuple[str, ...] = ()
    expected: Mapping[str, object] = field(default_factory=dict)
    found: Mapping[str, object] = field(default_factory=dict)
    details: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is None and not self.problems


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def needs_values(
    check: str, model: nn.Module, device: torch.device | str | None = None
) -> CheckReport | None:
    """A skipped report when ``model`` (or ``device``) is on the meta device, else ``None``."""
    kind = torch.device(device).type if device is not None else model_device(model).type
    if kind == "meta" or any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return CheckReport(
            check,
            skipped=(
                f"{check} needs tensor values, which --zoo-device=meta does not have; "
                "structural mode checks shapes only, run it with --zoo-device=cpu"
            ),
        )
    return None


def named_leaves(output: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a model output, by path: ``output``, ``aux1``, ``out``, ``[0].boxes``, ``[1]``.

    Named tuples (``GoogLeNetOutputs``) give their field names, dicts their keys, lists and plain
    tuples their indices; anything else (``None``, numbers) holds no tensor.
    """
    if isinstance(output, torch.Tensor):
        return {prefix or "output": output}
    leaves: dict[str, torch.Tensor] = {}
    if isinstance(output, tuple) and hasattr(output, "_asdict"):
        items: Iterable[tuple[str, object]] = ((f".{k}", v) for k, v in output._asdict().items())
    elif isinstance(output, Mapping):
        items = ((f".{k}", v) for k, v in output.items())
    elif isinstance(output, list | tuple):
        items = ((f"[{i}]", v) for i, v in enumerate(output))
    else:
        return leaves
    for suffix, value in items:
        path = f"{prefix}{suffix}"
        leaves.update(named_leaves(value, path.lstrip(".")))
    return leaves


def nonfinite(tensor: torch.Tensor) -> str | None:
    """``"3 NaN, 1 inf of 40 values"`` for a floating tensor with non-finite values, else ``None``."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return None
    values = tensor.detach()
    # One reduction decides the common case: NaN and inf propagate through a sum, so a finite sum
    # means finite values (a sum that overflows is counted exactly below, like a non-finite one).
    if torch.isfinite(values.sum()):
        return None
    nan = int(torch.isnan(values).sum())
    inf = int(torch.isinf(values).sum())
    if not nan and not inf:
        return None
    return f"{nan:,} NaN, {inf:,} inf of {values.numel():,} values"


def listed(names: Iterable[str], noun: str = "", limit: int = 5) -> str:
    """``"20 layers (bn1, layer1.0.bn1, ...)"``: a count, what they are, the first few names."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit]) + (", ..." if len(ordered) > limit else "")
    return f"{len(ordered)} {noun} ({shown})" if noun else f"{len(ordered)} ({shown})"


def describe_error(step: str, error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{step} raised {type(error).__name__}: {text[0][:300] if text else ''}"


def call_model(model: nn.Module, inputs: Inputs) -> object:
    args, kwargs = inputs
    return model(*args, **kwargs)
