"""The pytest glue for upgrade snapshots: one test per model, a summary, the update, the xdist merge.

Registered by ``plugin.py`` only when ``--zoo-snapshot`` (or the ``zoo_snapshot`` ini key) is given,
so ordinary runs pay nothing for it. The file is read and validated while pytest configures: a
missing, corrupt, foreign or directory path is a usage error before any model is built, and a run
that fails never writes the file.

Under pytest-xdist each worker records the models it ran and ships them to the controller through
``config.workeroutput``; the controller merges them in ``pytest_testnodedown`` and writes the file
once, at the end of the session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..guards.network import network_guard
from ..snapshot import (
    FORMAT_NOTES,
    SHOWN_CHANGES,
    Facts,
    Snapshot,
    SnapshotFileError,
    changelog,
    collect_facts,
    current_header,
    describe_header,
    diff_facts,
    entries_for,
    format_changes,
    load_snapshot,
    merge_snapshot,
    write_snapshot,
)
from ..zoo.selection import matching
from .options import STATE_KEY, SnapshotOptions

__all__ = ["SnapshotItem", "SnapshotMismatch", "SnapshotPlugin", "register"]

PLUGIN_NAME = "pytest-zoo-snapshot"
COLLECTOR_NODEID = "zoo-snapshot"
#: The user_properties key that carries each model's outcome to the controller (xdist included).
PROPERTY = "zoo_snapshot"
#: The workeroutput key under which a worker ships what it recorded.
WORKER_KEY = "pytest_zoo_snapshot"

_STATUS_ORDER = ("changed", "removed", "new", "error", "recorded", "updated", "unchanged")


class SnapshotMismatch(AssertionError):
    """A model's facts differ from its snapshot entry; the message is the readable diff."""


def register(config: pytest.Config, options: SnapshotOptions) -> None:
    """Validate the snapshot file now, and register the snapshot hooks for this session."""
    path = options.path
    try:
        if options.update and not path.exists():
            if not path.parent.is_dir():
                raise SnapshotFileError(
                    f"cannot record zoo snapshot {path}: the directory {path.parent} does not exist. "
                    "Create it first, or choose another path."
                )
            snapshot = None
        else:
            snapshot = load_snapshot(path)
    except SnapshotFileError as exc:
        raise pytest.UsageError(f"{options.source}: {exc}") from None
    config.addinivalue_line(
        "markers", "zoo_snapshot(model): a pytest-zoo upgrade snapshot check of one model"
    )
    plugin = SnapshotPlugin(config, options, snapshot)
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistMerge(plugin), f"{PLUGIN_NAME}-xdist")


class _Collector(pytest.Collector):
    """The parent node of the snapshot items; they are made by the plugin, not collected from files."""

    def __init__(self, *, plugin: SnapshotPlugin, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plugin = plugin

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        names, available = self.plugin.models()
        return [
            SnapshotItem.from_parent(self, name=name, plugin=self.plugin, available=name in available)
            for name in names
        ]


class SnapshotItem(pytest.Item):
    """One model's snapshot check: compare (or record) its facts."""

    def __init__(self, *, plugin: SnapshotPlugin, available: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plugin = plugin
        self.available = available
        self.add_marker(pytest.mark.zoo_snapshot(self.name))

    def runtest(self) -> None:
        self.plugin.check(self)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, SnapshotMismatch):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        # the snapshot file is where this check "lives": a skip reads "zoo.json:1: new model: ..."
        return self.plugin.options.path, 0, f"zoo snapshot: {self.name}"


@dataclass(eq=False)  # registered with pytest's plugin manager, which keeps plugins in sets
class SnapshotPlugin:
    """One session's snapshot state and hooks.

    ``recorded``/``removed`` are what this process (or, on the xdist controller, its workers) will
    write; ``outcomes`` come from the test reports, which is the one channel both a plain run and
    an xdist controller see, so the summary is built the same way in both.
    """

    config: pytest.Config
    options: SnapshotOptions
    #: The file's content, or ``None`` when recording a new file.
    snapshot: Snapshot | None
    recorded: dict[str, Facts] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    #: model -> (status, detail), filled from reports so that it also works on the xdist controller.
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: model -> its changes as changelog entries, from the same reports.
    changes: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    written: str | None = None

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    # -- collection ------------------------------------------------------------------------

    def models(self) -> tuple[list[str], set[str]]:
        """The models to check, and which of them torchvision has.

        ``--zoo-models`` narrows both torchvision's models and the snapshot's entries, so a model
        that disappeared is still checked (and fails) when the patterns would have selected it.
        """
        from torchvision.models import list_models

        state = self.config.stash[STATE_KEY]
        available = set(list_models())
        names = set(state.selected) if state.selected is not None else set(available)
        recorded = set(self.snapshot.models) if self.snapshot is not None else set()
        names.update(matching(recorded - available, state.options.patterns))
        return sorted(names), available

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        """Add one item per model before ``-k``/``-m`` deselect, in sorted order (as xdist needs)."""
        parent = _Collector.from_parent(session, name=COLLECTOR_NODEID, nodeid=COLLECTOR_NODEID, plugin=self)
        # genitems reports the collection, so "collected N items" counts the snapshot checks too
        items.extend(item for item in session.genitems(parent) if isinstance(item, pytest.Item))

    # -- running ---------------------------------------------------------------------------

    def _outcome(
        self, item: pytest.Item, status: str, detail: str = "", entries: list[dict[str, str]] | None = None
    ) -> None:
        outcome: dict[str, Any] = {"model": item.name, "status": status, "detail": detail}
        if entries:
            outcome["changes"] = entries
        item.user_properties.append((PROPERTY, outcome))

    def check(self, item: SnapshotItem) -> None:
        name, update = item.name, self.options.update
        before = self.snapshot.models.get(name) if self.snapshot is not None else None
        if not item.available:
            self._outcome(item, "removed")
            if update:
                self.removed.add(name)
                return
            recorded_with = describe_header(self.snapshot.header) if self.snapshot is not None else "?"
            raise SnapshotMismatch(
                f"zoo snapshot: {name} was removed: it is in {self.options.path} (recorded with "
                f"{recorded_with}) but torchvision {current_header()['torchvision']} no longer has it.\n"
                "  If that is expected, drop its entry with --zoo-snapshot-update."
            )
        if before is None and not update:
            self._outcome(item, "new")
            # reported at the item ("zoo-snapshot::name"), not at this line of the plugin
            raise pytest.skip.Exception(
                f"new model: {name} is not in {self.options.path}; record it with --zoo-snapshot-update",
                _use_item_location=True,
            )
        self._outcome(item, "error")  # replaced below; stays if collecting the facts raises
        with network_guard():  # facts never need the network; an attempt fails this model loudly
            facts: Facts = json.loads(json.dumps(collect_facts(name)))  # exactly what the file holds
        item.user_properties.pop()
        changes = diff_facts(before, facts) if before is not None else []
        tally = ", ".join(sorted({change.path[0] for change in changes}))
        if update:
            self.recorded[name] = facts
            status = "recorded" if before is None else ("updated" if changes else "unchanged")
            self._outcome(item, status, tally)
            return
        if changes:
            self._outcome(item, "changed", tally, entries_for(name, changes, weights_enum_name))
            limit = None if self.config.get_verbosity() > 0 else SHOWN_CHANGES
            raise SnapshotMismatch(format_changes(name, changes, limit))
        self._outcome(item, "unchanged")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect outcomes from the reports themselves, which is what an xdist controller sees."""
        for key, value in report.user_properties:
            if key == PROPERTY and isinstance(value, dict):
                self.outcomes[value["model"]] = (value["status"], value.get("detail", ""))
                if value.get("changes"):
                    self.changes[value["model"]] = value["changes"]
        if report.failed and report.nodeid.startswith(f"{COLLECTOR_NODEID}::"):
            self.failed.add(report.nodeid)

    # -- finishing -------------------------------------------------------------------------

    def merge_worker(self, payload: str) -> None:
        data = json.loads(payload)
        self.recorded.update(data["recorded"])
        self.removed.update(data["removed"])

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            payload = {"recorded": self.recorded, "removed": sorted(self.removed)}
            self.config.workeroutput[WORKER_KEY] = json.dumps(payload)  # type: ignore[attr-defined]
            return
        if not self.options.update or not (self.recorded or self.removed):
            return
        if self.failed or exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
            self.written = (
                f"not written: {len(self.failed)} snapshot check(s) failed or the run was interrupted; "
                f"{self.options.path} is unchanged. Fix the failures and run the update again."
            )
            return
        merged = merge_snapshot(self.snapshot, self.recorded, self.removed, current_header())
        kept = len(merged.models) - len(self.recorded)
        changed = write_snapshot(self.options.path, merged)
        self.written = (
            f"{'wrote' if changed else 'unchanged'} {self.options.path}: {len(self.recorded)} model(s) "
            f"recorded, {len(self.removed)} removed, {kept} other entries kept as they were"
        )

    def pytest_report_header(self, config: pytest.Config) -> str:
        mode = "update" if self.options.update else "compare"
        if self.snapshot is None:
            return f"zoo snapshot ({mode}): {self.options.path} (new file)"
        line = (
            f"zoo snapshot ({mode}): {self.options.path}, {len(self.snapshot.models)} model(s) recorded "
            f"with {describe_header(self.snapshot.header)}; now {describe_header(current_header())}"
        )
        note = FORMAT_NOTES.get(self.snapshot.format_version)
        return f"{line}\nzoo snapshot: {note}" if note and not self.options.update else line

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not (self.outcomes or self.written):
            return
        by_status: dict[str, list[str]] = {}
        for model, (status, detail) in sorted(self.outcomes.items()):
            by_status.setdefault(status, []).append(f"{model} ({detail})" if detail else model)
        terminalreporter.section("zoo snapshot")
        for status in _STATUS_ORDER:
            models = by_status.get(status, [])
            if not models:
                continue
            shown = models if status != "unchanged" or len(models) <= 10 else [*models[:10], "..."]
            terminalreporter.line(f"{status}: {len(models)}: {', '.join(shown)}")
        grouped = changelog(
            (entry for _, entries in sorted(self.changes.items()) for entry in entries),
            limit=None if self.config.get_verbosity() > 0 else 10,
        )
        if grouped:
            terminalreporter.line(f"by cause, across models: {grouped[0]}")
            terminalreporter.line("\n".join(grouped[1:]))
        if self.written:
            terminalreporter.line(self.written)


def weights_enum_name(model: str) -> str:
    """The class name of ``model``'s weights enum (``ResNet18_Weights``), to name its members."""
    from torchvision.models import get_model_weights

    try:
        return str(get_model_weights(model).__name__)
    except Exception:  # a user-registered builder without weights: name the model instead
        return model


@dataclass(eq=False)  # hashable: registered with the plugin manager
class _XdistMerge:
    """The controller's side of the merge; registered only when xdist is installed (its hook is xdist's)."""

    plugin: SnapshotPlugin

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        payload = getattr(node, "workeroutput", {}).get(WORKER_KEY)
        if payload is not None:
            self.plugin.merge_worker(payload)
