"""Command-line options and ini keys, read and validated without importing torch.

Every value is checked when pytest configures, so a typo is a usage error naming the option, the
bad value and what is valid, before a single model is built. The result, with the selected
models, is the session's :class:`ZooState` (``config.stash[STATE_KEY]``); it lives here, beside the
options, so that every hook module reads it without importing the entry point.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..zoo.deploy_paths import METHODS as DEPLOY_METHODS
from ..zoo.families import TASKS
from ..zoo.selection import Patterns, SelectionError, parse_patterns

__all__ = [
    "DEFAULT_EXAMPLES",
    "SUITE_MODES",
    "SnapshotOptions",
    "ZooOptions",
    "add_options",
    "read_options",
    "read_report_path",
    "read_snapshot_options",
]

DEFAULT_EXAMPLES = 3
#: ``--zoo-suite``: ``auto`` collects the shipped suite only when no gate class was collected.
SUITE_MODES = ("auto", "yes", "no")
_DEVICE = re.compile(r"^(auto|cpu|meta|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ZooOptions:
    patterns: Patterns
    device: str
    examples: int
    #: ``--zoo-tasks``: only models of these tasks are selected; empty means every task.
    tasks: tuple[str, ...] = ()
    #: Where ``examples`` came from: ``--zoo-examples``, ``ini option zoo_examples`` or ``default``.
    examples_source: str = "default"
    #: ``--zoo-suite``: whether ``--zoo-models`` collects the shipped suite (see :data:`SUITE_MODES`).
    suite: str = "auto"
    #: ``--zoo-deploy``: the deployment paths ``test_deployability`` checks in every class that
    #: declares no ``deploy`` of its own (the shipped suite included); empty: none.
    deploy: tuple[str, ...] = ()

    @property
    def requested(self) -> bool:
        """Whether the user asked for zoo models at all; nothing heavy happens otherwise."""
        return bool(self.patterns.include or self.tasks)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("zoo", "pytest-zoo: torchvision model zoo conformance")
    group.addoption(
        "--zoo-models",
        metavar="PATTERNS",
        help="run the zoo conformance suite for these models: comma-separated globs, '!glob' excludes "
        "(e.g. 'resnet*,vgg1?,!vgg13'). ini: zoo_models.",
    )
    group.addoption(
        "--zoo-exclude", metavar="PATTERNS", help="comma-separated globs to leave out. ini: zoo_exclude."
    )
    group.addoption(
        "--zoo-tasks",
        metavar="TASKS",
        help=f"only check models of these tasks, comma-separated: {', '.join(TASKS)}. "
        "Without --zoo-models, every model of those tasks. ini: zoo_tasks.",
    )
    group.addoption(
        "--zoo-device",
        metavar="DEVICE",
        help="device for the checks: auto (CUDA when available, else CPU), cpu, cuda, cuda:N. "
        "ini: zoo_device.",
    )
    group.addoption(
        "--zoo-examples",
        metavar="N",
        help=f"Hypothesis examples per check (default {DEFAULT_EXAMPLES}). ini: zoo_examples.",
    )
    group.addoption(
        "--zoo-list",
        action="store_true",
        default=False,
        help="print the selected models (all without --zoo-models) as a table: task, family, head, "
        "parameters, classes, weights; then exit without running tests.",
    )
    group.addoption(
        "--zoo-snapshot",
        metavar="PATH",
        help="compare every selected model (all without --zoo-models) with this upgrade snapshot "
        "file; one test per model. ini: zoo_snapshot.",
    )
    group.addoption(
        "--zoo-snapshot-update",
        action="store_true",
        default=False,
        help="record the selected models into the --zoo-snapshot file instead of comparing; other "
        "entries are kept, entries of models torchvision no longer has are removed.",
    )
    group.addoption(
        "--zoo-suite",
        metavar="auto|yes|no",
        help="whether --zoo-models also runs the shipped conformance suite: auto (default) runs it "
        "only when no gate class (ZooConformance/WeightsConformance subclass) was collected; yes "
        "always; no never. ini: zoo_suite.",
    )
    group.addoption(
        "--zoo-deploy",
        metavar="PATHS",
        help=f"check deployability ({', '.join(DEPLOY_METHODS)}, comma-separated, or all) in the "
        "shipped suite and every gate class that declares no deploy of its own. ini: zoo_deploy.",
    )
    group.addoption(
        "--zoo-report",
        metavar="PATH",
        help="write a conformance report (model x check) as Markdown to PATH and as JSON beside it "
        "(PATH with the suffix .json), merged over xdist workers. ini: zoo_report.",
    )
    parser.addini("zoo_models", "zoo models to check (globs, comma-separated)", default="")
    parser.addini("zoo_exclude", "zoo models to leave out (globs, comma-separated)", default="")
    parser.addini("zoo_tasks", f"zoo tasks to check, comma-separated ({', '.join(TASKS)})", default="")
    parser.addini("zoo_device", "device for the zoo checks", default="auto")
    parser.addini(
        "zoo_examples", f"Hypothesis examples per zoo check (default {DEFAULT_EXAMPLES})", default=""
    )
    parser.addini("zoo_snapshot", "upgrade snapshot file, relative to the ini file", default="")
    parser.addini("zoo_suite", "auto, yes or no: whether zoo_models runs the shipped suite", default="auto")
    parser.addini("zoo_report", "conformance report (Markdown; JSON beside it), relative to the ini file")
    parser.addini(
        "zoo_checkpoints",
        "directories of real torchvision checkpoint files, searched by file name before a checkpoint "
        "is fabricated (also: env PYTEST_ZOO_CHECKPOINTS)",
        type="paths",
        default=[],
    )
    parser.addini("zoo_deploy", f"deployment paths to check: {', '.join(DEPLOY_METHODS)} or all", default="")


def _value(config: pytest.Config, name: str) -> tuple[str, str]:
    """The effective value and where it came from, for error messages."""
    cli = config.getoption(name)
    if cli is not None:
        return str(cli), f"--{name.replace('_', '-')}"
    return str(config.getini(name)), f"ini option {name}"


def read_options(config: pytest.Config) -> ZooOptions:
    models, models_src = _value(config, "zoo_models")
    exclude, exclude_src = _value(config, "zoo_exclude")
    if config.getoption("zoo_models") is not None and not models.strip():
        raise pytest.UsageError(
            "--zoo-models is empty. Give comma-separated globs, e.g. --zoo-models='resnet*' or '*' for all."
        )
    try:
        patterns = parse_patterns(models, source=models_src)
        excluded = parse_patterns(exclude, source=exclude_src)
    except SelectionError as exc:
        raise pytest.UsageError(str(exc)) from None
    patterns = Patterns(patterns.include, patterns.exclude + excluded.include + excluded.exclude)

    device, device_src = _value(config, "zoo_device")
    device = device.strip()
    if not _DEVICE.match(device):
        raise pytest.UsageError(
            f"{device_src}={device!r} is not a device. Valid: auto, cpu, cuda, cuda:N, mps, meta."
        )

    examples_text, examples_src = _value(config, "zoo_examples")
    if not examples_text.strip() and config.getoption("zoo_examples") is None:
        examples_text, examples_src = str(DEFAULT_EXAMPLES), "default"
    try:
        examples = int(examples_text)
    except ValueError:
        examples = 0
    if examples < 1:
        raise pytest.UsageError(
            f"{examples_src}={examples_text!r} is not a positive whole number of Hypothesis examples "
            f"(default {DEFAULT_EXAMPLES})."
        )
    tasks = read_tasks(config)
    if tasks and not patterns.include:
        patterns = Patterns(("*",), patterns.exclude)
    suite, suite_src = _value(config, "zoo_suite")
    suite = suite.strip().lower()
    if suite not in SUITE_MODES:
        raise pytest.UsageError(f"{suite_src}={suite!r} is not one of {', '.join(SUITE_MODES)}.")
    return ZooOptions(
        patterns=patterns,
        device=device,
        examples=examples,
        tasks=tasks,
        examples_source=examples_src,
        suite=suite,
        deploy=read_deploy(config),
    )


def read_deploy(config: pytest.Config) -> tuple[str, ...]:
    """``--zoo-deploy``/``zoo_deploy`` as deployment paths in checking order; a typo is a usage error."""
    text, source = _value(config, "zoo_deploy")
    valid = f"Valid: {', '.join(DEPLOY_METHODS)}, or all (comma-separated, e.g. --zoo-deploy=export,fx)."
    if config.getoption("zoo_deploy") is not None and not text.strip():
        raise pytest.UsageError(f"--zoo-deploy is empty. {valid}")
    words = {word.strip().lower() for word in text.split(",") if word.strip()}
    unknown = sorted(words - {*DEPLOY_METHODS, "all"})
    if unknown:
        raise pytest.UsageError(
            f"{source}={text!r}: unknown deployment path(s) {', '.join(map(repr, unknown))}. {valid}"
        )
    return tuple(m for m in DEPLOY_METHODS if m in words or "all" in words)


def read_report_path(config: pytest.Config) -> Path | None:
    """``--zoo-report``/``zoo_report``: the Markdown path, checked to be writable now.

    A path that cannot be written is a usage error before a single model is built, not a
    traceback after an hour of checks. The JSON goes beside it, with the suffix ``.json``.
    """
    cli = config.getoption("zoo_report")
    if cli is not None:
        source, text = "--zoo-report", str(cli).strip()
        base = config.invocation_params.dir
    else:
        source, text = "ini option zoo_report", str(config.getini("zoo_report") or "").strip()
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        if not text:
            return None
    if not text:
        raise pytest.UsageError("--zoo-report is empty. Give a file path, e.g. --zoo-report=zoo-report.md")
    path = base / text
    problem = None
    if path.suffix == ".json":
        problem = "the report path names the Markdown file; the JSON is written beside it"
    elif path.is_dir():
        problem = "it is a directory"
    elif not path.parent.is_dir():
        problem = f"the directory {path.parent} does not exist"
    elif not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        problem = "it is not writable"
    elif path.with_suffix(".json").is_dir():
        problem = f"{path.with_suffix('.json')} (where the JSON goes) is a directory"
    elif (snapshot := read_snapshot_options(config)) is not None and snapshot.path.resolve() in (
        path.resolve(),
        path.with_suffix(".json").resolve(),
    ):
        # The report is rewritten at the end of the run: it would replace the snapshot file.
        problem = f"the report would overwrite the upgrade snapshot ({snapshot.source}={snapshot.path})"
    if problem is not None:
        raise pytest.UsageError(
            f"{source}={text}: cannot write the zoo report to {path}: {problem}. "
            "Give a writable file path such as zoo-report.md (the JSON goes to zoo-report.json)."
        )
    return path


def read_tasks(config: pytest.Config) -> tuple[str, ...]:
    """``--zoo-tasks``/``zoo_tasks`` as a tuple of known task names; a typo is a usage error."""
    text, source = _value(config, "zoo_tasks")
    if config.getoption("zoo_tasks") is not None and not text.strip():
        raise pytest.UsageError(f"--zoo-tasks is empty. Give comma-separated tasks from: {', '.join(TASKS)}.")
    if not text.strip():
        return ()
    tasks = [item.strip().replace("-", "_") for item in text.split(",")]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        close = {task: difflib.get_close_matches(task, TASKS, n=1) for task in unknown}
        hints = "".join(f" ({task!r}: did you mean {m[0]!r}?)" for task, m in close.items() if m)
        raise pytest.UsageError(
            f"{source}={text!r}: unknown task(s) {', '.join(map(repr, unknown))}.{hints} "
            f"Valid tasks: {', '.join(TASKS)}."
        )
    return tuple(dict.fromkeys(tasks))


def check_conflicts(config: pytest.Config, options: ZooOptions) -> None:
    """Options that are each valid but contradict each other: refused rather than half-honoured."""
    listing = bool(config.getoption("zoo_list", False))
    try:
        snapshot_ini = str(config.getini("zoo_snapshot") or "").strip()
    except ValueError:  # no snapshot support registered
        snapshot_ini = ""
    snapshot = config.getoption("zoo_snapshot", None) is not None or bool(snapshot_ini)
    if listing and config.getoption("zoo_snapshot_update", False):
        raise pytest.UsageError(
            "--zoo-list and --zoo-snapshot-update conflict: --zoo-list runs no tests, so the snapshot "
            "would not be written. Run them separately."
        )
    # Only a command-line exclusion is refused: an ini zoo_exclude is standing configuration that
    # also applies to runs that select no models.
    cli_models, cli_exclude = config.getoption("zoo_models"), config.getoption("zoo_exclude")
    if not (options.requested or listing or snapshot) and (cli_models or cli_exclude):
        given = f"--zoo-models={cli_models!r}" if cli_models else f"--zoo-exclude={cli_exclude!r}"
        raise pytest.UsageError(
            f"{given} only excludes, and there is nothing to exclude from: no zoo models are "
            "selected. Add the models to check, e.g. --zoo-models='*' --zoo-exclude='vgg*', "
            "or drop the exclusion."
        )


@dataclass(frozen=True)
class SnapshotOptions:
    path: Path
    update: bool
    #: Where the path came from (``--zoo-snapshot`` or the ini key), for error messages.
    source: str


def read_snapshot_options(config: pytest.Config) -> SnapshotOptions | None:
    """The snapshot file and mode, or ``None`` when no snapshot was asked for.

    A command-line path is relative to where pytest was invoked, an ini path to the ini file, as
    a user reading either would expect.
    """
    update = bool(config.getoption("zoo_snapshot_update"))
    cli = config.getoption("zoo_snapshot")
    if cli is not None:
        if not str(cli).strip():
            raise pytest.UsageError(
                "--zoo-snapshot is empty. Give a file path, e.g. --zoo-snapshot=zoo-snapshot.json"
            )
        return SnapshotOptions(config.invocation_params.dir / str(cli), update, "--zoo-snapshot")
    ini = str(config.getini("zoo_snapshot")).strip()
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return SnapshotOptions(base / ini, update, "ini option zoo_snapshot")
    if update:
        raise pytest.UsageError(
            "--zoo-snapshot-update needs a file to write: add --zoo-snapshot=PATH "
            "(or the zoo_snapshot ini key)."
        )
    return None


def resolve_device(spec: str, source: str = "--zoo-device") -> str:
    """Turn ``auto`` into ``cuda``/``cpu`` and reject accelerators this machine does not have.

    ``source`` names where the value came from (the option or the ini key) in the usage error.
    """
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = spec.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise pytest.UsageError(
                f"{source}={spec}: CUDA is not available on this machine. Use --zoo-device=cpu or auto."
            )
        if index and int(index) >= count:
            raise pytest.UsageError(
                f"{source}={spec}: only {count} CUDA device(s), cuda:0..cuda:{count - 1}."
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise pytest.UsageError(f"{source}={spec}: MPS is not available. Use --zoo-device=cpu or auto.")
    return spec


@dataclass(eq=False)  # eq=False keeps it hashable, like everything the kit hands to pytest
class ZooState:
    """What configure decided, kept in the config's stash: every hook and fixture reads it there."""

    options: ZooOptions
    #: The selected torchvision builder names, sorted, or ``None`` when no zoo models were
    #: requested. Possibly empty: a pattern may name a model only a gate class lists, which is
    #: known after collection (see ``pytest_collection_modifyitems``).
    selected: list[str] | None


STATE_KEY = pytest.StashKey[ZooState]()
