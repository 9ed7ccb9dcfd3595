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
            and vit_h_14: 11.6 GB). When nothing in line fits, the one that needs least goes: a
            node is never left waiting, because an xdist worker runs its last test only once it
            has more work (or is shut down), so a withheld scope stalls both workers.
            """
            held = sum(
                self._scope_megabytes(scope)
                for other, work in self.assigned_work.items()
                if other is not node
                for scope, done in work.items()
                if not all(done.values())
            )
            fitting = (s for s in self.workqueue if self._scope_megabytes(s) + held <= MODEL_MEMORY_BUDGET_MB)
            chosen = next(fitting, None) or min(self.workqueue, key=self._scope_megabytes)
            self.workqueue.move_to_end(chosen, last=False)
            super()._assign_work_unit(node)

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
