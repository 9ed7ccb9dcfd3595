"""Where and when zoo tests run: each model's tests back to back, on one xdist worker, memory freed after.

The model cache (:mod:`pytest_zoo.models.cache`) builds a model once and keeps it only while its tests
run. That pays off only if a model's tests are adjacent, which pytest's default order (every model
for the first check, then every model for the second) defeats, and only if pytest-xdist does not
scatter them over workers, where each worker would build the model again. So this plugin:

* replaces xdist's default ``--dist load`` scheduler by :class:`ZooModelScheduling`, which sends
  all of a model's tests to one worker and every other test on its own, as ``load`` would. Node
  ids are never rewritten (xdist's ``loadgroup`` appends ``@group``, which breaks ``--lf``,
  ``--sw``, ``--deselect`` and pasted ids): each worker tells the controller which model each of
  its test ids checks through a small file in a directory the controller made. The order is a
  pure function of the collected items, so every worker collects the same list, as xdist requires.
  An explicit ``--dist`` (``loadscope``, ``loadfile``, ``loadgroup``, ``worksteal``, ``each``)
  is left to xdist;
* orders the items so that a model's tests are consecutive, in their original relative order;
  under xdist the models come first, largest first by :mod:`pytest_zoo.zoo.cost`'s estimate,
  and the scheduler hands them out in that order (LPT), so the run does not end with one worker
  alone on a model that takes minutes while the other idles;
* releases the cached models once the last test of a model has torn down, so the next model is
  built into freed memory: peak memory is that of the largest model, not the sum;
* records, once collection is final, which zoo tests this process surely runs
  (:mod:`pytest_zoo.conformance.scheduled`), so that a check may leave work to another check that
  does it anyway (the train-mode output shapes, asserted on the gradient check's own forward);
* on ``--zoo-device=meta``, runs zoo tests under :func:`~pytest_zoo.models.building.structural_init`, so a
  head built by a user's ``replace_head`` hook lands on the meta device like the rest of the model;
* once collection is final in a session with zoo tests, moves everything alive (torch, torchvision,
  the collected items: a few hundred thousand objects) out of the garbage collector's sight with
  :func:`gc.freeze`, and again after each model, once its tests' garbage is collected (what lives
  on then: the meta memo's shapes, the reports); all of it back at the session's end. Each
  automatic full collection had scanned them all, a tenth of a second or more each: a tenth of
  the eight-model run and of a small gate's, 10 s of the structural sweep;
* reports the cache's work in the terminal summary, summed over xdist workers.

It imports neither torch nor torchvision: the cache is touched only if a test already imported it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .. import models
from ..atomic import write_text_atomically
from ..conformance import scheduled
from ..models.stats import describe_stats
from .reliability import zoo_model_of

__all__ = [
    "ZooScheduling",
    "group_by_model",
    "model_costs",
    "share_cores",
    "worker_usage_error",
]

USAGE_ERROR_FILE = "usage-error.txt"


def group_by_model(items: list[pytest.Item], *, largest_first: bool = False) -> None:
    """Reorder ``items`` in place so each zoo model's tests are consecutive.

    Each model's block sits where its first test was; tests that check no zoo model keep their
    place relative to the blocks; within a block the collection order is kept. ``largest_first``
    (xdist workers) instead puts the blocks first, by :func:`model_costs` descending, then the other
    tests in their order: the schedule that ends soonest hands out the long jobs first and keeps
    the short ones (and tests of unknown cost, most often unit tests) to fill the gaps at the end.
    """
    models = [zoo_model_of(item) for item in items]
    first: dict[str, int] = {}
    for index, model in enumerate(models):
        if model is not None:
            first.setdefault(model, index)
    if largest_first and first:
        costs = model_costs(items, models)
        rank = {model: place for place, model in enumerate(sorted(first, key=lambda m: -costs[m]))}
        keys = [(0, rank[m], i) if m is not None else (1, i, i) for i, m in enumerate(models)]
    else:
        keys = [(first[m] if m is not None else i, i, 0) for i, m in enumerate(models)]
    order = sorted(range(len(items)), key=keys.__getitem__)
    items[:] = [items[i] for i in order]


def model_costs(items: list[pytest.Item], models: list[str | None]) -> dict[str, float]:
    """The estimated cost of each zoo model's tests among ``items`` (``models[i]`` checks ``items[i]``).

    A pure function of the collected items, as xdist needs: every worker computes the same order.
    Only called when zoo models are collected, so torchvision is already loaded.
    """
    from ..zoo.cost import estimate

    def check(item: pytest.Item) -> str:
        return getattr(item, "originalname", None) or item.name.partition("[")[0]

    def weights(item: pytest.Item) -> str | None:
        callspec = getattr(item, "callspec", None)
        weights_id = callspec.params.get("zoo_weights") if callspec is not None else None
        if weights_id is None:
            return None
        # a test parametrized by weights: the weights package (and torch) is loaded already
        from ..weights.cases import resolve_weights_id

        try:
            return str(resolve_weights_id(str(weights_id)).weights.name)
        except LookupError:  # not a zoo weights id: no member, the model's own size stands in
            return str(weights_id)

    return estimate(
        (model, check(item), weights(item))
        for item, model in zip(items, models, strict=True)
        if model is not None
    )


#: How torch says an operation needs data that a meta tensor does not have.
_NO_VALUES = re.compile(
    r"meta tensor|Meta kernel|with Meta tensors|cannot be called on meta|no data|register_meta|"
    r"data-dependent|data-independent|on the meta device|device meta is not on the expected device|"
    r"from the 'Meta' backend",  # torch 2.1's dispatcher, for an op with no meta kernel (.item())
    re.IGNORECASE,
)


def _megabytes(models: set[str]) -> dict[str, float]:
    """What each model's checks hold at their peak (:func:`~pytest_zoo.zoo.cost.model_megabytes`)."""
    if not models:
        return {}
    from ..zoo.cost import model_megabytes

    return {model: model_megabytes(model) for model in sorted(models)}


def _missing_values(error: BaseException) -> str | None:
    """The first line of the torch error in ``error``'s cause chain that says values are missing."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if isinstance(current, NotImplementedError | RuntimeError) and _NO_VALUES.search(text):
            return text.splitlines()[0][:200] if text else type(current).__name__
        current = current.__cause__ or current.__context__
    return None


def _loaded_cache() -> ModuleType | None:
    """The model-cache module if this process imported it; ``None`` (and no torch import) if not.

    A process that ran no zoo test never imported it, and importing it here would import torch in
    every pytest run of every project that installed the kit. A loaded submodule is an attribute
    of its package, which is how this asks without naming the module in a string.
    """
    cache: ModuleType | None = getattr(models, "cache", None)
    return cache


def _release_models() -> None:
    cache = _loaded_cache()
    if cache is not None:  # no zoo test ran in this process if the cache was never imported
        cache.active_cache().release()


#: Marks under which a collected test may not run, or its failure not count.
_NOT_SURE = frozenset({"skip", "skipif", "xfail"})


def _running_here(
    config: pytest.Config, items: list[pytest.Item], groups_dir: Path | None
) -> list[tuple[type, str, str]]:
    """``(gate class, model, test function)`` of each zoo test this process surely runs: none on an
    xdist worker whose scheduler may send a model's tests elsewhere (``worksteal``, ``loadgroup``,
    ``load`` without :class:`ZooModelScheduling`)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        dist = workerinput.get("zoo_dist")
        if not (dist in ("loadscope", "loadfile", "each") or (dist == "load" and groups_dir is not None)):
            return []
    return [
        (cls, model, getattr(item, "originalname", item.name))
        for item in items
        if (cls := getattr(item, "cls", None)) is not None
        and (model := zoo_model_of(item)) is not None
        and not any(mark.name in _NOT_SURE for mark in item.iter_markers())
    ]


def share_cores(workers: int) -> int | None:
    """Give each of ``workers`` processes its share of the cores for torch's intra-op threads.

    torch starts as many threads as the machine has cores in every process, so ``-n 2`` on two
    cores runs four threads that wait on each other at every parallel op (a compute run measured
    2-5x slower). An ``OMP_NUM_THREADS`` the user set is theirs and left alone. The variable is
    set before torch is imported where it can be (torch reads it at start), and applied to an
    already imported torch too. Returns the thread count it chose, or ``None``.
    """
    if "OMP_NUM_THREADS" in os.environ or workers < 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


class ZooScheduling:
    """The scheduling hooks, registered by the plugin at configure time as one object."""

    def __init__(self, config: pytest.Config, *, structural: bool) -> None:
        self.config = config
        self.structural = structural
        self.xdist = config.pluginmanager.hasplugin("xdist")
        #: Cache statistics reported by xdist workers, summed on the controller.
        self.worker_stats: dict[str, int] = {}
        self.workers = 0
        #: What an enclosing session in this process (pytester) runs, put back when this one ends.
        self.outer_schedule: scheduled.Schedule = {}
        #: Whether this session froze the garbage collector's view (see the module docstring).
        self.frozen = False
        workerinput = getattr(config, "workerinput", None)
        #: Where workers write what the controller needs before it schedules: ``{nodeid: model}``
        #: for its scheduler, a usage error found at collection (see :func:`worker_usage_error`).
        self.groups_dir: Path | None = None
        if workerinput is not None:
            self.groups_dir = Path(workerinput["zoo_groups"]) if workerinput.get("zoo_groups") else None
        elif self.xdist and getattr(config.option, "dist", "no") != "no":
            self.groups_dir = Path(tempfile.mkdtemp(prefix="pytest-zoo-groups-"))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.groups_dir is not None:
            node.workerinput["zoo_groups"] = str(self.groups_dir)
        # a worker's own config says dist="no": only the controller knows how tests are handed out
        node.workerinput["zoo_dist"] = self.config.getvalue("dist")

    @pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own LoadScheduling
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if self.groups_dir is None or config.getvalue("dist") != "load":
            return None
        from .xdist_scheduler import make_scheduler

        return make_scheduler(config, log, self.groups_dir)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.groups_dir is not None and not hasattr(config, "workerinput"):
            shutil.rmtree(self.groups_dir, ignore_errors=True)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        workerinput = getattr(config, "workerinput", None)
        group_by_model(items, largest_first=workerinput is not None)
        if workerinput is not None and any(zoo_model_of(item) is not None for item in items):
            # only a run that checks models gets its threads changed, before any test runs
            share_cores(int(workerinput.get("workercount", 1)))
        if workerinput is not None and self.groups_dir is not None:
            groups = {item.nodeid: model for item in items if (model := zoo_model_of(item)) is not None}
            megabytes = _megabytes(set(groups.values()))
            target = self.groups_dir / f"{workerinput['workerid']}.json"
            # the controller never reads half a file
            write_text_atomically(target, json.dumps({"groups": groups, "megabytes": megabytes}))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        if not (self.structural and zoo_model_of(item) is not None):
            return (yield)
        from ..models.building import structural_init

        try:
            with structural_init(cpu_default=False):
                return (yield)
        except Exception as error:
            missing = _missing_values(error)
            if missing is None:
                raise
            pytest.skip(
                f"{item.name} needs tensor values, which --zoo-device=meta does not have "
                f"({missing}); structural mode checks shapes only, run it with --zoo-device=cpu"
            )

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        model = zoo_model_of(item)
        if model is not None and (nextitem is None or zoo_model_of(nextitem) != model):
            _release_models()
            if self.frozen:
                # What lives on now (the meta memo's shapes, the reports) joins the frozen objects,
                # once the garbage of the model's tests is collected: a full collection, which
                # sees only what was made since the last model, so milliseconds.
                gc.collect()
                gc.freeze()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.outer_schedule = scheduled.record(_running_here(session.config, session.items, self.groups_dir))
        # Left alone where something froze already: a user's conftest, an enclosing session (pytester).
        if gc.get_freeze_count() == 0 and any(zoo_model_of(item) is not None for item in session.items):
            gc.freeze()  # what is alive now lives as long as the session (or is freed by refcount)
            self.frozen = True

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        cache = _loaded_cache()
        if cache is not None:  # a session in the same process before this one (pytester, IDEs)
            cache.reset_active_cache()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        error = self.groups_dir / USAGE_ERROR_FILE if self.groups_dir is not None else None
        if error is not None and not hasattr(session.config, "workerinput") and error.exists():
            # a worker found it at collection (see worker_usage_error): the controller reports it
            sys.stderr.write(f"ERROR: {error.read_text(encoding='utf-8')}\n")
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        stats = self._local_stats()
        _release_models()
        scheduled.restore(self.outer_schedule)
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None and stats:
            workeroutput["zoo_cache"] = stats

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        stats = getattr(node, "workeroutput", {}).get("zoo_cache")
        if stats:
            self.workers += 1
            for key, value in stats.items():
                self.worker_stats[key] = self.worker_stats.get(key, 0) + int(value)

    def _local_stats(self) -> dict[str, int]:
        cache = _loaded_cache()
        if cache is None:
            return {}
        stats = dataclasses.asdict(cache.active_cache().stats)
        return stats if any(stats.values()) else {}

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        stats = self.worker_stats or self._local_stats()
        if not stats:
            return
        where = f" (summed over {self.workers} xdist workers)" if self.workers else ""
        terminalreporter.write_line(f"pytest-zoo cache: {describe_stats(stats)}{where}")


def worker_usage_error(config: pytest.Config, message: str) -> bool:
    """On an xdist worker, hand a usage error found at collection to the controller; else ``False``.

    A ``UsageError`` raised on a worker is an INTERNALERROR on the controller ("worker crashed").
    So the worker writes the message where the controller looks at the end of the session, and
    collects nothing (every worker does the same, so the collections still agree); the controller
    prints the message and exits with code 4, as a run without ``-n`` does.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or not workerinput.get("zoo_groups"):
        return False
    (Path(workerinput["zoo_groups"]) / USAGE_ERROR_FILE).write_text(message, encoding="utf-8")
    return True
