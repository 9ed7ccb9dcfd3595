"""The xdist scheduler of a zoo run: each model's tests on one worker, largest first, within memory.

Imported only by an xdist controller that schedules with ``--dist load`` (see
:mod:`.scheduling`, whose workers write, for every test id, the zoo model it checks and what
that model's checks hold in memory at their peak).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

__all__ = ["MODEL_SCOPE", "make_scheduler"]

#: How the scheduler names the scope of one zoo model's tests.
MODEL_SCOPE = "zoo-model:"


def make_scheduler(config: pytest.Config, log: Any, groups_dir: Path) -> Any:
    """xdist's ``loadscope`` scheduler with one scope per zoo model and one per other test.

    Built on xdist's own :class:`~xdist.scheduler.LoadScopeScheduling` (imported only here, in an
    xdist run), so distribution, rescheduling on a crashed worker and ``--maxfail`` stay xdist's.
    """
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    from ..zoo.cost import MODEL_MEMORY_BUDGET_MB

    class ZooModelScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Each zoo model's tests on one worker; other tests one by one, as ``--dist load``."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            self._groups: dict[str, str] | None = None
            self._megabytes: dict[str, float] = {}

        def _model(self, nodeid: str) -> str | None:
            if self._groups is None:
                # every worker wrote its file before it reported its collection, and the scheduler
                # splits scopes only once all collections are in: one read is all there is
                self._groups = {}
                for path in sorted(groups_dir.glob("*.json")):
                    written = json.loads(path.read_text(encoding="utf-8"))
                    self._groups.update(written["groups"])
                    self._megabytes.update(written["megabytes"])
            return self._groups.get(nodeid)

        def _scope_megabytes(self, scope: str) -> float:
            return (
                self._megabytes.get(scope.removeprefix(MODEL_SCOPE), 0.0)
                if scope.startswith(MODEL_SCOPE)
                else 0.0
            )

        def _assign_work_unit(self, node: Any) -> None:
            """The first scope in line whose model fits beside what the other workers hold.

            Largest first would otherwise start the two largest models side by side (regnet_y_128gf
            and vit_h_14: 11.6 GB). Nothing fits when only large models are left while one runs: the
            node then waits, and :meth:`mark_test_complete` offers it work again as tests finish.
            """
            held = sum(
                self._scope_megabytes(scope)
                for other, work in self.assigned_work.items()
                if other is not node
                for scope, done in work.items()
                if not all(done.values())
            )
            for scope in self.workqueue:
                needed = self._scope_megabytes(scope)
                if not held or needed + held <= MODEL_MEMORY_BUDGET_MB:
                    self.workqueue.move_to_end(scope, last=False)
                    super()._assign_work_unit(node)
                    return

        def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            for other in self.nodes:  # a node that waited for memory may fit what is in line now
                if other is not node and not self._pending_of(self.assigned_work.get(other, {})):
                    self._reschedule(other)

        def _split_scope(self, nodeid: str) -> str:
            model = self._model(nodeid)
            return nodeid if model is None else f"{MODEL_SCOPE}{model}"

        def schedule(self) -> None:
            """Hand the scopes out in collection order, which the workers made largest model first.

            ``loadscope`` would sort them by their number of tests (``--loadscope-reorder``, the
            default since xdist 3.6), which says little about how long a model takes.
            """
            option = self.config.option
            reorder = getattr(option, "loadscopereorder", None)
            option.loadscopereorder = False
            try:
                super().schedule()
            finally:
                option.loadscopereorder = reorder

    return ZooModelScheduling(config, log)
