"""The snapshot file: its format, reading it safely, writing it atomically, merging entries.

A snapshot is one JSON file with a header (the versions it was recorded under, reported but never
compared) and one entry of facts per model. Reading validates everything and turns every problem
into a :class:`SnapshotFileError` that says what to do; writing never leaves half a file. Nothing
here imports torch.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import importlib.metadata
import inspect
import json
import math
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomically
from ..zoo.tasks import current_task

__all__ = [
    "FORMAT",
    "FORMAT_NOTES",
    "FORMAT_VERSION",
    "Facts",
    "Snapshot",
    "SnapshotFileError",
    "current_header",
    "describe_header",
    "dumps",
    "is_scalar",
    "load_snapshot",
    "merge_snapshot",
    "plain",
    "write_snapshot",
]

#: Marks a file as ours; anything else with a ``.json`` name is refused rather than overwritten.
FORMAT = "pytest-zoo-snapshot"
#: 2: each fingerprint tensor is summarised by :data:`.stats.FIELDS`; 1 held ``[mean, std]`` only,
#: which still loads and compares by those two (:data:`FORMAT_NOTES` says what is left out).
FORMAT_VERSION = 2
FORMAT_NOTES = {
    1: "recorded in format 1, so fingerprints compare by mean and std only; record it again "
    "with --zoo-snapshot-update to compare each tensor's distribution shape, zeros and range too",
}
#: Facts is the JSON-able dict of one model; kept as ``Any`` because it nests freely.
Facts = dict[str, Any]


class SnapshotFileError(Exception):
    """The snapshot file is missing, unreadable, corrupt, or not a pytest-zoo snapshot."""


@dataclass
class Snapshot:
    """A snapshot file's content: a header (reported, never compared) and one entry per model."""

    header: dict[str, str] = field(default_factory=dict)
    models: dict[str, Facts] = field(default_factory=dict)
    #: The format the file was read in; a snapshot is always written in :data:`FORMAT_VERSION`.
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "header": self.header,
            "models": self.models,
        }


def current_header() -> dict[str, str]:
    """The versions a snapshot is recorded under, read from package metadata (no torch import)."""
    from .. import __version__

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "torch": version("torch"),
        "torchvision": version("torchvision"),
        "pytest_zoo": __version__,
    }


def describe_header(header: Mapping[str, str]) -> str:
    keys = ("torchvision", "torch", "python")
    return ", ".join(f"{k} {header[k]}" for k in keys if k in header) or "no versions recorded"


def plain(value: Any) -> Any:
    """A JSON-able, address-free rendering of a default, meta value or attribute."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, functools.partial):
        args = [plain(a) for a in value.args] + [f"{k}={plain(v)}" for k, v in sorted(value.keywords.items())]
        return f"partial({plain(value.func)}, {', '.join(map(str, args))})"
    if isinstance(value, type) or inspect.isroutine(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _dump(value: Any, indent: int) -> str:
    """Sorted keys, one key per line, lists of scalars on one line: stable, and diffs stay local."""
    pad = "  " * (indent + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {_dump(value[k], indent + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list | tuple):
        if all(is_scalar(item) for item in value):
            return json.dumps(list(value), allow_nan=False)
        items = [f"{pad}{_dump(item, indent + 1)}" for item in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(value, allow_nan=False)


def dumps(snapshot: Snapshot) -> str:
    """The file's text. Non-finite floats are stored as strings, so the file stays strict JSON."""
    return _dump(plain(snapshot.to_json()), 0) + "\n"


def load_snapshot(path: Path) -> Snapshot:
    """Read and validate a snapshot file; every problem is a :class:`SnapshotFileError` saying what to do."""
    if path.is_dir():
        raise SnapshotFileError(
            f"zoo snapshot {path} is a directory. Give a file path, "
            f"e.g. --zoo-snapshot={path / 'zoo-snapshot.json'}"
        )
    if not path.exists():
        raise SnapshotFileError(
            f"zoo snapshot {path} does not exist. Record it first with: "
            f"pytest --zoo-snapshot={path} --zoo-snapshot-update"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotFileError(f"zoo snapshot {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotFileError(
            f"zoo snapshot {path} is corrupt: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            "Restore it from version control, or delete it and record a new one with --zoo-snapshot-update."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if not isinstance(data, dict):
            found = f"a JSON {type(data).__name__}"
        else:
            found = f'"format": {data["format"]!r}' if "format" in data else 'no "format" key'
        raise SnapshotFileError(
            f'{path} is not a pytest-zoo snapshot (expected "format": "{FORMAT}", found {found}). '
            "It was left untouched; point --zoo-snapshot at another path."
        )
    version = data.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise SnapshotFileError(
            f"zoo snapshot {path} has format_version {version!r}; this pytest-zoo reads up to "
            f"{FORMAT_VERSION}. Upgrade pytest-zoo, or record a new snapshot."
        )
    header, models = data.get("header", {}), data.get("models")
    if not isinstance(header, dict) or not isinstance(models, dict):
        raise SnapshotFileError(
            f"zoo snapshot {path} is corrupt: 'header' and 'models' must be objects. "
            "Restore it from version control, or record a new one with --zoo-snapshot-update."
        )
    bad = sorted(name for name, facts in models.items() if not isinstance(facts, dict))
    if bad:
        raise SnapshotFileError(f"zoo snapshot {path} is corrupt: the entries for {bad} are not objects.")
    return Snapshot(
        header={str(k): str(v) for k, v in header.items()},
        models={name: _in_current_words(facts) for name, facts in models.items()},
        format_version=version,
    )


def _in_current_words(facts: Facts) -> Facts:
    """An entry with its task in today's vocabulary, so an old file diffs only on real changes."""
    task = facts.get("task")
    return {**facts, "task": current_task(task)} if isinstance(task, str) else facts


def write_snapshot(path: Path, snapshot: Snapshot) -> bool:
    """Write atomically (temporary file in the same directory, then rename); ``False`` if unchanged.

    A reader (or a crash) sees either the old file or the new one, never half of either. An
    unchanged snapshot is not rewritten, so its modification time says when it last changed.
    """
    text = dumps(snapshot)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return False
    write_text_atomically(path, text)
    return True


def merge_snapshot(
    old: Snapshot | None, recorded: Mapping[str, Facts], removed: set[str], header: dict[str, str]
) -> Snapshot:
    """The old entries, with ``recorded`` ones replaced or added and ``removed`` ones dropped.

    Entries this run did not touch (models outside ``--zoo-models``, deselected by ``-k``) stay
    exactly as they were; ``removed`` must hold only models torchvision no longer has.
    """
    models = dict(old.models) if old is not None else {}
    models.update(recorded)
    for name in removed:
        models.pop(name, None)
    return Snapshot(header=dict(header), models=dict(sorted(models.items())))
