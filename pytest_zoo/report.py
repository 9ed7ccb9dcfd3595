"""What the kit tells the user: the header line, ``--zoo-list``, the per-family summary, properties.

Every zoo test report carries ``model``, ``task`` and ``family`` in its ``user_properties``. That
one choice makes the rest work everywhere: ``--junitxml`` writes them as ``<property>`` elements,
pytest-xdist ships them from the workers to the controller with each report, and the per-family
summary is computed from the reports alone, so it is the same with and without ``-n``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .families import find_family

__all__ = [
    "ModelRow",
    "ZooOutcome",
    "ZooReport",
    "collect_outcomes",
    "header_line",
    "list_rows",
    "model_properties",
    "render_list",
    "render_report",
    "render_summary",
]

PROPERTY_KEYS = ("model", "task", "family")


def _version(dist: str) -> str:
    """The loaded module's ``__version__`` (it has the build tag, e.g. ``+cu130``), else metadata."""
    module = sys.modules.get(dist)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return str(module.__version__)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header_line(selected: int, device: str, requested_device: str) -> str:
    """``zoo: 3 model(s) selected, device cpu (auto), torch 2.14.1, torchvision 0.29.1``.

    Versions never import anything: torch is loaded already whenever models are selected.
    """
    how = f" ({requested_device})" if requested_device != device else ""
    return (
        f"zoo: {selected} model(s) selected, device {device}{how}, "
        f"torch {_version('torch')}, torchvision {_version('torchvision')}"
    )


def model_properties(model: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs recorded on every report of a zoo test of ``model``."""
    family = find_family(model)
    return [
        ("model", model),
        ("task", family.task if family else "unknown"),
        ("family", family.name if family else "unknown"),
    ]


# -- --zoo-list ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    name: str
    task: str
    family: str
    #: The head paths the kit's adapter replaces, or why there is none.
    adapter: str
    parameters: int | None
    classes: int | None
    weights: tuple[str, ...]
    default_weights: str | None
    #: Why the model could not be built structurally, when it could not.
    problem: str | None = None


def _weights(name: str) -> tuple[tuple[str, ...], str | None]:
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
    except (ValueError, KeyError):
        return (), None
    members = tuple(f"{enum.__name__}.{member.name}" for member in enum)
    default = getattr(enum, "DEFAULT", None)
    return members, (f"{enum.__name__}.{default.name}" if default is not None else None)


def list_row(name: str) -> ModelRow:
    """Describe one model from a structural build (no weight memory, no download)."""
    from .building import build_model
    from .heads import find_adapter

    family = find_family(name)
    weights, default = _weights(name)
    task = family.task if family else "unknown"
    family_name = family.name if family else "unknown"
    try:
        model = build_model(name, structural=True)
    except Exception as exc:  # a listing must not stop at one model; the row says what happened
        problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return ModelRow(name, task, family_name, "?", None, None, weights, default, problem)
    adapter = find_adapter(model)
    classes = None
    if adapter is None:
        adapter_text = "no adapter"
    else:
        try:
            present = adapter.present_heads(model)
        except LookupError:  # NoHeadError: a model that predicts no classes (optical flow)
            adapter_text = "no class head"
        else:
            adapter_text = _compact(present)
            head = model.get_submodule(present[0])
            outputs = getattr(head, "out_features", None) or getattr(head, "out_channels", None)
            # a detection head has k outputs per class (anchors, box coordinates)
            classes = outputs // adapter.multiple(present[0]) if isinstance(outputs, int) else None
    parameters = sum(p.numel() for p in model.parameters())
    return ModelRow(name, task, family_name, adapter_text, parameters, classes, weights, default)


def _compact(paths: Sequence[str]) -> str:
    """``a.list.0.1, a.list.1.1, a.list.2.1`` -> ``a.list.{0..2}.1``: SSD has a head per feature map.

    Paths that differ only in one numeric component, over a consecutive range of 3 or more, are
    shown once; everything else as it is, in the adapter's order.
    """
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for path in paths:
        tokens = path.split(".")
        signature = tuple("#" if t.isdigit() else t for t in tokens)
        groups.setdefault(signature, []).append(tokens)
    shown: list[str] = []
    for members in groups.values():
        varying = [i for i in range(len(members[0])) if len({m[i] for m in members}) > 1]
        values = [int(m[varying[0]]) for m in members] if len(varying) == 1 else []
        if len(values) > 2 and values == list(range(values[0], values[0] + len(values))):
            tokens = list(members[0])
            tokens[varying[0]] = f"{{{values[0]}..{values[-1]}}}"
            shown.append(".".join(tokens))
        else:
            shown += [".".join(m) for m in members]
    return ", ".join(shown)


def list_rows(names: Iterable[str]) -> list[ModelRow]:
    return [list_row(name) for name in names]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_list(rows: Sequence[ModelRow]) -> list[str]:
    """The ``--zoo-list`` table, one line per model, then a note for each model that did not build."""
    header = ("model", "task", "family", "head (adapter)", "parameters", "classes", "weights")
    cells = []
    for row in rows:
        names = [w.split(".", 1)[1] for w in row.weights]
        default = row.default_weights.split(".", 1)[1] if row.default_weights else None
        weights = ", ".join(f"{n}*" if n == default else n for n in names) or "-"
        enum = row.weights[0].split(".", 1)[0] + ": " if row.weights else ""
        cells.append(
            (
                row.name,
                row.task,
                row.family,
                row.adapter,
                f"{row.parameters:,}" if row.parameters is not None else "?",
                str(row.classes) if row.classes is not None else "-",
                enum + weights,
            )
        )
    lines = _table(header, cells, right={4, 5})
    lines.append(f"{len(rows)} model(s); * marks the DEFAULT weights; parameters as the kit builds them.")
    lines += [f"{row.name}: could not be built offline: {row.problem}" for row in rows if row.problem]
    return lines


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
    # "pytest_zoo.netguard.NetworkAccessError: ..." -> "NetworkAccessError: ...": room for the URL
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
    lines = _table(("family", "models", *shown), rows, right=set(range(1, 2 + len(shown))))
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
        self.written = ""

    @property
    def json_path(self) -> Path:
        return self.path.with_suffix(".json")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        model = _report_model(report)
        if model is None:
            return
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
            "torch": _version("torch"),
            "torchvision": _version("torchvision"),
            "totals": dict(Counter(e.outcome for e in entries)),
            "checks": checks,
            "models": models,
            "tests": [dataclasses.asdict(e) for e in entries],
        }

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput"):
            return  # the controller writes the merged report
        data = self.data()
        _write(self.path, render_report(data))
        _write(self.json_path, json.dumps(data, indent=2, sort_keys=False) + "\n")
        self.written = (
            f"zoo report: {len(data['models'])} model(s) x {len(data['checks'])} check(s) "  # type: ignore[arg-type]
            f"written to {self.path} and {self.json_path}"
        )

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.written:
            terminalreporter.write_line(self.written)


def _write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


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
    return "\n".join(lines) + "\n"
