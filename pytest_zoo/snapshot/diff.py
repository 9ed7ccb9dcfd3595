"""Comparing two snapshots' facts: every field that changed, ``before -> after``, and nothing else.

Fingerprint summaries compare within a tolerance (float summation order and kernel choice move
them a little between runs; a changed initialiser moves them a lot); every other fact compares
exactly. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .file import plain

__all__ = ["FEATURE_TOLERANCE", "PARAM_TOLERANCE", "Change", "Tolerance", "diff_facts", "format_changes"]


@dataclass(frozen=True)
class Tolerance:
    """How far a fingerprint summary may move before it counts as changed.

    Summaries are ``[mean, std]`` pairs. Both numbers are judged on the scale of the pair (the
    larger magnitude of the four numbers): a zero-mean tensor's mean is noise around zero, so only
    a shift that matters relative to its spread is a change. Two numbers match when
    ``|a - b| <= rel * scale + abs``; NaN matches only NaN (an all-constant tensor has std 0, and
    the scale then is its value, so a constant fill that changes is caught too).
    """

    rel: float
    abs: float

    def close(self, before: list[float], after: list[float]) -> bool:
        if len(before) != len(after):
            return False
        finite = [abs(x) for x in (*before, *after) if math.isfinite(x)]
        scale = max(finite, default=0.0)
        return all(
            a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= self.rel * scale + self.abs
            for a, b in zip(before, after, strict=True)
        )


#: Parameter summaries are float32 reductions (~1e-6 relative) of bit-identical values, stored to
#: 7 significant digits: 1e-4 of the scale leaves ample room for rounding and reduction order,
#: while a changed initialiser (distribution, gain, fan mode) moves the std by far more.
PARAM_TOLERANCE = Tolerance(rel=1e-4, abs=0.0)
#: Features come from a float32 forward whose kernels (oneDNN, MKL, thread count) may change with
#: torch itself; 1e-3 of the scale absorbs that and still catches a changed layer or activation.
FEATURE_TOLERANCE = Tolerance(rel=1e-3, abs=0.0)

_MISSING: Any = object()


@dataclass(frozen=True)
class Change:
    """One field that differs: its path in the facts, and the values before and after."""

    path: tuple[str, ...]
    before: Any
    after: Any

    @property
    def where(self) -> str:
        parts = [self.path[0]]
        parts += [f"[{p}]" if "." in p or not p.isidentifier() else f".{p}" for p in self.path[1:]]
        return "".join(parts)

    def __str__(self) -> str:
        if self.before is _MISSING:
            return f"{self.where}: added {_show(self.after)}"
        if self.after is _MISSING:
            return f"{self.where}: removed (was {_show(self.before)})"
        return f"{self.where}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any, limit: int = 120) -> str:
    text = json.dumps(plain(value), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tolerance_for(path: tuple[str, ...]) -> Tolerance | None:
    if path[:2] == ("fingerprint", "params"):
        return PARAM_TOLERANCE
    if path == ("fingerprint", "features", "mean_std"):
        return FEATURE_TOLERANCE
    return None


def _summaries_close(before: Any, after: Any, tolerance: Tolerance) -> bool:
    try:
        return tolerance.close([float(x) for x in before], [float(x) for x in after])
    except (TypeError, ValueError):  # not a pair of numbers after all: compare exactly
        return bool(before == after)


def diff_facts(
    before: Mapping[str, Any], after: Mapping[str, Any], _path: tuple[str, ...] = ()
) -> list[Change]:
    """Every leaf that differs between two facts dicts, in sorted path order.

    Lists are leaves (shapes, summaries); fingerprint numbers compare within their tolerance.
    """
    changes: list[Change] = []
    for key in sorted(set(before) | set(after)):
        path = (*_path, key)
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += diff_facts(a, b, path)
        elif a is _MISSING or b is _MISSING:
            changes.append(Change(path, a, b))
        else:
            tolerance = _tolerance_for(path)
            same = _summaries_close(a, b, tolerance) if tolerance is not None else a == b
            if not same:
                changes.append(Change(path, a, b))
    return changes


def format_changes(name: str, changes: list[Change], limit: int = 30) -> str:
    """A readable report: one ``field: before -> after`` line per change, with a per-field tally."""
    tally: dict[str, int] = {}
    for change in changes:
        tally[change.path[0]] = tally.get(change.path[0], 0) + 1
    fields = ", ".join(f"{k} ({n})" for k, n in sorted(tally.items()))
    lines = [f"zoo snapshot: {name} changed in {len(changes)} field(s): {fields}"]
    lines += [f"  {change}" for change in changes[:limit]]
    if len(changes) > limit:
        lines.append(f"  ... and {len(changes) - limit} more")
    return "\n".join(lines)
