"""Upgrade regression snapshots: what the zoo looks like, recorded to a file and compared later.

Before a torchvision upgrade a user records the facts of every model (:func:`collect_facts`, in
:mod:`.facts`) to one JSON file (:mod:`.file`); after it, the same facts are collected again and
:func:`diff_facts` (:mod:`.diff`) names every field that changed, ``before -> after``, and nothing
else: a fingerprint tensor only when it is no redraw of its initialiser (:mod:`.stats`).
:func:`changelog` (:mod:`.changelog`) groups the changes of all models by cause. The pytest glue
is :mod:`pytest_zoo.plugin.snapshots`; everything here works from a plain
Python script too, and only collecting facts imports torch.
"""

from .changelog import Group, changelog, entries_for, group_entries, render_groups
from .diff import (
    FEATURE_TOLERANCE,
    PARAM_TOLERANCE,
    SHOWN_CHANGES,
    Change,
    Tolerance,
    diff_facts,
    format_changes,
)
from .facts import SEED, canonical_inputs, collect_facts, collect_fingerprint
from .file import (
    FORMAT,
    FORMAT_NOTES,
    FORMAT_VERSION,
    Facts,
    Snapshot,
    SnapshotFileError,
    current_header,
    describe_header,
    dumps,
    load_snapshot,
    merge_snapshot,
    write_snapshot,
)

__all__ = [
    "FEATURE_TOLERANCE",
    "FORMAT",
    "FORMAT_NOTES",
    "FORMAT_VERSION",
    "PARAM_TOLERANCE",
    "SEED",
    "SHOWN_CHANGES",
    "Change",
    "Facts",
    "Group",
    "Snapshot",
    "SnapshotFileError",
    "Tolerance",
    "canonical_inputs",
    "changelog",
    "collect_facts",
    "collect_fingerprint",
    "current_header",
    "describe_header",
    "diff_facts",
    "dumps",
    "entries_for",
    "format_changes",
    "group_entries",
    "load_snapshot",
    "merge_snapshot",
    "render_groups",
    "write_snapshot",
]
