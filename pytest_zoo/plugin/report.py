"""What the kit tells the user after a run: the per-family summary, ``--zoo-report``, properties.

Every zoo test report carries ``model``, ``task`` and ``family`` in its ``user_properties``. That
one choice makes the rest work everywhere: ``--junitxml`` writes them as ``<property>`` elements,
pytest-xdist ships them from the workers to the controller with each report, and the per-family
summary is computed from the reports alone, so it is the same with and without ``-n``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..atomic import write_text_atomically
from ..snapshot import group_entries
from ..zoo.families import find_family
from .listing import table, version
from .snapshots import PROPERTY as SNAPSHOT_PROPERTY

__all__ = [
    "ZooOutcome",
    "ZooReport",
    "collect_outcomes",
    "model_properties",
    "render_report",
    "render_summary",
]

PROPERTY_KEYS = ("model", "task", "family")


def model_properties(model: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs recorded on every report of a zoo test of ``model``."""
    family = find_family(model)
    return [
        ("model", model),
        ("task", family.task if family else "unknown"),
        ("family", family.name if family else "unknown"),
    ]


# -- per-family summary -------------------------------------------------------------------------


@dataclass
class ZooOutcome:
    nodeid: str
    model: str
    family: str
    task: str
    outcome: str = "passed"
    reason: str = ""


def _properties(report: pytest.TestReport) -> dict[str, str] | None:
    props = {str(k): str(v) for k, v in report.user_properties if k in PROPERTY_KEYS}
    return props if len(props) == len(PROPERTY_KEYS) else None


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or str(report.longrepr or "")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # "pytest_zoo.guards.network.NetworkAccessError: ..." -> "NetworkAccessError: ...": room for the URL
    # and "Failed: <message>" (pytest.fail) -> "<message>"
    first = re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", lines[0]) if lines else ""
    return first.removeprefix("Failed: ")


_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "failed": 2, "error": 3}


def outcome_of(report: pytest.TestReport) -> str | None:
    """What one phase's report says of its test, as the report counts it; ``None`` for a pass."""
    if report.passed:
        return None
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return "failed" if report.when == "call" else "error"


def collect_outcomes(reports: Iterable[pytest.TestReport]) -> list[ZooOutcome]:
    """One outcome per zoo test, from all its phase reports: an error in setup/teardown wins."""
    outcomes: dict[str, ZooOutcome] = {}
    for report in reports:
        props = _properties(report)
        if props is None:
            continue
        entry = outcomes.setdefault(
            report.nodeid, ZooOutcome(report.nodeid, props["model"], props["family"], props["task"])
        )
        outcome = outcome_of(report)
        if outcome is not None and _RANK[outcome] > _RANK[entry.outcome]:
            entry.outcome, entry.reason = outcome, _reason(report)
    return sorted(outcomes.values(), key=lambda o: (o.family, o.model, o.nodeid))


def render_summary(outcomes: Sequence[ZooOutcome]) -> list[str]:
    """A table of passed/failed/skipped per family, then one line per model test that did not pass."""
    per_family: dict[str, Counter[str]] = defaultdict(Counter)
    models: dict[str, set[str]] = defaultdict(set)
    for o in outcomes:
        per_family[o.family][o.outcome] += 1
        models[o.family].add(o.model)
    kinds = ("passed", "failed", "error", "skipped", "xfailed")
    shown = [
        k for k in kinds if k in ("passed", "failed", "skipped") or any(c[k] for c in per_family.values())
    ]
    rows = [
        (family, str(len(models[family])), *(str(per_family[family][k]) for k in shown))
        for family in sorted(per_family)
    ]
    lines = table(("family", "models", *shown), rows, right=set(range(1, 2 + len(shown))))
    # One line per model and reason: a builder that raises fails all its checks the same way.
    problems: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    for o in outcomes:
        if o.outcome != "passed":
            test = o.nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
            problems[(o.model, o.family, o.outcome, o.reason)].append(test)
    if problems:
        lines += ["", "not passed:"]
        for (model, family, outcome, reason), tests in sorted(problems.items()):
            short = reason if len(reason) <= 200 else reason[:197] + "..."
            lines.append(f"  {model} ({family}) {outcome.upper()} {', '.join(tests)}: {short}")
    return lines


# -- --zoo-report: the conformance matrix for CI ---------------------------------------------------

_SHIPPED_CLASSES = ("TestZoo", "TestZooWeights")
_MARK = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "error": "💥 error",
    "skipped": "⏭️ skipped",
    "xfailed": "⚠️ xfailed",
}


@dataclass
class ReportEntry:
    nodeid: str
    model: str
    check: str
    outcome: str = "passed"
    reason: str = ""


def check_name(nodeid: str) -> str:
    """The report's column for a test id: the test's name, with its class for a user's gate class.

    ``pytest-zoo::TestZoo::test_forward_shape[resnet18]`` -> ``test_forward_shape``;
    ``tests/test_gate.py::TestAcme::test_forward_shape[acmenet]`` -> ``TestAcme.test_forward_shape``;
    a snapshot check (``zoo-snapshot::resnet18``) -> ``snapshot``.
    """
    parts = nodeid.split("::")
    if parts[0] == "zoo-snapshot":
        return "snapshot"
    name = parts[-1].split("[", 1)[0]
    cls = parts[-2] if len(parts) > 2 else None
    return name if cls is None or cls in _SHIPPED_CLASSES else f"{cls}.{name}"


def _report_model(report: pytest.TestReport) -> str | None:
    if report.nodeid.startswith("zoo-snapshot::"):
        return report.nodeid.split("::", 1)[1]
    for key, value in report.user_properties:
        if key == "model":
            return str(value)
    return None


class ZooReport:
    """``--zoo-report=PATH``: a Markdown matrix (model x check) and the same data as JSON.

    Built from the test reports alone, so under pytest-xdist the controller, which receives every
    worker's reports, writes one merged file; workers write nothing.
    """

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path
        self.entries: dict[str, ReportEntry] = {}
        #: model -> its snapshot changes as changelog entries (from the snapshot check's report)
        self.snapshot_changes: dict[str, list[dict[str, str]]] = {}
        self.written = ""

    @property
    def json_path(self) -> Path:
        return self.path.with_suffix(".json")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        model = _report_model(report)
        if model is None:
            return
        for key, value in report.user_properties:
            if key == SNAPSHOT_PROPERTY and isinstance(value, dict) and value.get("changes"):
                self.snapshot_changes[model] = value["changes"]
        entry = self.entries.setdefault(
            report.nodeid, ReportEntry(report.nodeid, model, check_name(report.nodeid))
        )
        outcome = outcome_of(report)
        if outcome is not None and _RANK[outcome] > _RANK[entry.outcome]:
            reason = str(getattr(report, "wasxfail", "") or "") if outcome == "xfailed" else _reason(report)
            entry.outcome, entry.reason = outcome, reason

    def data(self) -> dict[str, object]:
        entries = sorted(self.entries.values(), key=lambda e: (e.model, e.check, e.nodeid))
        checks = sorted({e.check for e in entries}, key=lambda c: (c == "snapshot", "." in c, c))
        models: dict[str, dict[str, dict[str, object]]] = {}
        for e in entries:
            cell = models.setdefault(e.model, {}).setdefault(
                e.check, {"outcome": "passed", "reason": "", "tests": 0}
            )
            cell["tests"] = int(str(cell["tests"])) + 1
            if _RANK[e.outcome] > _RANK[str(cell["outcome"])]:
                cell["outcome"], cell["reason"] = e.outcome, e.reason
        return {
            "format": "pytest-zoo-report",
            "version": 1,
            "torch": version("torch"),
            "torchvision": version("torchvision"),
            "totals": dict(Counter(e.outcome for e in entries)),
            "checks": checks,
            "models": models,
            "tests": [dataclasses.asdict(e) for e in entries],
            "snapshot_changes": dict(sorted(self.snapshot_changes.items())),
        }

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput"):
            return  # the controller writes the merged report
        data = self.data()
        write_text_atomically(self.path, render_report(data))
        write_text_atomically(self.json_path, json.dumps(data, indent=2, sort_keys=False) + "\n")
        self.written = (
            f"zoo report: {len(data['models'])} model(s) x {len(data['checks'])} check(s) "  # type: ignore[arg-type]
            f"written to {self.path} and {self.json_path}"
        )

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.written:
            terminalreporter.write_line(self.written)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def render_report(data: dict[str, Any]) -> str:
    """The Markdown report: a header, the model x check matrix, then each reason once, numbered."""
    checks: list[str] = data["checks"]
    models: dict[str, dict[str, dict[str, Any]]] = data["models"]
    totals: dict[str, int] = data["totals"]
    counts = ", ".join(f"{totals[k]} {k}" for k in _RANK if totals.get(k))
    lines = [
        f"## pytest-zoo conformance: {len(models)} model(s) x {len(checks)} check(s)",
        "",
        f"torch {data['torch']}, torchvision {data['torchvision']}: {counts or 'no zoo tests ran'}",
        "",
    ]
    notes: dict[str, int] = {}
    if models:
        lines += ["| model | " + " | ".join(f"`{c}`" for c in checks) + " |"]
        lines += ["|---" * (len(checks) + 1) + "|"]
        for model in sorted(models):
            cells = []
            for check in checks:
                cell = models[model].get(check)
                if cell is None:
                    cells.append("")
                    continue
                text = _MARK[cell["outcome"]]
                if cell["tests"] > 1:
                    text += f" ({cell['tests']} tests)"
                if cell["outcome"] != "passed":
                    reason = _cell(cell["reason"]) or "no reason given"
                    key = f"**{model}** `{check}` {cell['outcome']}: {reason}"
                    text += f" [{notes.setdefault(key, len(notes) + 1)}]"
                cells.append(text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Not passed:", ""]
        lines += [f"{number}. {key}" for key, number in notes.items()]
    return "\n".join(lines + _snapshot_section(data.get("snapshot_changes") or {})) + "\n"


def _snapshot_section(changes: dict[str, list[dict[str, str]]]) -> list[str]:
    """The snapshot changes as a changelog (each cause once, every place named), then every change."""
    entries = [entry for model in sorted(changes) for entry in changes[model]]
    groups = group_entries(entries)
    if not groups:
        return []
    lines = ["", f"### Upgrade snapshot: {len(entries)} change(s) from {len(groups)} cause(s)", ""]
    lines += [
        f"{i}. `{_cell(g.cause)}` {g.headline().removeprefix(g.cause).strip()}: {g.places()}"
        for i, g in enumerate(groups, 1)
    ]
    lines += ["", "<details><summary>Every change, model by model</summary>", ""]
    for model in sorted(changes):
        lines += [f"**{model}** ({len(changes[model])})", ""]
        lines += [f"- `{_cell(entry['text'])}`" for entry in changes[model]]
        lines.append("")
    return [*lines, "</details>"]
