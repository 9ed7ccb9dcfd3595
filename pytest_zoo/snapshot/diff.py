"""Comparing two snapshots' facts: every field that changed, ``before -> after``, and nothing else.

Fingerprint tensors compare as samples of their initialiser (:mod:`.stats`: a redraw is no change,
another initialiser is); the features entering the head compare within a tolerance, when the
parameters are the same draw; every other fact compares exactly. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .file import plain
from .stats import cause, judge

__all__ = [
    "FEATURE_TOLERANCE",
    "MISSING",
    "PARAM_TOLERANCE",
    "SHOWN_CHANGES",
    "Change",
    "Tolerance",
    "diff_facts",
    "format_changes",
]


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


#: Two parameter summaries within this are the same draw (float32 reductions, ~1e-6 relative, of
#: bit-identical values, stored to 7 digits): then the features are comparable too.
PARAM_TOLERANCE = Tolerance(rel=1e-4, abs=0.0)
#: Features come from a float32 forward whose kernels (oneDNN, MKL, thread count) may change with
#: torch itself; 1e-3 of the scale absorbs that and still catches a changed layer or activation.
FEATURE_TOLERANCE = Tolerance(rel=1e-3, abs=0.0)

#: A key on one side only.
MISSING: Any = object()


@dataclass(frozen=True)
class Change:
    """One field that differs: its path in the facts, and the values before and after.

    A fingerprint tensor that is no redraw of its initialiser carries ``note``, what its
    statistics say (shown instead of the raw summaries), and ``kind``, the same without numbers,
    by which the report groups one cause across tensors and models.
    """

    path: tuple[str, ...]
    before: Any
    after: Any
    note: str = ""
    kind: str = ""

    @property
    def where(self) -> str:
        parts = [self.path[0]]
        parts += [f"[{p}]" if "." in p or not p.isidentifier() else f".{p}" for p in self.path[1:]]
        return "".join(parts)

    def __str__(self) -> str:
        if self.before is MISSING:
            return f"{self.where}: added {_show(self.after)}"
        if self.after is MISSING:
            return f"{self.where}: removed (was {_show(self.before)})"
        if self.note:
            return f"{self.where}: {self.note}"
        return f"{self.where}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any, limit: int = 120) -> str:
    text = json.dumps(plain(value), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tolerance_for(path: tuple[str, ...]) -> Tolerance | None:
    if path == ("fingerprint", "features", "mean_std"):
        return FEATURE_TOLERANCE
    return None


def _numbers(value: Any) -> list[float] | None:
    try:
        return [float(x) for x in value]
    except (TypeError, ValueError):
        return None


def _summaries_close(before: Any, after: Any, tolerance: Tolerance) -> bool:
    a, b = _numbers(before), _numbers(after)
    if a is None or b is None:  # not a list of numbers after all: compare exactly
        return bool(before == after)
    return tolerance.close(a, b)


def _diff_params(
    before: Mapping[str, Any], after: Mapping[str, Any], shapes: Mapping[str, Any]
) -> tuple[list[Change], bool]:
    """Each tensor judged as a sample of its initialiser; and whether every one is the same draw."""
    changes: list[Change] = []
    same_draw = True
    for key in sorted(set(before) | set(after)):
        path = ("fingerprint", "params", key)
        a, b = before.get(key, MISSING), after.get(key, MISSING)
        if a is MISSING or b is MISSING or not isinstance(a, list) or not isinstance(b, list):
            same_draw = False
            if a != b:
                changes.append(Change(path, a, b))
            continue
        same_draw = same_draw and _summaries_close(a[:2], b[:2], PARAM_TOLERANCE)
        shape = shapes.get(key)
        findings = judge(a, b, shape if isinstance(shape, list) else None)
        if findings:
            note = "; ".join(f.detail for f in findings)
            changes.append(Change(path, a, b, note=note, kind=cause(findings)))
    return changes, same_draw


def _diff_fingerprint(
    before: Mapping[str, Any], after: Mapping[str, Any], shapes: Mapping[str, Any]
) -> list[Change]:
    """Parameters as samples; the features only when every parameter is the same draw on both sides.

    The features come from a forward through the drawn parameters: once torch draws them
    differently, the features move for that reason alone, by an amount nothing here can bound.
    """
    changes, same_draw = _diff_params(before.get("params", {}), after.get("params", {}), shapes)
    rest_before = {k: v for k, v in before.items() if k != "params"}
    rest_after = {k: v for k, v in after.items() if k != "params"}
    if not same_draw:
        for rest in (rest_before, rest_after):
            if isinstance(rest.get("features"), Mapping):
                rest["features"] = {k: v for k, v in rest["features"].items() if k != "mean_std"}
    return changes + diff_facts(rest_before, rest_after, ("fingerprint",))


def diff_facts(
    before: Mapping[str, Any], after: Mapping[str, Any], _path: tuple[str, ...] = ()
) -> list[Change]:
    """Every leaf that differs between two facts dicts, in sorted path order.

    Lists are leaves (shapes, summaries); fingerprint tensors compare as samples (:mod:`.stats`),
    features within their tolerance.
    """
    changes: list[Change] = []
    for key in sorted(set(before) | set(after)):
        path = (*_path, key)
        a, b = before.get(key, MISSING), after.get(key, MISSING)
        if path == ("fingerprint",) and isinstance(a, Mapping) and isinstance(b, Mapping):
            shapes = before.get("state_dict") or after.get("state_dict") or {}
            changes += _diff_fingerprint(a, b, shapes if isinstance(shapes, Mapping) else {})
        elif isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += diff_facts(a, b, path)
        elif a is MISSING or b is MISSING:
            changes.append(Change(path, a, b))
        else:
            tolerance = _tolerance_for(path)
            same = _summaries_close(a, b, tolerance) if tolerance is not None else a == b
            if not same:
                changes.append(Change(path, a, b))
    return changes


#: Without -v, a model's failure shows this many changes; the rest are counted (and in --zoo-report).
SHOWN_CHANGES = 8


def format_changes(name: str, changes: list[Change], limit: int | None = SHOWN_CHANGES) -> str:
    """A readable report: a per-field tally, then the first ``limit`` changes, one line each."""
    tally: dict[str, int] = {}
    for change in changes:
        tally[change.path[0]] = tally.get(change.path[0], 0) + 1
    fields = ", ".join(f"{k} ({n})" for k, n in sorted(tally.items()))
    lines = [f"zoo snapshot: {name} changed in {len(changes)} field(s): {fields}"]
    shown = changes if limit is None else changes[:limit]
    lines += [f"  {change}" for change in shown]
    if len(changes) > len(shown):
        lines.append(f"  ... and {len(changes) - len(shown)} more (run with -v to see them all)")
    return "\n".join(lines)
