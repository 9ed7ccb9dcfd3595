"""The upgrade read as a changelog: every change grouped by its cause, across models.

One torchvision release changes one default in 98 weights enums, or one torch release draws one
initialiser differently in 40 layers; listed model by model that is a wall of lines in which the
cause is hard to see. Here each change becomes an :class:`Entry` (what changed, without saying
where, and where), and entries with the same cause are reported once, naming where.
Entries are plain dicts so that they travel in a test report's ``user_properties`` (and so from
pytest-xdist workers to the controller) and into the ``--zoo-report`` JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .diff import MISSING, Change

__all__ = ["Group", "changelog", "entries_for", "group_entries", "render_groups"]

#: An entry: ``cause`` (the change, without where), ``unit`` (what it counts), ``where``, ``detail``
#: (within where: a tensor's name), ``text`` (the change's own line).
Entry = dict[str, str]


def _transition(change: Change) -> str:
    text = str(change)
    return text.split(": ", 1)[1] if ": " in text else text


def entries_for(
    model: str, changes: Iterable[Change], enum_name: Callable[[str], str] | None = None
) -> list[Entry]:
    """The entries of one model's changes; ``enum_name(model)`` names its weights enum class.

    A weights field of a member (``weights.IMAGENET1K_V1.transforms.antialias``) is generalised to
    ``weights.<enum>...`` and located at ``ResNet18_Weights.IMAGENET1K_V1``; a fingerprint tensor
    by what its statistics say (``std x2``), located at the model; anything else by its field and
    values, located at the model.
    """
    entries = []
    enum = None
    for change in changes:
        path, detail = change.path, ""
        if path[0] == "weights" and len(path) >= 3:
            if enum is None:
                enum = enum_name(model) if enum_name is not None else model
            generic = Change(("weights", "ENUM", *path[2:]), change.before, change.after).where
            cause = f"{generic.replace('.ENUM', '.<enum>', 1)}: {_transition(change)}"
            unit, where = "enum", f"{enum}.{path[1]}"
        elif path[:2] == ("fingerprint", "params") and change.kind:
            cause, unit, where = f"fingerprint: {change.kind}", "tensor", model
            detail = path[2]
        elif path[:2] == ("fingerprint", "params"):
            what = (
                "added" if change.before is MISSING else "removed" if change.after is MISSING else "changed"
            )
            cause = f"fingerprint: tensor {what}"
            unit, where = "tensor", model
        else:
            cause, unit, where = str(change), "model", model
        entries.append({"cause": cause, "unit": unit, "where": where, "detail": detail, "text": str(change)})
    return entries


@dataclass
class Group:
    """One cause and everywhere it occurred, in order of first occurrence."""

    cause: str
    unit: str
    #: where -> the details of each occurrence there
    where: dict[str, list[str]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(map(len, self.where.values()))

    def places(self, limit: int | None = None) -> str:
        """``resnet18 fc.weight`` for one occurrence with a detail, ``vit_b_16 (12)`` for several."""
        items = [f"{w} ({len(d)})" if len(d) > 1 else f"{w} {d[0]}".rstrip() for w, d in self.where.items()]
        shown = items if limit is None else items[:limit]
        more = f", ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
        return ", ".join(shown) + more

    def headline(self) -> str:
        n = self.count
        counted = f"{n} {self.unit}{'s' if n != 1 else ''}"
        if self.unit == "tensor":  # located at their model: count the models too
            counted += f" in {len(self.where)} model{'s' if len(self.where) != 1 else ''}"
        return f"{self.cause} [{counted}]"


def group_entries(entries: Iterable[Mapping[str, str]]) -> list[Group]:
    """One group per cause, the most widespread first (ties in order of cause)."""
    groups: dict[tuple[str, str], Group] = {}
    for entry in entries:
        group = groups.setdefault((entry["cause"], entry["unit"]), Group(entry["cause"], entry["unit"]))
        group.where.setdefault(entry["where"], []).append(entry.get("detail", ""))
    return sorted(groups.values(), key=lambda g: (-g.count, g.cause))


def render_groups(groups: list[Group], limit: int | None = 10) -> list[str]:
    """One line per cause: what changed, how often, and where (the first ``limit`` places)."""
    return [f"{group.headline()}: {group.places(limit)}" for group in groups]


def changelog(entries: Iterable[Mapping[str, str]], limit: int | None = 10) -> list[str]:
    """The grouped report's lines, headed by how many changes and causes they are."""
    entries = list(entries)
    groups = group_entries(entries)
    if not groups:
        return []
    head = f"{len(entries)} change(s) from {len(groups)} cause(s):"
    return [head, *(f"  {line}" for line in render_groups(groups, limit))]
