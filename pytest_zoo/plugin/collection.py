"""Which models a session runs: the selection, narrowed by tasks, by gate classes and their ``models``.

The entry point's hooks call these at configure, collection and parametrization time. A pattern
that selects nothing this session can run is a usage error (exit code 4) that lists what is
selectable; selection itself is :func:`pytest_zoo.zoo.selection.matching`, everywhere.
"""

from __future__ import annotations

import re

import pytest

from ..zoo.selection import Patterns, SelectionError, matching, parse_patterns, require_matches, select_models
from .options import STATE_KEY, ZooState

__all__ = [
    "class_models",
    "gate_classes",
    "is_conformance_class",
    "models_for",
    "require_known",
    "select_tasks",
]

_GLOB = re.compile(r"[*?\[]")


def select_tasks(names: list[str], tasks: tuple[str, ...]) -> list[str]:
    """The models among ``names`` whose family row has one of ``tasks``; none left is a usage error."""
    from ..zoo.families import task_of

    kept = [name for name in names if task_of(name) in tasks]
    if not kept:
        found = sorted({task_of(name) for name in names})
        raise pytest.UsageError(
            f"--zoo-tasks={','.join(tasks)} leaves no model: the {len(names)} model(s) selected by the "
            f"patterns are of task(s) {', '.join(found)}. Widen --zoo-models or change --zoo-tasks."
        )
    return kept


def gate_classes(items: list[pytest.Item]) -> list[type]:
    """The gate classes (conformance subclasses that list ``models``) among the collected items."""
    seen: dict[type, None] = {}
    for item in items:
        cls = getattr(item, "cls", None)
        if (
            cls is not None
            and cls not in seen
            and getattr(cls, "models", None)
            and (is_conformance_class(cls) or is_weights_class(cls))
        ):
            seen[cls] = None
    return list(seen)


def require_known(
    config: pytest.Config, state: ZooState, items: list[pytest.Item], gates: list[type], suite: bool
) -> None:
    """Refuse a ``--zoo-models`` pattern that matches nothing this session can run."""
    from .reliability import zoo_model_of

    if not gates:  # only torchvision's models can be meant: the same check as --zoo-list's
        try:
            select_models(state.options.patterns)
        except SelectionError as exc:
            raise pytest.UsageError(str(exc)) from None
        return

    known: set[str] = set()
    parts = []
    for cls in gates:
        try:
            names = class_models(cls)
        except SelectionError as exc:
            raise pytest.UsageError(str(exc)) from None
        known.update(names)
        parts.append(f"{cls.__qualname__}: {', '.join(names)}")
    free_form = any(
        getattr(item, "cls", None) not in gates and zoo_model_of(item) is not None for item in items
    )
    snapshot = config.pluginmanager.get_plugin("pytest-zoo-snapshot")
    if suite or free_form or snapshot is not None:
        from torchvision.models import list_models

        torchvision_models = list_models()
        known.update(torchvision_models)
        parts.append(f"the {len(torchvision_models)} torchvision models")
        if snapshot is not None and snapshot.snapshot is not None:
            known.update(snapshot.snapshot.models)
    if gates and not suite:
        parts.append(
            "(the shipped suite is not collected because gate classes were; --zoo-suite=yes adds it)"
        )
    try:
        require_matches(state.options.patterns, sorted(known), where="; ".join(parts))
    except SelectionError as exc:
        raise pytest.UsageError(f"{_patterns_source(config)}: {exc}") from None


def _patterns_source(config: pytest.Config) -> str:
    return "--zoo-models" if config.getoption("zoo_models") is not None else "ini option zoo_models"


def is_conformance_class(cls: type | None) -> bool:
    if cls is None:
        return False
    from ..conformance.checks import (
        ZooConformance,  # only for classes that could be one; checks imports torch
    )

    return issubclass(cls, ZooConformance)


def is_weights_class(cls: type | None) -> bool:
    if cls is None:
        return False
    from ..weights import WeightsConformance  # imports torch, like checks

    return issubclass(cls, WeightsConformance)


def class_models(cls: type) -> list[str]:
    """A conformance class's ``models``: globs match torchvision builders, plain names stay as given.

    A plain name that torchvision does not know is a model of the user's own (``builder_oracle =
    False`` and a ``build_model`` hook that builds it), so it is kept rather than rejected.
    """
    models = getattr(cls, "models", ())
    source = f"{cls.__qualname__}.models"
    patterns = parse_patterns(models if isinstance(models, str) else list(models), source=source)
    literal = [p for p in patterns.include if not _GLOB.search(p)]
    globs = [p for p in patterns.include if _GLOB.search(p)]
    names = set(literal)
    if globs:
        names.update(select_models(parse_patterns(globs, patterns.exclude, source=source)))
    return matching(names, Patterns(exclude=patterns.exclude))


def models_for(config: pytest.Config, cls: type | None) -> list[str]:
    state = config.stash[STATE_KEY]
    if not ((is_conformance_class(cls) or is_weights_class(cls)) and bool(getattr(cls, "models", ()))):
        return list(state.selected or [])
    assert cls is not None
    try:
        names = class_models(cls)
    except SelectionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if state.selected is None:
        return names
    wanted = state.options.patterns
    from ..zoo.families import task_of

    return [
        n for n in matching(names, wanted) if not state.options.tasks or task_of(n) in state.options.tasks
    ]
