"""Is a tensor a redraw from the same initialiser, or was it initialised differently?

A fingerprint summarises every state_dict tensor by the statistics below (:func:`summarise`, the
only code here that imports torch). Two summaries are compared as samples, not as values
(:func:`judge`): torch may draw the same initialiser differently from one release to the next
(it did for ``trunc_normal_`` between 2.5 and 2.14), and that is no change. Each statistic gets a
tolerance from the tensor's size, :data:`SIGMAS` standard errors wide, so that with some 30,000
tensors in the zoo a redraw passes every one with overwhelming probability (a normal tail beyond
8 standard errors is about 1e-15), while another gain or fan mode (the std), another distribution
(the kurtosis), other truncation bounds (the range) or another constant is found and named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "FIELDS",
    "RANK",
    "SIGMAS",
    "Finding",
    "field",
    "judge",
    "scores",
    "shape_sample_size",
    "summarise",
]

#: The positions of a summary list. Format 1 files hold only ``[mean, std]``, a prefix of it.
FIELDS = ("mean", "std", "n", "kurtosis", "kurtosis_spread", "zeros", "min", "low", "high", "max")
#: How many standard errors a statistic may move before it counts as changed.
SIGMAS = 8.0
#: ``low``/``high`` are the RANK-th smallest and largest values. Two samples from one distribution
#: give the other side's max below this side's RANK-th largest only when the RANK largest of both
#: together all fell on one side: probability at most 2**-RANK (1e-12), whatever the distribution.
RANK = 40
#: Fewer values than this: the mean and std are too noisy to judge (only a constant is compared).
MIN_VALUES = 16
#: The sample kurtosis converges slowly; below this many values it is not judged.
MIN_VALUES_SHAPE = 1000
#: Summaries are float32 reductions stored to 7 digits: within this relative distance they are
#: the same values (a deterministic tensor, or the same draw), whatever their size.
SAME_VALUES = 1e-4
#: A std this small relative to the mean is float rounding: the tensor is a constant fill.
CONSTANT = 1e-6

_DIGITS = 7


def _round(value: float) -> float | str:
    return float(f"{value:.{_DIGITS}g}") if math.isfinite(value) else str(value)


def shape_sample_size(n: int) -> int:
    """How many values the kurtosis is computed from: a strided sample of at most about 2**20."""
    step = max(1, n >> 20)
    return -(-n // step)


def summarise(tensor: torch.Tensor) -> list[float | str | None]:
    """The statistics of :data:`FIELDS` for one tensor (``None`` where the tensor is too small).

    The kurtosis comes from a strided sample of :func:`shape_sample_size` values (an
    initialiser's values are exchangeable, and a million of them pin a kurtosis to +-0.04), with
    ``kurtosis_spread``, the standard deviation of its influence function: its standard error is
    ``kurtosis_spread / sqrt(sample size)`` whatever the distribution. The rest is exact, in
    float32 (pairwise reductions, ~1e-6 relative): the 600M parameters of the largest models
    take seconds per full pass, so every statistic costs at most one.
    """
    import torch

    flat = tensor.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):  # integer buffers, half precision
        flat = flat.to(torch.float32)
    n = flat.numel()
    std_t, mean_t = torch.std_mean(flat, correction=0)
    mean, std = float(mean_t), float(std_t)
    kurtosis: float | None = None
    spread: float | None = None
    sample = flat[:: max(1, n >> 20)]
    if std > CONSTANT * abs(mean) and math.isfinite(std):
        z = (sample - sample.mean()) / sample.std(correction=0)
        z2 = z * z
        skew, kurtosis = float((z2 * z).mean()), float((z2 * z2).mean())
        # the influence function of the sample kurtosis (mean and variance estimated too)
        psi = z2 * z2 - kurtosis - 4 * skew * z - 2 * kurtosis * (z2 - 1)
        spread = float((psi * psi).mean()) ** 0.5
    low = high = None
    if n >= RANK:
        low, high = _rank_extreme(flat, sample, largest=False), _rank_extreme(flat, sample, largest=True)
    least, most = torch.aminmax(flat)
    zeros = (n - int(torch.count_nonzero(flat))) / n
    values = (mean, std, n, kurtosis, spread, zeros, float(least), low, high, float(most))
    return [None if v is None else (v if isinstance(v, int) else _round(v)) for v in values]


def _rank_extreme(flat: torch.Tensor, sample: torch.Tensor, *, largest: bool) -> float:
    """The RANK-th largest (smallest) value, exactly; a full top-k only for small tensors.

    The sample's extremes give a threshold beyond which some 8 * RANK values of the tensor are
    expected; the RANK-th extreme is among the values beyond it whenever at least RANK are.
    """
    import torch

    step = flat.numel() // sample.numel()
    if step > 1:
        threshold = torch.topk(sample, min(sample.numel(), 8 * RANK // step + 2), largest=largest).values[-1]
        beyond = flat[flat >= threshold] if largest else flat[flat <= threshold]
        if beyond.numel() >= RANK:
            flat = beyond
    return float(torch.topk(flat, RANK, largest=largest, sorted=True).values[-1])


def field(summary: Sequence[Any], name: str) -> float | None:
    """One statistic of a summary as a float; ``None`` when absent (an older format, a small tensor)."""
    index = FIELDS.index(name)
    if index >= len(summary) or summary[index] is None:
        return None
    try:
        return float(summary[index])
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Finding:
    """One way a tensor's values are not a redraw: ``kind`` groups it across models, ``detail`` explains."""

    kind: str
    detail: str


def cause(findings: Sequence[Finding]) -> str:
    """The findings' kinds as one cause, without what follows from another finding.

    Another distribution moves the range (and, truncated, the std) as a matter of course: the
    cause is the distribution, and the same change in two layers of other sizes is one cause.
    """
    kinds = [f.kind for f in findings]
    if any(k.startswith("distribution") for k in kinds):
        kinds = ["std changed" if k.startswith("std x") else k for k in kinds if k != "range changed"]
    return ", ".join(kinds)


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= SAME_VALUES * max(abs(a), abs(b))


def _shape_word(kurtosis: float) -> str:
    """The usual initialisers' kurtosis: uniform 1.8, normal truncated at 2 std 2.37, normal 3."""
    if kurtosis < 2.1:
        return "uniform-like"
    if kurtosis < 2.8:
        return "truncated-normal-like"
    return "normal-like" if kurtosis < 3.3 else "heavy-tailed"


def _fan_mode(ratio: float, shape: Sequence[int] | None, se_log: float) -> tuple[str, str]:
    """A std ratio that is the weight's fan ratio (within the noise): ``(mode change, why)``."""
    if shape is None or len(shape) < 2 or shape[0] == shape[1]:
        return "", ""
    fan = math.sqrt(shape[1] / shape[0])  # fan_in / fan_out = in / out; receptive field cancels
    for expected, mode in ((fan, "fan_in -> fan_out"), (1 / fan, "fan_out -> fan_in")):
        if abs(math.log(ratio / expected)) < max(0.05, 4 * se_log):
            return mode, f"; sqrt({shape[1]}/{shape[0]}) = {expected:.4g}: {mode}"
    return "", ""


def _size(before: Sequence[Any], after: Sequence[Any], shape: Sequence[int] | None) -> float | None:
    return field(before, "n") or field(after, "n") or (math.prod(shape) if shape is not None else None)


def scores(
    before: Sequence[Any], after: Sequence[Any], shape: Sequence[int] | None = None
) -> dict[str, float]:
    """How far each statistic moved, in standard errors of a redraw's move; only those it can judge.

    Both sides are samples, so each standard error is that of the difference of two. ``range``
    is not a score: :func:`judge` applies the rank test to it directly.
    """
    mb, sb, ma, sa = (field(s, k) for s in (before, after) for k in ("mean", "std"))
    n = _size(before, after, shape)
    if mb is None or sb is None or ma is None or sa is None or n is None or n < MIN_VALUES:
        return {}
    if sb <= CONSTANT * abs(mb) or sa <= CONSTANT * abs(ma):
        return {}  # a constant fill has no sampling error: judge compares it as a value
    found = {"mean": abs(ma - mb) / math.sqrt((sb * sb + sa * sa) / n)}
    kb, ka = field(before, "kurtosis"), field(after, "kurtosis")
    beta4 = max(3.0, kb or 0.0, ka or 0.0)  # normal theory at least: small samples understate it
    found["std"] = abs(math.log(sa / sb)) / math.sqrt((beta4 - 1) / (2 * n))
    qb, qa = field(before, "kurtosis_spread"), field(after, "kurtosis_spread")
    if kb is not None and ka is not None and qb and qa and n >= MIN_VALUES_SHAPE:
        found["kurtosis"] = abs(ka - kb) / math.sqrt((qb * qb + qa * qa) / shape_sample_size(int(n)))
    zb, za = field(before, "zeros"), field(after, "zeros")
    if zb is not None and za is not None:
        p = (zb + za) / 2
        found["zeros"] = 0.0 if zb == za else abs(za - zb) / math.sqrt(2 * p * (1 - p) / n)
    return found


def judge(before: Sequence[Any], after: Sequence[Any], shape: Sequence[int] | None = None) -> list[Finding]:
    """Why ``after`` cannot be a redraw of ``before``'s initialiser; empty when it can.

    ``shape`` (from the state_dict facts) gives the size when a format-1 summary lacks ``n``,
    and names a std ratio that matches the weight's fan ratio. Fewer than :data:`MIN_VALUES`
    values are too few to tell a redraw from a change: only a constant is compared then.
    """
    mb, sb, ma, sa = (field(s, k) for s in (before, after) for k in ("mean", "std"))
    if mb is None or sb is None or ma is None or sa is None:  # non-finite: equal text or nothing
        same = [str(x) for x in before[:2]] == [str(x) for x in after[:2]]
        return [] if same else [Finding("non-finite", f"[mean, std] {list(before[:2])} -> {list(after[:2])}")]
    if _close(mb, ma) and _close(sb, sa):
        return []  # the same values: deterministic, or the same draw
    const_b, const_a = sb <= CONSTANT * abs(mb), sa <= CONSTANT * abs(ma)
    if const_b and const_a:
        return [Finding("constant changed", f"constant {mb:.7g} -> {ma:.7g}")]
    if const_b or const_a:
        sides = [
            f"constant {m:.7g}" if c else f"random (mean {m:.4g}, std {s:.4g})"
            for m, s, c in ((mb, sb, const_b), (ma, sa, const_a))
        ]
        return [Finding("constant <-> random", " -> ".join(sides))]
    z = scores(before, after, shape)
    findings = []
    if z.get("mean", 0.0) > SIGMAS:
        findings.append(
            Finding("mean shifted", f"mean {mb:.4g} -> {ma:.4g} ({z['mean']:.0f} standard errors)")
        )
    ratio = sa / sb
    std_changed = z.get("std", 0.0) > SIGMAS
    if std_changed:
        mode, why = _fan_mode(ratio, shape, abs(math.log(ratio)) / z["std"])
        detail = f"std {sb:.4g} -> {sa:.4g} (x{ratio:.4g}, {z['std']:.0f} standard errors{why})"
        findings.append(Finding(f"fan mode {mode}" if mode else f"std x{ratio:.2g}", detail))
    if z.get("kurtosis", 0.0) > SIGMAS:
        kb, ka = field(before, "kurtosis") or 0.0, field(after, "kurtosis") or 0.0
        words = f"{_shape_word(kb)} -> {_shape_word(ka)}"
        detail = f"kurtosis {kb:.3g} -> {ka:.3g} ({words}, {z['kurtosis']:.0f} standard errors)"
        findings.append(Finding(f"distribution {words}", detail))
    if z.get("zeros", 0.0) > SIGMAS:
        zb, za = field(before, "zeros") or 0.0, field(after, "zeros") or 0.0
        findings.append(Finding("zeros changed", f"fraction of zeros {zb:.3%} -> {za:.3%}"))
    if "mean" in z:
        findings += _range_findings(before, after, ratio if std_changed else None)
    return findings


def _range_findings(before: Sequence[Any], after: Sequence[Any], std_ratio: float | None) -> list[Finding]:
    """The rank test on the extremes; with a changed std, named only if the range moved differently."""
    values = [field(s, k) for s in (before, after) for k in ("min", "low", "high", "max")]
    if any(v is None for v in values) or field(before, "n") != field(after, "n"):
        return []
    lo_b, low_b, high_b, hi_b, lo_a, low_a, high_a, hi_a = (float(v or 0.0) for v in values)
    if not (hi_a < high_b or hi_b < high_a or lo_a > low_b or lo_b > low_a):
        return []
    # a gain scales the range with the std; truncation bounds change it by another factor
    scaled = std_ratio is not None and hi_b > lo_b and hi_a > lo_a
    if scaled and abs(math.log((hi_a - lo_a) / (hi_b - lo_b) / (std_ratio or 1.0))) < math.log(1.25):
        return []
    return [Finding("range changed", f"range [{lo_b:.4g}, {hi_b:.4g}] -> [{lo_a:.4g}, {hi_a:.4g}]")]
