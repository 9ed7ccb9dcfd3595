"""The pytest glue: options, selection, the shipped suite's collection, and fixtures.

Loaded through the ``pytest11`` entry point in every pytest run of every project that installed
pytest-zoo, so it imports nothing heavy: torch and torchvision are imported only once a zoo
feature is actually used (``--zoo-models``, a ``zoo_*`` fixture, a ``ZooConformance`` subclass).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .options import ZooOptions, add_options, read_options, resolve_device
from .selection import SelectionError, parse_patterns, select_models

if TYPE_CHECKING:
    import torch
    from hypothesis import settings
    from torch import nn

SUITE_PATH = Path(__file__).with_name("suite.py")
SUITE_NODEID = "pytest-zoo"


@dataclass
class ZooState:
    options: ZooOptions
    #: The selected builder names, sorted, or ``None`` when no zoo models were requested.
    selected: list[str] | None


STATE_KEY = pytest.StashKey[ZooState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zoo(model): a pytest-zoo conformance check of one zoo model")
    options = read_options(config)
    selected = None
    if options.requested:
        try:
            selected = select_models(options.patterns)
        except SelectionError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = ZooState(options=options, selected=selected)


def _state(config: pytest.Config) -> ZooState:
    return config.stash[STATE_KEY]


def pytest_report_header(config: pytest.Config) -> str | None:
    state = _state(config)
    if state.selected is None:
        return None
    return f"zoo: {len(state.selected)} model(s) selected, device {state.options.device}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the shipped suite when zoo models are requested, before -k/-m deselect anything."""
    if _state(config).selected is None:
        return
    module = pytest.Module.from_parent(session, path=SUITE_PATH, nodeid=SUITE_NODEID)
    suite = pytest.Class.from_parent(module, name="TestZoo")
    items.extend(item for item in session.genitems(suite) if isinstance(item, pytest.Item))


def _is_conformance_class(cls: type | None) -> bool:
    if cls is None:
        return False
    from .checks import ZooConformance  # only for classes that could be one; checks imports torch

    return issubclass(cls, ZooConformance)


def _models_for(config: pytest.Config, cls: type | None) -> list[str]:
    selected = _state(config).selected
    class_patterns = list(getattr(cls, "models", ())) if _is_conformance_class(cls) else []
    if class_patterns:
        pool = selected if selected is not None else select_models(parse_patterns(class_patterns))
        return [name for name in pool if any(fnmatch.fnmatchcase(name, p) for p in class_patterns)]
    return list(selected or [])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "zoo_model_name" not in metafunc.fixturenames:
        return
    names = _models_for(metafunc.config, metafunc.cls)
    if not names:
        reason = "no zoo models selected: pass --zoo-models=PATTERNS (or set the zoo_models ini key)"
        metafunc.parametrize(
            "zoo_model_name", [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-zoo-models")]
        )
        return
    metafunc.parametrize(
        "zoo_model_name", [pytest.param(n, marks=pytest.mark.zoo(n), id=n) for n in names], scope="function"
    )


@pytest.fixture(scope="session")
def zoo_device(pytestconfig: pytest.Config) -> torch.device:
    """The device zoo checks run on: ``--zoo-device``, else CUDA when available, else CPU."""
    import torch

    return torch.device(resolve_device(_state(pytestconfig).options.device))


@pytest.fixture(scope="session")
def zoo_hypothesis_settings(pytestconfig: pytest.Config) -> settings:
    """Hypothesis settings for model-sized examples: no deadline, ``--zoo-examples`` examples."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=_state(pytestconfig).options.examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


@pytest.fixture
def zoo_model(zoo_model_name: str, zoo_device: torch.device) -> nn.Module:
    """A freshly built model for ``zoo_model_name`` (random init, offline) on ``zoo_device``."""
    from .building import build_model

    return build_model(zoo_model_name, device=zoo_device)
