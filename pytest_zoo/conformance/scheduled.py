"""Which checks this process's pytest session will run, per gate class and model.

A check may leave part of its work to another check that does it anyway, but only when that
check surely runs in the same process: ``test_forward_shape`` leaves the train-mode output shapes
to ``test_gradients_reach_head_only``, which runs a train-mode forward per example regardless.
The plugin records what runs once collection is final (after ``-k``, ``-m``, ``--deselect``,
``--lf``): an item marked ``skip``, ``skipif`` or ``xfail`` is not counted (it may not run, or
its failure may not count), nor is anything when an xdist mode may send a model's tests to
different workers. Anything not recorded (a gate method called outside a session) does not run,
so the asking check does the work itself.

It imports neither torch nor pytest: the plugin imports it while collecting.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Schedule", "record", "restore", "will_run"]

#: ``(gate class, model) -> the names of the test functions that run``.
Schedule = dict[tuple[type, str], frozenset[str]]

_SCHEDULED: Schedule = {}


def record(items: Iterable[tuple[type, str, str]]) -> Schedule:
    """Replace what runs with ``items`` (``(gate class, model, test function name)`` each); the
    schedule it replaced, for a session nested in another (pytester) to :func:`restore`."""
    found: dict[tuple[type, str], set[str]] = {}
    for cls, model, test in items:
        found.setdefault((cls, model), set()).add(test)
    return restore({key: frozenset(tests) for key, tests in found.items()})


def restore(schedule: Schedule) -> Schedule:
    """Make ``schedule`` what runs; the one it replaced."""
    previous = dict(_SCHEDULED)
    _SCHEDULED.clear()
    _SCHEDULED.update(schedule)
    return previous


def will_run(cls: type, model: str, test: str) -> bool:
    """Whether this session runs ``test`` of gate class ``cls`` for ``model`` in this process."""
    return test in _SCHEDULED.get((cls, model), ())
