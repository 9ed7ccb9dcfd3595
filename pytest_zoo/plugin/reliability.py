"""The hooks that wrap every zoo test: network guard, state-leak guard, fault isolation, reporting.

Registered by the plugin at configure time as one object, so the whole reliability layer is in
one place and the entry-point module stays a thin list of options and fixtures. A *zoo test* is a
test parametrized by ``zoo_model_name`` (the shipped suite, ``ZooConformance`` subclasses, and any
test using the ``zoo_model`` fixture); every other test in the user's session is left untouched.

Around each zoo test, from the start of setup to the end of teardown:

* :func:`~pytest_zoo.guards.network.network_guard` is active, with a private ``TORCH_HOME``; a network
  attempt fails the test with the URL, even when the code under test swallowed the error;
* the process-wide state is snapshotted before and restored after; a change other than the random
  generators fails the test's teardown with the list of what changed (see :mod:`.isolation`);
* a missing head adapter skips, an out-of-memory fails with a precise reason, and other errors get
  a note naming the model, so one broken model never hides or takes down the others;
* the report carries ``model``, ``task`` and ``family`` properties, for ``--junitxml``, xdist and
  the per-family summary at the end of the run.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..guards.state import StateSnapshot, capture, classify
from .report import collect_outcomes, model_properties, render_summary

if TYPE_CHECKING:
    from ..guards.network import NetworkGuard
    from ..weights.serving import PretrainedServer

__all__ = ["ZooReliability", "zoo_model_of"]


def zoo_model_of(item: pytest.Item) -> str | None:
    """The zoo model a test item checks, or ``None`` for a test that is not a zoo test."""
    marker = item.get_closest_marker("zoo")
    if marker is not None and marker.args:
        return str(marker.args[0])
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("zoo_model_name") if callspec is not None else None
    return name if isinstance(name, str) else None


def _shared_fixtures(item: pytest.Item) -> frozenset[str]:
    """The user's higher-scoped (class, module, package, session) fixtures that are set up now.

    A session fixture that sets the default dtype or seeds the generators for the whole run is
    meant to change global state. When one starts during a zoo test's setup, or finishes during its
    teardown, that test's before/after comparison would see the fixture's doing, so it is skipped.
    The kit's own fixtures and pytest's change no global state and do not count.
    """
    info = getattr(item, "_fixtureinfo", None)
    ready = set()
    for name, definitions in getattr(info, "name2fixturedefs", {}).items():
        for definition in definitions:
            module = getattr(getattr(definition, "func", None), "__module__", "") or ""
            if (
                getattr(definition, "scope", "function") != "function"
                and getattr(definition, "cached_result", None) is not None
                and not module.startswith(("pytest_zoo.", "_pytest."))
            ):
                ready.add(f"{name} ({module})")
    return frozenset(ready)


@contextlib.contextmanager
def _hypothesis_statistics(item: pytest.Item) -> Generator[None, None, None]:
    """Hand the statistics of the Hypothesis runs inside a zoo check to Hypothesis' pytest plugin.

    The checks run ``@given`` on inner functions, which that plugin does not see: it collects
    statistics only around a test function that is itself a Hypothesis test. So for a zoo test
    the kit collects them, one block per inner run, into ``item.hypothesis_statistics``, where the
    plugin picks them up for ``--hypothesis-show-statistics`` (and ships them through xdist).
    """
    if zoo_model_of(item) is None or "hypothesis" not in sys.modules:
        yield
        return
    from hypothesis import is_hypothesis_test
    from hypothesis.statistics import collector, describe_statistics

    if is_hypothesis_test(getattr(item, "obj", None)):
        yield  # Hypothesis' own plugin collects them
        return
    blocks: list[str] = []

    def note(stats: Any) -> None:
        stats["nodeid"] = item.nodeid if not blocks else f"{item.nodeid} (run {len(blocks) + 1})"
        blocks.append(describe_statistics(stats))
        item.hypothesis_statistics = "\n".join(blocks)  # type: ignore[attr-defined]

    with collector.with_value(note):  # type: ignore[arg-type]  # typed DynamicVariable[None]
        yield


@dataclass
class _Guarded:
    model: str
    snapshot: StateSnapshot
    guard: NetworkGuard
    stack: contextlib.ExitStack
    #: The user's higher-scoped fixtures that were set up when the test started.
    shared: frozenset[str] = frozenset()
    #: A higher-scoped fixture started during setup: the snapshot predates a change meant to last.
    shared_started: bool = False
    #: How many network attempts have already been turned into a failed report.
    reported: int = 0
    leaks: list[str] = field(default_factory=list)


_GUARDED = pytest.StashKey[_Guarded]()
_OUTCOME_EXCEPTIONS = (pytest.skip.Exception, pytest.fail.Exception, pytest.xfail.Exception)


class ZooReliability:
    """pytest hooks, registered once per session by the plugin's ``pytest_configure``."""

    def __init__(self, device: str, checkpoints: Sequence[Path] = ()) -> None:
        #: The device zoo tests run on, as resolved at configure time; used in failure messages.
        self.device = device
        #: The user's directories of real checkpoint files (ini ``zoo_checkpoints``).
        self.checkpoints = tuple(checkpoints)
        #: Serves torchvision's checkpoints to every zoo test, from one temporary hub directory.
        self.server: PretrainedServer | None = None
        #: Where each zoo test's private ``TORCH_HOME`` is made (see :meth:`_private_home`).
        self.homes: Path | None = None
        self.tests = 0

    def _private_home(self) -> Path:
        """A ``TORCH_HOME`` path of its own for one zoo test, made only when something writes there.

        Not a directory made and deleted around every test: on some file systems that pair was
        milliseconds, more than a structural check of a small model. torch makes the directories
        it writes into; what a test left is deleted after it, and the parent at the session's end.
        """
        if self.homes is None:
            self.homes = Path(tempfile.mkdtemp(prefix="pytest-zoo-torch-home-"))
        self.tests += 1
        return self.homes / f"test-{self.tests}"

    def pytest_unconfigure(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.homes is not None:
            shutil.rmtree(self.homes, ignore_errors=True)

    def _convert(self, exc: BaseException, model: str, phase: str) -> BaseException | None:
        """The exception to raise instead of ``exc`` (``None``: re-raise ``exc`` as it is)."""
        if isinstance(exc, _OUTCOME_EXCEPTIONS) or not isinstance(exc, Exception):
            return None
        fault = classify(exc, model, self.device, phase)
        if fault is not None and fault.skip_reason is not None:
            return pytest.skip.Exception(fault.skip_reason, _use_item_location=True)
        if fault is not None and fault.error is not None:
            # The message says everything; the traceback would only show this hook.
            return pytest.fail.Exception(f"{type(fault.error).__name__}: {fault.error}", pytrace=False)
        if not isinstance(exc, AssertionError) and hasattr(exc, "add_note"):  # Python 3.11+
            props = dict(model_properties(model))
            exc.add_note(
                f"pytest-zoo: raised while checking model {model!r} (family {props['family']}, "
                f"task {props['task']}) on {self.device}, during test {phase}; "
                "the other models' tests are unaffected."
            )
        return None

    def _isolated(self, item: pytest.Item, phase: str) -> Generator[None, object, object]:
        model = zoo_model_of(item)
        try:
            return (yield)
        except pytest.fail.Exception as exc:
            # pytest-timeout's signal method fails the test from inside whatever it was doing;
            # its message names neither the model nor the phase, which is what a reader needs.
            if model is not None and str(exc.msg).startswith("Timeout") and "pytest-zoo:" not in str(exc.msg):
                exc.msg = (
                    f"{exc.msg}\npytest-zoo: the timeout hit while checking model {model!r} on "
                    f"{self.device}, during test {phase} of {item.name}."
                )
            raise
        except Exception as exc:
            if model is None:
                raise
            replacement = self._convert(exc, model, phase)
            if replacement is None:
                raise
        raise replacement from None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, object, object]:
        model = zoo_model_of(item)
        if model is not None:
            for prop in model_properties(model):
                if prop not in item.user_properties:
                    item.user_properties.append(prop)
            from ..guards.network import network_guard  # urllib.request & co.: only in runs with zoo tests

            snapshot = capture()
            stack = contextlib.ExitStack()
            home = self._private_home()
            stack.callback(shutil.rmtree, home, ignore_errors=True)
            # Loopback stays open: a local server a user's fixture runs is not "the network".
            guard = stack.enter_context(network_guard(torch_home=home, allow_loopback=True))
            from ..weights.serving import PretrainedServer

            # torchvision's weights are served (fabricated, or the user's files); the rest is blocked.
            self.server = self.server or PretrainedServer(self.checkpoints)
            stack.enter_context(self.server.serve())
            item.stash[_GUARDED] = _Guarded(model, snapshot, guard, stack, _shared_fixtures(item))
        try:
            return (yield from self._isolated(item, "setup"))
        finally:
            guarded = item.stash.get(_GUARDED, None)
            if guarded is not None and _shared_fixtures(item) != guarded.shared:
                guarded.shared_started = True

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        with _hypothesis_statistics(item):
            return (yield from self._isolated(item, "call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        guarded = item.stash.get(_GUARDED, None)
        if guarded is None:
            return (yield)
        try:
            result = yield
        finally:
            guarded.stack.close()  # leaves the network guard: TORCH_HOME and sockets are back
            # A shared fixture started in setup or finished in teardown: its changes are meant to
            # outlive this test, so neither report nor undo them (see _shared_fixtures).
            if not guarded.shared_started and _shared_fixtures(item) == guarded.shared:
                guarded.leaks = guarded.snapshot.leaks()
                guarded.snapshot.restore()
        if guarded.leaks:
            pytest.fail(
                f"{guarded.model}: the test changed process-wide state and did not restore it "
                "(pytest-zoo has restored it, so later tests are unaffected):\n  "
                + "\n  ".join(guarded.leaks)
                + "\nRestore it in the test (try/finally, or a fixture): results must not depend on order.",
                pytrace=False,
            )
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        guarded = item.stash.get(_GUARDED, None)
        if guarded is None:
            return report
        new = guarded.guard.attempts[guarded.reported :]
        guarded.reported = len(guarded.guard.attempts)
        if new and report.passed:
            report.outcome = "failed"
            report.longrepr = (
                f"{guarded.model}: the test tried to reach the network during {report.when} and the "
                "error was caught and ignored by the code under test:\n  "
                + "\n  ".join(new)
                + "\nZoo tests must run offline: torchvision's weights are served from local files; "
                "nothing else may be downloaded."
            )
        if call.when == "teardown":
            del item.stash[_GUARDED]
        return report

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        reports = [
            report
            for values in terminalreporter.stats.values()
            for report in values
            if isinstance(report, pytest.TestReport)
        ]
        outcomes = collect_outcomes(reports)
        if not outcomes:
            return
        terminalreporter.write_sep("=", "pytest-zoo: results per family")
        for line in render_summary(outcomes):
            terminalreporter.write_line(line)
