"""Choosing models by pattern: ``resnet*,vgg1?,!vgg13`` -> a sorted list of builder names.

Matching is torchvision's own ``list_models(include=, exclude=)``, so the kit and torchvision can
never disagree about what a pattern means. The result is sorted, which is what lets every
pytest-xdist worker collect the same tests in the same order.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Patterns", "SelectionError", "matching", "parse_patterns", "require_matches", "select_models"]


class SelectionError(ValueError):
    """A pattern selects nothing, or the patterns together select nothing."""


@dataclass(frozen=True)
class Patterns:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)


def parse_patterns(
    include: str | Iterable[str] = "", exclude: str | Iterable[str] = "", *, source: str = "--zoo-models"
) -> Patterns:
    """Split comma-separated globs; a leading ``!`` moves a glob to the excludes.

    Empty items (``"resnet*,,vgg"``) are an error rather than silently ignored: an empty pattern
    usually means a shell variable that did not expand.
    """
    inc: list[str] = []
    exc: list[str] = []
    for value, is_exclude in ((include, False), (exclude, True)):
        items = value.split(",") if isinstance(value, str) else list(value)
        if isinstance(value, str) and not value.strip():
            continue
        for raw in items:
            item = raw.strip()
            negated = item.startswith("!")
            item = item[1:].strip() if negated else item
            if not item:
                raise SelectionError(
                    f"{source}: empty pattern in {value!r}. Give comma-separated globs such as "
                    "'resnet*,vgg1?' and exclusions as '!glob'."
                )
            (exc if (negated or is_exclude) else inc).append(item)
    return Patterns(tuple(inc), tuple(exc))


def matching(names: Iterable[str], patterns: Patterns) -> list[str]:
    """The names ``patterns`` select, sorted: matched by an include (any name, when there is none)
    and by no exclude. The one place a pattern is applied, with torchvision's ``fnmatch``."""
    return sorted(
        name
        for name in names
        if (not patterns.include or any(fnmatch.fnmatch(name, p) for p in patterns.include))
        and not any(fnmatch.fnmatch(name, p) for p in patterns.exclude)
    )


def _suggest(pattern: str, names: Sequence[str]) -> str:
    stem = pattern.replace("*", "").replace("?", "").replace("[", "").replace("]", "")
    close = difflib.get_close_matches(stem, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if stem and stem[:3] in n][:5]
    return f" Did you mean: {', '.join(close)}?" if close else ""


def select_models(
    patterns: Patterns, *, available: Sequence[str] | None = None, strict: bool = True
) -> list[str]:
    """Builder names matching ``patterns``, sorted; each include pattern must match something.

    ``strict=False`` returns what matches, possibly nothing: the plugin's first pass at configure
    time, when a pattern may still name a model that only a gate class lists (checked after
    collection by :func:`require_matches`).
    """
    from torchvision.models import list_models

    names = list(available) if available is not None else list_models()
    for pattern in patterns.include + patterns.exclude if strict else ():
        if not fnmatch.filter(names, pattern):
            raise SelectionError(
                f"zoo model pattern {pattern!r} matches none of the {len(names)} torchvision models."
                f"{_suggest(pattern, names)} List them with: "
                "python -c 'import torchvision; print(torchvision.models.list_models())'"
            )
    selected = matching(names, patterns)
    if not selected and strict:
        raise SelectionError(
            f"the zoo model patterns include={list(patterns.include)} exclude={list(patterns.exclude)} "
            "select no model: every match was excluded."
        )
    return selected


def require_matches(patterns: Patterns, known: Sequence[str], *, where: str) -> None:
    """Every pattern in ``patterns`` matches one of ``known``; else an error listing what is selectable.

    ``where`` says what ``known`` is, e.g. "the models of the collected gate classes (TestAcme:
    acmenet, resnet18)": a pattern is judged against what this session can run, not only
    against torchvision.
    """
    names = sorted(set(known))
    for pattern in patterns.include + patterns.exclude:
        if not fnmatch.filter(names, pattern):
            raise SelectionError(
                f"zoo model pattern {pattern!r} matches none of the {len(names)} model(s) this session "
                f"can select: {where}.{_suggest(pattern, names)}"
            )
    if patterns.include and not matching(names, patterns):
        raise SelectionError(
            f"the zoo model patterns include={list(patterns.include)} exclude={list(patterns.exclude)} "
            f"select no model of {where}: every match was excluded."
        )
