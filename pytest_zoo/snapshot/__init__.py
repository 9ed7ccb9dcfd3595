"""Upgrade regression snapshots: what the zoo looks like, recorded to a file and compared later.

Before a torchvision upgrade a user records the facts of every model (:func:`collect_facts`, in
:mod:`.facts`) to one JSON file (:mod:`.file`); after it, the same facts are collected again and
:func:`diff_facts` (:mod:`.diff`) names every field that changed, ``before -> after``, and nothing
else. The pytest glue is :mod:`pytest_zoo.plugin.snapshots`; everything here works from a plain
Python script too, and only collecting facts imports torch.
"""

from .diff import FEATURE_TOLERANCE, PARAM_TOLERANCE, Change, Tolerance, diff_facts, format_changes
from .facts import SEED, canonical_inputs, collect_facts
from .file import (
    FORMAT,
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
    "FORMAT_VERSION",
    "PARAM_TOLERANCE",
    "SEED",
    "Change",
    "Facts",
    "Snapshot",
    "SnapshotFileError",
    "Tolerance",
    "canonical_inputs",
    "collect_facts",
    "current_header",
    "describe_header",
    "diff_facts",
    "dumps",
    "format_changes",
    "load_snapshot",
    "merge_snapshot",
    "write_snapshot",
]
