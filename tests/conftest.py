"""The project's own pytester sessions run without pytest-randomly unless a test turns it on.

pytest-randomly is a test dependency (``tests/test_interplay.py`` checks the kit beside it), and an
installed plugin loads in every session, the inner pytester ones included. Those sessions assert
on order (sorted collection is a feature), so each starts with ``-p no:randomly``; a test that
wants it passes ``-p randomly``, which re-enables it. pytester clears ``PYTEST_ADDOPTS`` when it
starts, so it is set after.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _inner_sessions_without_randomly(request: pytest.FixtureRequest) -> None:
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")


#: Opt-in matrices: skipped unless ``-m`` names them (``pytest -m zoo_projects``).
OPT_IN = ("zoo_projects", "zoo_interplay")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("markexpr") or ""
    for item in items:
        for name in OPT_IN:
            if item.get_closest_marker(name) is not None and name not in wanted:
                item.add_marker(pytest.mark.skip(reason=f"opt-in matrix: run it with pytest -m {name}"))
