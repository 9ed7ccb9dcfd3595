"""The pytest glue: options, selection, the shipped suite's collection, and fixtures.

Loaded through the ``pytest11`` entry point in every pytest run of every project that installed
pytest-zoo, so it imports nothing heavy: torch and torchvision are imported only once a zoo
feature is actually used (``--zoo-models``, a ``zoo_*`` fixture, a ``ZooConformance`` subclass).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..zoo.selection import SelectionError, select_models
from .collection import gate_classes, is_conformance_class, models_for, require_known, select_tasks
from .options import (
    STATE_KEY,
    ZooState,
    add_options,
    check_conflicts,
    read_options,
    read_report_path,
    read_snapshot_options,
    resolve_device,
)

if TYPE_CHECKING:
    import torch
    from hypothesis import settings
    from torch import nn

    from ..conformance.strategies import ModelStrategies

SUITE_PATH = Path(__file__).with_name("suite.py")
SUITE_NODEID = "pytest-zoo"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zoo(model): a pytest-zoo conformance check of one zoo model")
    options = read_options(config)
    selected = None
    if options.requested:
        strict = bool(config.getoption("zoo_list", False))  # no collection follows --zoo-list
        try:
            selected = select_models(options.patterns, strict=strict)
        except SelectionError as exc:
            raise pytest.UsageError(str(exc)) from None
        if options.tasks and selected:
            selected = select_tasks(selected, options.tasks)
    config.stash[STATE_KEY] = ZooState(options=options, selected=selected)
    check_conflicts(config, options)
    # A device this machine lacks is a usage error now, not a fixture error in every test later;
    # torch is imported for it only when the kit is actually in use.
    source = "--zoo-device" if config.getoption("zoo_device") is not None else "ini option zoo_device"
    device = (
        resolve_device(options.device, source) if options.requested or options.device != "auto" else "cpu"
    )
    from .reliability import ZooReliability

    checkpoints = tuple(config.getini("zoo_checkpoints"))
    config.pluginmanager.register(ZooReliability(device, checkpoints), "pytest-zoo-reliability")
    from .scheduling import ZooScheduling

    config.pluginmanager.register(ZooScheduling(config, structural=device == "meta"), "pytest-zoo-scheduling")
    snapshot = read_snapshot_options(config)
    if snapshot is not None:  # the snapshot hooks exist only in runs that asked for a snapshot
        from .snapshots import register

        register(config, snapshot)
    report = read_report_path(config)
    if report is not None:
        from .report import ZooReport

        config.pluginmanager.register(ZooReport(config, report), "pytest-zoo-report")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--zoo-list``: print the selected models (all of them without --zoo-models), run nothing."""
    if not config.getoption("zoo_list", False):
        return None
    config._do_configure()  # as pytest's own --markers does: validates every option first
    try:
        from ..guards.network import network_guard
        from ..zoo.selection import Patterns
        from .listing import list_rows, render_list

        state = _state(config)
        everything = Patterns(("*",), state.options.patterns.exclude)
        names = state.selected if state.selected is not None else select_models(everything)
        with network_guard():
            rows = list_rows(names)
        writer = config.get_terminal_writer()
        for line in render_list(rows):
            writer.line(line)
    finally:
        config._ensure_unconfigure()
    return 0


def _state(config: pytest.Config) -> ZooState:
    return config.stash[STATE_KEY]


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = _state(config)
    if state.selected is None:
        return None
    from .listing import header_line

    examples, source = zoo_examples(config)
    return [
        header_line(len(state.selected), resolve_device(state.options.device), state.options.device),
        f"zoo: {examples} Hypothesis example(s) per check ({source}), no deadline, no shrinking",
    ]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Add the shipped suite when zoo models are requested, before -k/-m deselect anything.

    ``--zoo-suite=auto`` (the default) adds it only when no gate class was collected: in a
    project with gates, ``--zoo-models`` narrows the gates. Then every pattern must match a model
    this session can run, else it is a usage error (exit code 4) listing what is selectable.
    """
    state = _state(config)
    if state.selected is None:
        return
    gates = gate_classes(items)
    suite = state.options.suite == "yes" or (state.options.suite == "auto" and not gates)
    try:
        require_known(config, state, items, gates, suite)
    except pytest.UsageError as exc:
        from .scheduling import worker_usage_error

        if not worker_usage_error(config, str(exc)):
            raise
        items.clear()
        return
    if suite:
        module = pytest.Module.from_parent(session, path=SUITE_PATH, nodeid=SUITE_NODEID)
        for name in ("TestZoo", "TestZooWeights"):
            shipped = pytest.Class.from_parent(module, name=name)
            items.extend(item for item in session.genitems(shipped) if isinstance(item, pytest.Item))


def _argnames(mark: pytest.Mark) -> list[str]:
    names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def _parametrize_zoo(metafunc: pytest.Metafunc, argname: str, cases: list[tuple[str, str]]) -> None:
    """Parametrize ``argname`` by ``(id, model)`` cases, each marked ``zoo(model)``.

    No case at all becomes one skipped test that says how to select models, rather than pytest's
    bare "got empty parameter set".
    """
    if not cases:
        reason = "no zoo models selected: pass --zoo-models=PATTERNS (or set the zoo_models ini key)"
        metafunc.parametrize(
            argname, [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-zoo-models")]
        )
        return
    metafunc.parametrize(argname, [pytest.param(i, marks=pytest.mark.zoo(m), id=i) for i, m in cases])


def _parametrize_weights(metafunc: pytest.Metafunc) -> None:
    """``zoo_weights``: one id per weights enum member of the selected models (``resnet50-IMAGENET1K_V2``)."""
    if any("zoo_weights" in _argnames(m) for m in metafunc.definition.iter_markers("parametrize")):
        return
    names = models_for(metafunc.config, metafunc.cls)
    cases = []
    if names:
        from ..weights import weights_cases

        cases = [(c.id, c.model) for c in weights_cases(names)]
    _parametrize_zoo(metafunc, "zoo_weights", cases)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "zoo_weights" in metafunc.fixturenames:
        _parametrize_weights(metafunc)
    if "zoo_model_name" not in metafunc.fixturenames:
        return
    if any("zoo_model_name" in _argnames(m) for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test names its models itself: @pytest.mark.parametrize("zoo_model_name", [...])
    names = models_for(metafunc.config, metafunc.cls)
    _parametrize_zoo(metafunc, "zoo_model_name", [(n, n) for n in names])


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> list[pytest.Item] | None:
    """Collect ``test_deployability`` only in gate classes with something to deploy: their own
    ``deploy``, else ``--zoo-deploy``. Any other name costs one comparison."""
    if name != "test_deployability" or obj is None or not isinstance(collector, pytest.Class):
        return None
    if not is_conformance_class(collector.obj):
        return None
    from ..conformance.values import deploy_methods

    return None if deploy_methods(collector.obj, _state(collector.config).options.deploy) else []


@pytest.fixture(scope="session")
def zoo_deploy(pytestconfig: pytest.Config) -> tuple[str, ...]:
    """The deployment paths of ``--zoo-deploy`` (ini ``zoo_deploy``); empty when not given."""
    return _state(pytestconfig).options.deploy


@pytest.fixture(scope="session")
def zoo_device(pytestconfig: pytest.Config) -> torch.device:
    """The device zoo checks run on: ``--zoo-device``, else CUDA when available, else CPU."""
    import torch

    return torch.device(resolve_device(_state(pytestconfig).options.device))


@pytest.fixture(scope="session")
def zoo_hypothesis_settings(pytestconfig: pytest.Config) -> settings:
    """Hypothesis settings for model-sized examples: the active profile, adjusted for model checks.

    Everything comes from the active Hypothesis profile (``--hypothesis-profile``, or one loaded
    in a conftest): ``derandomize``, ``database``, ``verbosity``, ``--hypothesis-seed``, the
    backend. The kit changes four things, because every example is a model build or a forward
    pass: no deadline, the too-slow/data-too-large health checks off, no shrink/explain phases,
    and the number of examples (see :func:`zoo_examples`).
    """
    from hypothesis import HealthCheck, Phase, settings

    profile = settings.default
    assert profile is not None  # Hypothesis always has a current profile
    kept = (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(
        parent=profile,
        max_examples=zoo_examples(pytestconfig)[0],
        deadline=None,
        suppress_health_check=[
            *profile.suppress_health_check,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        # No shrink/explain phases: shrinking a failure of one model check took minutes on a CPU
        # runner (Hypothesis shrinks for up to five). The failing example is reported as drawn,
        # and the database still replays it on the next run.
        phases=[phase for phase in profile.phases if phase in kept],
        # The checks run Hypothesis on inner functions a user cannot decorate, so a
        # ``@reproduce_failure`` blob would be a dead end; failures say how to reproduce instead.
        print_blob=False,
    )


def zoo_examples(config: pytest.Config) -> tuple[int, str]:
    """Examples per zoo check, and where the number came from.

    ``--zoo-examples`` wins, then the ``zoo_examples`` ini key, then the active Hypothesis
    profile's ``max_examples`` where the user changed it from Hypothesis' default, then 3.
    """
    options = _state(config).options
    if options.examples_source != "default":
        return options.examples, options.examples_source
    if "hypothesis" in sys.modules:  # loaded by its pytest plugin whenever a hypothesis option is used
        from hypothesis import settings

        current = settings().max_examples  # the active profile's
        if current != settings.get_profile("default").max_examples:
            return current, f"hypothesis profile {settings.get_current_profile_name()!r}"
    return options.examples, "default"


@pytest.fixture
def zoo_model(request: pytest.FixtureRequest, zoo_model_name: str, zoo_device: torch.device) -> nn.Module:
    """The model for ``zoo_model_name`` (random init, offline) on ``zoo_device``, as built.

    Inside a ``ZooConformance`` subclass it is built by that class's ``build_model`` hook, so a
    free-form test method checks the same model the inherited checks do. It comes from the
    session's model cache: built once, and restored to its as-built state (head, flags, buffers,
    hooks) for every test; a test that changed its weights in place gets a rebuilt one. On
    ``--zoo-device=meta`` it is a structural build.
    """
    instance = request.instance
    if instance is not None and is_conformance_class(type(instance)):
        model: nn.Module = instance._model(zoo_model_name, zoo_device)
        return model
    from ..models.building import build_model
    from ..models.cache import active_cache

    def build() -> nn.Module:
        structural = zoo_device.type == "meta"
        return build_model(zoo_model_name, device=None if structural else zoo_device, structural=structural)

    return active_cache().get(("zoo_model", zoo_model_name, str(zoo_device)), build, group=zoo_model_name)


@pytest.fixture
def zoo_strategies(request: pytest.FixtureRequest, zoo_model_name: str) -> ModelStrategies:
    """Hypothesis strategies bound to ``zoo_model_name``: class counts, batch sizes, legal inputs.

    ``zoo_strategies.input_shapes(train=True)`` draws whole ``(B, C, H, W)`` shapes the model
    accepts. Inside a ``ZooConformance`` subclass the geometry comes from its ``input_spec`` hook.
    """
    from ..conformance.strategies import for_model

    instance = request.instance
    if instance is not None and is_conformance_class(type(instance)):
        return for_model(zoo_model_name, spec=instance.input_spec(zoo_model_name))
    return for_model(zoo_model_name)
