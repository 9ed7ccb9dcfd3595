"""The speed machinery, tested for behaviour (never for time): cache, restore, oracle, order, meta.

Each claim the speed rests on is a behaviour that can silently break: a model built once per
session, put back exactly as built between examples, freed before the next model, a structural
run that never allocates weights, and checks that cannot run on meta saying so.
"""

from __future__ import annotations

import gc
import re
import weakref
from typing import Any

import pytest
import torch
from torch import nn

from pytest_zoo.models import building, freezing, heads
from pytest_zoo.models.cache import HeadOracle, ModelCache, ModelState, builder_oracle, reset_active_cache
from pytest_zoo.models.reference import PROBE
from pytest_zoo.models.stats import describe_stats


def _state(model: nn.Module) -> dict[str, object]:
    """Everything a check can observe about a model, values included."""
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [(name, type(m), m.training) for name, m in model.named_modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "attrs": [sorted(vars(m)) for m in model.modules()],
    }


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    ta, tb = a["tensors"], b["tensors"]
    assert isinstance(ta, dict) and isinstance(tb, dict)
    tensors_equal = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    return tensors_equal and all(a[k] == b[k] for k in a if k != "tensors")


@pytest.fixture
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return building.build_model("resnet18")


def test_restore_undoes_everything_a_check_does(resnet18: nn.Module) -> None:
    before = _state(resnet18)
    state = ModelState.capture(resnet18)
    heads.replace_head(resnet18, 7)
    freezing.freeze_backbone(resnet18, norm_stats="freeze")  # an instance-level train() on every BatchNorm
    resnet18.layer1.register_forward_hook(lambda *args: None)
    resnet18.fc.weight.register_hook(lambda grad: grad)
    resnet18.train()
    resnet18(torch.randn(2, 3, 32, 32)).sum().backward()  # BatchNorm statistics move, grads appear
    assert not _same(before, _state(resnet18))

    assert state.restore()

    assert _same(before, _state(resnet18))
    assert resnet18.fc.out_features == 1000 and not resnet18.fc.weight._backward_hooks


def test_restore_refuses_when_weights_changed_in_place_and_the_cache_rebuilds() -> None:
    cache = ModelCache()
    builds: list[nn.Module] = []

    def build() -> nn.Module:
        builds.append(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
        return builds[-1]

    model = cache.get("key", build, group="tiny")
    assert cache.restore(model) is model  # nothing changed: the same object
    with torch.no_grad():
        model[0].weight.mul_(2)  # an optimiser step, say: the as-built values are gone
    again = cache.restore(model)
    assert again is not model and again is builds[-1] and len(builds) == 2
    assert cache.stats.rebuilds == 1
    model = cache.restore(again).half()  # .half() swaps .data without bumping the version
    assert cache.restore(model) is not model and len(builds) == 3


def test_one_build_per_key_and_the_previous_model_is_freed_before_the_next() -> None:
    cache = ModelCache()
    first = cache.get("a", lambda: nn.Linear(3, 2), group="a")
    alive = weakref.ref(first)
    assert cache.get("a", lambda: nn.Linear(9, 9), group="a") is first
    del first
    cache.get("b", lambda: nn.Linear(3, 2), group="b")
    gc.collect()
    assert alive() is None, "the cache still holds group a's model after moving on to group b"
    assert cache.groups == {"b"}
    assert (cache.stats.builds, cache.stats.hits, cache.stats.releases) == (2, 1, 1)


def test_a_model_that_a_reference_cycle_keeps_is_freed_by_a_young_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collected: list[int] = []
    collect = gc.collect
    monkeypatch.setattr(
        gc, "collect", lambda generation=2: collected.append(generation) or collect(generation)
    )
    cache = ModelCache()
    model = cache.get("a", lambda: nn.Linear(30, 30), group="a")
    cycle: list[object] = [model]
    cycle.append(cycle)  # as a failed or skipped test's traceback keeps its frame's locals
    alive = weakref.ref(model)
    del model, cycle
    cache.release()
    assert alive() is None
    assert collected == [1], "a full collection (a quarter of a second with torch loaded) was not needed"


def test_a_given_check_lets_go_of_the_model_it_closed_over() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pytest_zoo.conformance.hooks import run_examples

    alive: list[weakref.ref[nn.Module]] = []

    def a_check() -> None:
        model = nn.Linear(3, 2)
        alive.append(weakref.ref(model))

        @settings(max_examples=2, database=None)
        @given(n=st.integers(1, 3))
        def check(n: int) -> None:
            assert model(torch.zeros(n, 3)).shape == (n, 2)

        run_examples(check)

    gc.collect()
    gc.disable()  # Hypothesis' wrapper is a reference cycle: only the emptied closure frees the model
    try:
        a_check()
        assert alive[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("name", ["vit_b_32", "squeezenet1_1", "googlenet"])
def test_head_oracle_matches_the_builder_at_every_class_count(name: str) -> None:
    def real(n: int) -> dict[str, tuple[int, ...]]:
        model = building.build_model(name, num_classes=n, structural=True)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    oracle = HeadOracle(lambda n: building.build_model(name, num_classes=n, structural=True))
    for n in (1, 17, 1000, 9999):
        assert oracle.shapes(n) == real(n), n
    assert oracle.builds == 3, "two probes and one verification, then derived"
    assert oracle.head_names == set(heads.head_parameter_names(building.build_model(name, structural=True)))


def test_head_oracle_verifies_its_line_at_a_class_count_other_than_the_probes() -> None:
    # n squared is affine through no three points: asked at a probe first, the oracle must still
    # build the next class count for real instead of deriving it from the probes' line.
    oracle = HeadOracle(lambda n: nn.Linear(2, n * n))
    assert oracle.shapes(PROBE)["weight"] == (PROBE * PROBE, 2)
    assert oracle.head_names == {"weight", "bias"}
    assert oracle.shapes(5)["weight"] == (25, 2)
    assert oracle.shapes(6)["weight"] == (36, 2)
    assert oracle.builds == 4, "two probes, then real builds: the line was refuted at 5"


def test_head_oracle_falls_back_to_real_builds_when_a_shape_is_not_affine_in_n() -> None:
    oracle = HeadOracle(lambda n: nn.Linear(2, n * n))  # n squared: no line through the probes
    assert oracle.shapes(5)["weight"] == (25, 2)
    assert oracle.shapes(6)["weight"] == (36, 2)
    assert oracle.builds == 4, "every class count after a refuted derivation is a real build"


def test_weights_checks_reuse_the_gates_probe_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet

    from pytest_zoo.weights.cases import resolve_weights_id
    from pytest_zoo.weights.interception import _class_dimensions

    reset_active_cache()
    assert builder_oracle("resnet18").head_names == {"fc.weight", "fc.bias"}  # the gate's probes
    built: list[object] = []  # every ResNet constructed from here on, by its class count
    init = resnet.ResNet.__init__

    def counted(model: resnet.ResNet, *args: Any, **kwargs: Any) -> None:
        built.append(kwargs["num_classes"])
        init(model, *args, **kwargs)

    monkeypatch.setattr(resnet.ResNet, "__init__", counted)
    case = resolve_weights_id("resnet18-IMAGENET1K_V1")
    assert sorted(_class_dimensions(case)) == [("fc.bias", 0, 1, 0), ("fc.weight", 0, 1, 0)]
    assert built == [], "the weights checks built the probes again"
    reset_active_cache()
    _class_dimensions(case)
    assert built == [3, 4], "alone, the weights checks build both probes"


def _attention_models() -> list[nn.Module]:
    """torch's own modules that call initialisers they imported by name (``xavier_uniform_``)."""
    return [
        nn.MultiheadAttention(8, 2),
        nn.Transformer(8, 2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=8, batch_first=True),
    ]


def test_poisoned_init_reaches_initialisers_imported_by_name() -> None:
    with building.poisoned_init():
        attention, transformer = _attention_models()
    assert attention.in_proj_weight.isnan().all()
    assert all(p.isnan().all() for p in transformer.parameters())
    assert nn.modules.activation.xavier_uniform_ is nn.init.xavier_uniform_  # given back on exit


def test_a_fill_that_spares_parameters_lists_them_and_still_fills_every_other_tensor() -> None:
    """A fabricated checkpoint's build: its parameters are all overwritten, whatever else is not."""
    from pytest_zoo.models.initialisers import filled_init

    spared: list[torch.Tensor] = []
    plain = torch.zeros(3)
    with filled_init(float("nan"), spared=spared):
        attention, transformer = _attention_models()
        nn.init.ones_(plain)
    parameters = [*attention.parameters(), *transformer.parameters()]
    initialised = {id(p) for p in spared}
    assert id(attention.in_proj_weight) in initialised
    assert all(id(p) in initialised for p in parameters if p.dim() > 1)  # biases may start at zero
    assert plain.isnan().all()


def test_skipped_init_draws_nothing_even_by_name() -> None:
    before = torch.get_rng_state()
    with building.skipped_init():
        _attention_models()
    assert torch.equal(torch.get_rng_state(), before)


def test_a_module_imported_during_a_poisoned_build_keeps_the_real_initialiser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    module = types.ModuleType("torchvision._zoo_test_late_import")
    with building.poisoned_init():  # what its ``from torch.nn.init import xavier_uniform_`` does:
        monkeypatch.setitem(sys.modules, module.__name__, module)
        module.xavier_uniform_ = nn.init.xavier_uniform_  # type: ignore[attr-defined]
    assert module.xavier_uniform_ is nn.init.xavier_uniform_  # type: ignore[attr-defined]


def test_describe_stats_reads_like_the_summary_line() -> None:
    assert describe_stats({"builds": 2, "hits": 8}) == (
        "2 model build(s), 8 reuse(s), 0 restore(s), 0 rebuild(s) after in-place changes, 0 oracle build(s)"
    )


CONFTEST = """
import pytest, torch
from torch import nn
from pytest_zoo import ZooConformance, require_values

class TestMine(ZooConformance):
    models = ("regnet_x_400mf", "squeezenet1_1")
    builds = []

    def build_model(self, name):
        TestMine.builds.append(name)
        return super().build_model(name)

    def replace_head(self, model, num_classes):  # a user's hook: nn.Linear with no device
        if hasattr(model, "fc"):
            model.fc = nn.Linear(model.fc.in_features, num_classes, dtype=model.fc.weight.dtype)
            return model
        return super().replace_head(model, num_classes)

    def test_weights_are_meta(self, zoo_model_name, zoo_model):
        assert all(p.is_meta for p in zoo_model.parameters())

    def test_fingerprint(self, zoo_model_name, zoo_device):
        require_values(zoo_device, "a fingerprint")

    def test_item(self, zoo_model_name, zoo_model):
        zoo_model(torch.randn(2, 3, 64, 64, device="meta")).sum().item()

def test_each_model_built_once():
    assert sorted(TestMine.builds) == ["regnet_x_400mf", "squeezenet1_1"], TestMine.builds
"""


def test_structural_mode_builds_each_model_once_on_meta_and_says_what_it_cannot_do(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_mine=CONFTEST)
    result = pytester.runpytest_subprocess("--zoo-device=meta", "--zoo-examples=2", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()
    # regnet cannot even be built under torch.device("meta"); here every check ran on it
    result.stdout.fnmatch_lines(
        [
            "*a fingerprint needs tensor values, which --zoo-device=meta does not have*--zoo-device=cpu*",
            "*test_item*needs tensor values, which --zoo-device=meta does not have (*",  # torch's words
        ]
    )
    # test_fingerprint, test_item and the 6 value checks (the pretrained one included) for each
    # model, and nothing else
    assert outcomes.get("skipped") == 2 * (2 + 6) and outcomes.get("passed", 0) > 10, outcomes
    summary = r"pytest-zoo cache: 2 model build\(s\), \d+ reuse\(s\), \d+ restore\(s\), 0 rebuild"
    assert re.search(summary, result.stdout.str())


def test_each_models_tests_run_back_to_back(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--zoo-models=squeezenet1_1,resnet18,alexnet", "--collect-only", "-q"
    )
    ids = [line for line in result.outlines if line.startswith("pytest-zoo::")]
    models = [re.search(r"\[(\w+)", i).group(1) for i in ids]  # type: ignore[union-attr]
    assert len(ids) > 3 * 5
    runs = [m for i, m in enumerate(models) if i == 0 or models[i - 1] != m]
    assert runs == ["alexnet", "resnet18", "squeezenet1_1"], runs


def test_what_outlives_the_session_is_out_of_the_collectors_sight_during_zoo_tests_only(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import gc
        def pytest_unconfigure(config):
            with open("after.txt", "w") as f:
                f.write(str(gc.get_freeze_count()))
        """
    )
    pytester.makepyfile(
        test_gc="""
        import gc
        import weakref

        class Node:
            pass

        state = {}

        def test_zoo(zoo_model_name):
            assert gc.get_freeze_count() > 10_000  # torch, torchvision, pytest's items
            if not state:  # the first model
                garbage = Node()
                garbage.cycle = garbage
                gc.collect()  # it survives this one: garbage of the oldest generation once dropped
                state.update(garbage=weakref.ref(garbage), lives_on=Node(), frozen=gc.get_freeze_count())
                return
            assert state["garbage"]() is None, "the first model's garbage was frozen, not collected"
            assert gc.get_freeze_count() > state["frozen"], "what lives on did not join the frozen"

        def test_plain():
            assert gc.get_freeze_count() == 0
        """
    )
    result = pytester.runpytest_subprocess("--zoo-models=squeezenet1_0,squeezenet1_1", "-k", "test_zoo")
    assert result.parseoutcomes() == {"passed": 2, "deselected": 43}, result.stdout.str()
    assert (pytester.path / "after.txt").read_text() == "0"
    result = pytester.runpytest_subprocess("-k", "test_plain")
    result.assert_outcomes(passed=1, deselected=1)
