"""The model cache's statistics as one line, without importing torch.

:class:`~pytest_zoo.ModelCache` renders its own statistics with it, and the pytest glue renders
the statistics xdist workers send as plain dicts: the controller never builds a model, so it must
not need the cache (and torch) to print them.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["describe_stats"]


def describe_stats(stats: Mapping[str, int]) -> str:
    """One line from :class:`pytest_zoo.models.cache.CacheStats` fields (missing ones count 0)."""
    get = stats.get
    return (
        f"{get('builds', 0)} model build(s), {get('hits', 0)} reuse(s), {get('restores', 0)} restore(s), "
        f"{get('rebuilds', 0)} rebuild(s) after in-place changes, {get('oracle_builds', 0)} oracle build(s)"
    )
