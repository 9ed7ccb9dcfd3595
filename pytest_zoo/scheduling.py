"""Where and when zoo tests run: each model's tests back to back, on one xdist worker, memory freed after.

The model cache (:mod:`pytest_zoo.cache`) builds a model once and keeps it only while its tests
run. That pays off only if a model's tests are adjacent, which pytest's default order (every model
for the first check, then every model for the second) defeats, and only if pytest-xdist does not
scatter them over workers, where each worker would build the model again. So this plugin:

* marks every zoo test ``xdist_group(<model>)`` and switches xdist's default ``--dist load`` to
  ``loadgroup`` (which differs from ``load`` only for tests that carry that mark), so one worker
  runs all of a model's tests; the order is a pure function of the collected items, so every
  worker collects the same list, as xdist requires;
* orders the items so that a model's tests are consecutive, in their original relative order;
* releases the cached models once the last test of a model has torn down, so the next model is
  built into freed memory: peak memory is that of the largest model, not the sum;
* on ``--zoo-device=meta``, runs zoo tests under :func:`~pytest_zoo.building.structural_init`, so a
  head built by a user's ``replace_head`` hook lands on the meta device like the rest of the model;
* reports the cache's work in the terminal summary, summed over xdist workers.

It imports neither torch nor torchvision: the cache is touched only if a test already imported it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Generator
from typing import Any

import pytest

from .reliability import zoo_model_of

__all__ = ["ZooScheduling", "group_by_model", "require_values"]

_CACHE_MODULE = "pytest_zoo.cache"


def group_by_model(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place so each zoo model's tests are consecutive.

    Each model's block sits where its first test was; tests that check no zoo model keep their
    place relative to the blocks; within a block the collection order is kept.
    """
    first: dict[str, int] = {}
    keys: list[tuple[int, int]] = []
    for index, item in enumerate(items):
        model = zoo_model_of(item)
        anchor = first.setdefault(model, index) if model is not None else index
        keys.append((anchor, index))
    order = sorted(range(len(items)), key=keys.__getitem__)
    items[:] = [items[i] for i in order]


def _tag_group(item: pytest.Item, group: str) -> None:
    """Give ``item`` the ``<nodeid>@<group>`` id that xdist's loadgroup scheduler groups by.

    xdist's worker does this by assigning ``item._nodeid``, which pytest 9.2 no longer reads
    (its node ids are structured, ``item._id``), so the grouping silently stops
    (pytest-dev/pytest-xdist#1386). Where xdist's suffix took effect, nothing is done.
    """
    nodeid = item.nodeid
    if nodeid.rfind("@") > nodeid.rfind("]"):
        return
    structured = getattr(item, "_id", None)
    if structured is not None and hasattr(type(structured), "parse"):
        item._id = type(structured).parse(f"{nodeid}@{group}")
    else:
        item._nodeid = f"{nodeid}@{group}"  # type: ignore[attr-defined]


#: How torch says an operation needs data that a meta tensor does not have.
_NO_VALUES = re.compile(
    r"meta tensor|Meta kernel|with Meta tensors|cannot be called on meta|no data|register_meta|"
    r"data-dependent|data-independent|on the meta device|device meta is not on the expected device",
    re.IGNORECASE,
)


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


def require_values(device: object, what: str) -> None:
    """Skip the calling test when ``device`` is the meta device, saying why: ``what`` needs values.

    For checks that compare numbers (loaded weights, fingerprints, NaNs): on ``--zoo-device=meta``
    they cannot run, and a skip naming the reason beats a confusing torch error.
    """
    kind = getattr(device, "type", str(device).partition(":")[0])
    if kind == "meta":
        pytest.skip(
            f"{what} needs tensor values, which --zoo-device=meta does not have; "
            "structural mode checks shapes only, run it with --zoo-device=cpu"
        )


def _release_models() -> None:
    cache = sys.modules.get(_CACHE_MODULE)
    if cache is not None:  # no zoo test ran in this process if the cache was never imported
        cache.active_cache().release()


class ZooScheduling:
    """The scheduling hooks, registered by the plugin at configure time as one object."""

    def __init__(self, config: pytest.Config, *, structural: bool) -> None:
        self.config = config
        self.structural = structural
        self.xdist = config.pluginmanager.hasplugin("xdist")
        #: Cache statistics reported by xdist workers, summed on the controller.
        self.worker_stats: dict[str, int] = {}
        self.workers = 0
        if self.xdist and getattr(config.option, "dist", "no") == "load":
            config.option.dist = "loadgroup"
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None and workerinput.get("zoo_loadgroup"):
            # Workers parse the original command line, where ``-n 2`` alone means ``load``; the
            # nodeid suffix xdist's loadgroup scheduler groups by is added on the worker.
            config.option.loadgroup = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["zoo_loadgroup"] = self.config.option.dist == "loadgroup"

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        model = zoo_model_of(item)
        if model is not None and self.xdist and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(model))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        group_by_model(items)
        if self.xdist and getattr(config.option, "loadgroup", False):
            for item in items:
                model = zoo_model_of(item)
                if model is not None:
                    _tag_group(item, model)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        if not (self.structural and zoo_model_of(item) is not None):
            return (yield)
        from .building import meta_fast_paths, structural_init

        try:
            with structural_init(cpu_default=False), meta_fast_paths():
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

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        cache = sys.modules.get(_CACHE_MODULE)
        if cache is not None:  # a session in the same process before this one (pytester, IDEs)
            cache.reset_active_cache()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        stats = self._local_stats()
        _release_models()
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
        cache = sys.modules.get(_CACHE_MODULE)
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


def describe_stats(stats: dict[str, int]) -> str:
    """One line from :class:`pytest_zoo.cache.CacheStats` fields, without importing torch."""
    get = stats.get
    return (
        f"{get('builds', 0)} model build(s), {get('hits', 0)} reuse(s), {get('restores', 0)} restore(s), "
        f"{get('rebuilds', 0)} rebuild(s) after in-place changes, {get('oracle_builds', 0)} oracle build(s)"
    )
