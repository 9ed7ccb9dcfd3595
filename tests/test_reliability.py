"""The kit inside someone else's CI: offline, leak-free, order-independent, fault-isolated, reported.

Each test runs a real pytest session with ``pytester``. The sessions use tiny models and tests
parametrized by ``zoo_model_name`` directly (that is what makes a test a zoo test), so the whole
file costs seconds, not a zoo sweep.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch  # imported here so that in-process pytester runs never re-import it
import torchvision
from torchvision.models import ResNet18_Weights
from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

import pytest_zoo
import pytest_zoo.checks  # keeps one adapter registry across in-process pytester runs
from pytest_zoo.guards.network import NetworkAccessError, network_guard

RESNET18_URL = ResNet18_Weights.IMAGENET1K_V1.url
OTHER_URL = "https://example.org/models/other-0123abcd.pth"


# -- network guard -------------------------------------------------------------------------------

NETWORK_TESTS = f"""
    import os, socket, urllib.request
    import pytest, torch, torchvision

    ZOO = pytest.mark.parametrize("zoo_model_name", ["resnet18"])

    @ZOO
    def test_builder_with_weights(zoo_model_name):  # torchvision's own weights are served
        model = torchvision.models.resnet18(weights="DEFAULT")
        assert torch.equal(model.fc.bias, torch.hub.load_state_dict_from_url("{RESNET18_URL}")["fc.bias"])

    @ZOO
    def test_hub_download(zoo_model_name):
        torch.hub.load_state_dict_from_url("{OTHER_URL}")

    @ZOO
    def test_urlopen(zoo_model_name):
        urllib.request.urlopen("https://example.org/zoo/weights.pth", timeout=1)

    @ZOO
    def test_socket(zoo_model_name):
        with socket.socket() as s:
            s.settimeout(0.5)
            s.connect(("10.255.255.1", 80))

    @ZOO
    def test_swallowed(zoo_model_name):
        try:
            urllib.request.urlopen("https://example.org/swallowed.pth", timeout=1)
        except Exception:
            pass  # "offline? fall back to random init": exactly what must not pass silently

    @ZOO
    def test_torch_home_is_private(zoo_model_name):
        home = os.environ["TORCH_HOME"]
        assert home != os.environ["REAL_TORCH_HOME"]
        assert not torch.hub.get_dir().startswith(os.environ["REAL_TORCH_HOME"])  # the served hub
        os.makedirs(os.path.join(home, "hub", "checkpoints"))  # writing there is fine

    @ZOO
    def test_loopback_stays_open(zoo_model_name):
        with socket.create_server(("127.0.0.1", 0)) as server:
            with socket.create_connection(server.getsockname(), timeout=1):
                pass

    def test_plain_tests_are_not_guarded():
        assert os.environ["TORCH_HOME"] == os.environ["REAL_TORCH_HOME"]
        assert socket.socket.connect is socket.socket.__mro__[1].connect
"""


def test_network_access_fails_zoo_tests_with_the_url_and_real_torch_home_is_untouched(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_home = pytester.path / "real-torch-home"
    monkeypatch.setenv("TORCH_HOME", str(real_home))
    monkeypatch.setenv("REAL_TORCH_HOME", str(real_home))
    pytester.makepyfile(NETWORK_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4, failed=4)
    blocked = "E *NetworkAccessError: pytest-zoo blocked network access:"
    result.stdout.fnmatch_lines(
        [
            "*_ test_hub_download[[]resnet18[]] _*",
            f"{blocked} torch.hub download of {OTHER_URL} (to */hub/checkpoints/*",
            "*_ test_urlopen[[]resnet18[]] _*",
            f"{blocked} urlopen https://example.org/zoo/weights.pth.*",
            "*_ test_socket[[]resnet18[]] _*",
            f"{blocked} socket connect to 10.255.255.1:80.*",
            "*_ test_swallowed[[]resnet18[]] _*",
            "resnet18: the test tried to reach the network during call and the error was caught and ignored*",
            "  urlopen https://example.org/swallowed.pth",
        ]
    )
    assert not real_home.exists(), "a zoo test wrote into the user's real TORCH_HOME"
    assert os.environ["TORCH_HOME"] == str(real_home)


def test_network_guard_restores_everything_and_cleans_its_home() -> None:
    import socket
    import urllib.request

    before = (socket.socket.connect, socket.getaddrinfo, urllib.request.OpenerDirector.open)
    home_before = os.environ.get("TORCH_HOME")
    with network_guard() as guard:
        assert os.environ["TORCH_HOME"] == str(guard.torch_home)
        with pytest.raises(NetworkAccessError, match=r"DNS lookup of download\.pytorch\.org"):
            socket.getaddrinfo("download.pytorch.org", 443)
        a, b = socket.socketpair()  # local sockets keep working (multiprocessing, xdist)
        a.close()
        b.close()
    assert (socket.socket.connect, socket.getaddrinfo, urllib.request.OpenerDirector.open) == before
    assert os.environ.get("TORCH_HOME") == home_before
    assert not guard.torch_home.exists()
    assert guard.attempts == ["DNS lookup of download.pytorch.org:443"]


def test_network_guard_nests_and_restores_when_the_body_raises() -> None:
    import socket

    original = socket.socket.connect
    with pytest.raises(ZeroDivisionError), network_guard() as outer:
        with network_guard(allow_loopback=True) as inner:
            assert os.environ["TORCH_HOME"] == str(inner.torch_home)
            with pytest.raises(NetworkAccessError, match=r"socket connect to 192\.0\.2\.1:443"):
                socket.create_connection(("192.0.2.1", 443), timeout=0.5)
        assert os.environ["TORCH_HOME"] == str(outer.torch_home)
        with pytest.raises(NetworkAccessError, match=r"socket connect to 192\.0\.2\.1:80"):
            socket.create_connection(("192.0.2.1", 80), timeout=0.5)
        1 / 0  # noqa: B018
    assert socket.socket.connect is original
    assert inner.attempts == ["socket connect to 192.0.2.1:443"]
    assert outer.attempts == ["socket connect to 192.0.2.1:80"]
    assert not outer.torch_home.exists() and not inner.torch_home.exists()


def test_a_checkpoint_in_the_guarded_torch_home_loads_offline(tmp_path: Path) -> None:
    model = torchvision.models.resnet18()
    with network_guard(torch_home=tmp_path) as guard:
        checkpoints = guard.torch_home / "hub" / "checkpoints"
        checkpoints.mkdir(parents=True)
        torch.save(model.state_dict(), checkpoints / Path(RESNET18_URL).name)
        state = torch.hub.load_state_dict_from_url(RESNET18_URL)
    assert guard.attempts == []
    assert torch.equal(state["fc.weight"], model.fc.weight)


# -- state leaks and order -----------------------------------------------------------------------

LEAK_TESTS = """
    import os, random
    import pytest, torch

    SEEN = {}

    def test_a_plain_records_rng():
        SEEN["torch"] = torch.random.get_rng_state().clone()
        SEEN["python"] = random.getstate()

    @pytest.mark.parametrize("zoo_model_name", ["resnet18"])
    def test_b_zoo_draws_random_numbers(zoo_model_name):
        torch.randn(100)
        random.random()

    @pytest.mark.parametrize("zoo_model_name", ["alexnet"])
    def test_c_zoo_changes_global_state(zoo_model_name):
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.use_deterministic_algorithms(True)
        os.environ["ZOO_LEAK"] = "1"

    def test_d_plain_sees_pristine_state():
        assert torch.get_default_dtype() == torch.float32
        assert torch.is_grad_enabled()
        assert not torch.are_deterministic_algorithms_enabled()
        assert "ZOO_LEAK" not in os.environ
        if SEEN:  # test_a ran first: the zoo tests in between must not have moved the generators
            assert torch.equal(torch.random.get_rng_state(), SEEN["torch"])
            assert random.getstate() == SEEN["python"]
"""

REVERSE_ORDER = """
    import pytest

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(items):
        items.reverse()
"""


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_zoo_tests_leak_no_state_in_either_order(pytester: pytest.Pytester, order: str) -> None:
    pytester.makepyfile(LEAK_TESTS)
    if order == "reversed":
        pytester.makeconftest(REVERSE_ORDER)
    result = pytester.runpytest("-v")
    names = ["a_plain_records_rng", "b_zoo_draws", "c_zoo_changes", "d_plain_sees"]
    seen = [n for line in result.outlines for n in names if f"test_{n}" in line and "PASSED" in line]
    assert seen == (names if order == "forward" else names[::-1])
    # the leaking test's body passes; its teardown reports the leak (and state is restored anyway)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_c_zoo_changes_global_state[[]alexnet[]]*",
            "*alexnet: the test changed process-wide state and did not restore it*",
            "*torch default dtype: torch.float32 before, torch.float64 after*",
            "*torch grad mode*True before, False after*",
            "*are_deterministic_algorithms_enabled()*False before, True after*",
            "*environment variable ZOO_LEAK set: None before, '1' after*",
        ]
    )
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


CACHED_MODEL_TESTS = """
    import pytest, torch
    from torch import nn
    import pytest_zoo
    from pytest_zoo.models.building import build_model

    ZOO = pytest.mark.parametrize("zoo_model_name", ["resnet18"])

    @ZOO
    def test_a_mutates_the_model(zoo_model, zoo_model_name):
        pytest_zoo.replace_head(zoo_model, 3)
        pytest_zoo.freeze_backbone(zoo_model)
        zoo_model.eval()
        zoo_model.layer1.train()
        zoo_model(torch.randn(2, 3, 32, 32))  # moves layer1's BatchNorm running statistics

    @ZOO
    def test_b_sees_the_model_as_built(zoo_model, zoo_model_name):
        torch.manual_seed(0)
        fresh = build_model(zoo_model_name)
        assert zoo_model.fc.out_features == fresh.fc.out_features == 1000
        assert all(p.requires_grad for p in zoo_model.parameters())
        assert [m.training for m in zoo_model.modules()] == [m.training for m in fresh.modules()]
        for (name, ours), theirs in zip(zoo_model.named_buffers(), fresh.buffers()):
            assert torch.equal(ours, theirs), name
"""


@pytest.mark.parametrize(
    "order",
    ["forward", "reversed"],
)
def test_a_cached_model_is_as_built_for_every_test_in_either_order(
    pytester: pytest.Pytester, order: str
) -> None:
    pytester.makepyfile(CACHED_MODEL_TESTS)
    if order == "reversed":
        pytester.makeconftest(REVERSE_ORDER)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    first = "test_a_mutates" if order == "forward" else "test_b_sees"
    assert first in next(line for line in result.outlines if "PASSED" in line)


SESSION_SETUP = """
    import os
    import pytest, torch

    @pytest.fixture(scope="session", autouse=True)
    def float64_everywhere():
        torch.set_default_dtype(torch.float64)
        os.environ["MY_SUITE"] = "on"
        torch.manual_seed(1234)
        yield
        torch.set_default_dtype(torch.float32)
        del os.environ["MY_SUITE"]
"""

SESSION_TESTS = """
    import os
    import pytest, torch

    @pytest.mark.parametrize("zoo_model_name", ["resnet18", "alexnet"])
    def test_zoo_first(zoo_model_name):
        assert torch.get_default_dtype() == torch.float64

    def test_plain_later():
        assert torch.get_default_dtype() == torch.float64 and os.environ["MY_SUITE"] == "on"
"""


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_a_session_fixture_may_change_global_state_for_the_whole_run(
    pytester: pytest.Pytester, order: str
) -> None:
    """The guard tells a session fixture's intended change from a test's leak, in either order.

    The fixture starts inside the first test and finishes inside the last: neither is a leak.
    """
    pytester.makeconftest(SESSION_SETUP + (REVERSE_ORDER if order == "reversed" else ""))
    pytester.makepyfile(SESSION_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    assert torch.get_default_dtype() == torch.float32 and "MY_SUITE" not in os.environ


# -- fault isolation ------------------------------------------------------------------------------

FAULTY_ZOO = """
    import pytest
    import torch
    from torch import nn
    import pytest_zoo
    from pytest_zoo import ZooConformance

    class Tiny(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 64, 1), nn.Conv2d(64, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(self.body(x))

    class Unregistered(nn.Module):
        # Not a Tiny, so no adapter along its MRO, and no Linear/Conv layer for inference to adopt.
        def __init__(self):
            super().__init__()
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.class_weights = nn.Parameter(torch.randn(3, 10))

        def forward(self, x):
            return self.pool(x) @ self.class_weights

    class Greedy(Tiny):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    pytest_zoo.register_adapter(Tiny, heads=["fc"], replace=True)

    class TestTinyZoo(ZooConformance):
        models = ["a_greedy", "b_broken_builder", "c_no_adapter", "d_fine"]
        builder_oracle = False

        def build_model(self, name):
            if name == "b_broken_builder":
                raise RuntimeError("builder exploded: missing config key 'depth'")
            return {"a_greedy": Greedy, "c_no_adapter": Unregistered}.get(name, Tiny)()

    @pytest.mark.parametrize("zoo_model_name", ["e_plain"])
    def test_freeze_my_own_way(zoo_model_name):
        pytest_zoo.freeze_backbone(Unregistered())  # raises NoAdapterError, straight from the kit
"""


# Shrinking a failure that every example hits (each one re-raising the same OOM) only costs time.
NO_SHRINK = """
    from hypothesis import Phase, settings

    settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.generate])
"""


def test_a_broken_model_fails_or_skips_only_its_own_tests_and_the_summary_lists_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(FAULTY_ZOO)
    pytester.makeconftest(NO_SHRINK)
    result = pytester.runpytest(
        "--zoo-examples=1", "--hypothesis-profile=no-shrink", "-k", "forward or freeze or gradients", "-rs"
    )
    outcomes = result.parseoutcomes()
    # d_fine: 3 passed. a_greedy: freeze passes, the two forward checks fail with the OOM reason.
    # b_broken_builder: all 3 fail. c_no_adapter: a user's gate lists it, so all 3 fail with the
    # register_adapter recipe. e_plain: a plain zoo test hitting NoAdapterError skips with it.
    assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("skipped")) == (4, 8, 1)
    result.stdout.fnmatch_lines(
        [
            "*ModelOutOfMemoryError: a_greedy ran out of memory on cpu during test call "
            "(OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB)*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*pytest-zoo: raised while checking model 'b_broken_builder' (family unknown, task unknown)*"]
    )
    result.stdout.fnmatch_lines(["SKIPPED*e_plain: no head adapter: pytest-zoo does not know where*"])
    result.stdout.fnmatch_lines(
        [
            "*= pytest-zoo: results per family =*",
            "family*models*passed*failed*skipped",
            "unknown*5*4*8*1",
            "not passed:",
            "  a_greedy (unknown) FAILED test_forward_shape, test_gradients_reach_head_only: "
            "*ModelOutOfMemoryError: a_greedy ran out of memory*",
            "  b_broken_builder (unknown) FAILED test_forward_shape, test_freeze_counts, "
            "test_gradients_reach_head_only: RuntimeError: builder exploded*",
            "  c_no_adapter (unknown) FAILED test_forward_shape, test_freeze_counts, "
            "test_gradients_reach_head_only: *c_no_adapter: pytest-zoo does not know where the head*",
            "  e_plain (unknown) SKIPPED test_freeze_my_own_way: e_plain: no head adapter*",
        ]
    )


def test_out_of_memory_errors_are_recognised_on_every_device() -> None:
    from pytest_zoo.guards.state import classify, is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert classify(ValueError("unrelated"), "resnet18", "cpu", "call") is None
    fault = classify(pytest_zoo.NoAdapterError("no head\n  here"), "m", "cpu", "call")
    assert fault is not None and fault.skip_reason == "m: no head adapter: no head here"


# -- header, --zoo-list, summary, xdist, junitxml -------------------------------------------------


def test_header_names_versions_device_and_selection(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--zoo-models=resnet1*,alexnet", "--collect-only")
    result.stdout.fnmatch_lines(
        [
            f"zoo: 4 model(s) selected, device cpu (auto), torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}"
        ]
    )


def test_zoo_list_prints_the_table_and_runs_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_must_not_run(): raise SystemExit('ran')")
    result = pytester.runpytest("--zoo-models=resnet18,squeezenet1_1,ssdlite*", "--zoo-list")
    assert result.ret == pytest.ExitCode.OK
    resnet_params = f"{ResNet18_Weights.DEFAULT.meta['num_params']:,}"
    coco = len(SSDLite320_MobileNet_V3_Large_Weights.DEFAULT.meta["categories"])
    result.stdout.fnmatch_lines(
        [
            "model*task*family*head (adapter)*parameters*classes*weights",
            f"resnet18*classification*resnet*fc*{resnet_params}*1000*ResNet18_Weights: IMAGENET1K_V1[*]",
            "squeezenet1_1*classification*squeezenet*classifier.1*1000*SqueezeNet1_1_Weights: "
            "IMAGENET1K_V1[*]",
            # six per-feature-map heads in one cell; classes, not anchors x classes
            "ssdlite320_mobilenet_v3_large*detection*"
            f"head.classification_head.module_list.{{0..5}}.1 *{coco} *",
            "3 model(s); * marks the DEFAULT weights*",
        ]
    )
    result.stdout.no_fnmatch_line("*must_not_run*")
    result.stdout.no_fnmatch_line("*collected*")


XDIST_TESTS = """
    import pytest

    @pytest.mark.parametrize("zoo_model_name", ["resnet18", "resnet34", "vgg11", "alexnet"])
    def test_check(zoo_model_name):
        assert zoo_model_name != "vgg11", "vgg11 broke"

    @pytest.mark.parametrize("zoo_model_name", ["alexnet"])
    def test_skipped(zoo_model_name):
        pytest.skip("not today")

    def test_not_a_zoo_test():
        pass
"""


@pytest.mark.parametrize("workers", [None, "2"])
def test_summary_and_junit_properties_survive_xdist(pytester: pytest.Pytester, workers: str | None) -> None:
    pytester.makepyfile(XDIST_TESTS)
    args = ["--junitxml=out.xml", "-p", "no:cacheprovider"] + (["-n", workers] if workers else [])
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=4, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-zoo: results per family =*",
            "family*models*passed*failed*skipped",
            "alexnet*1*1*0*1",
            "resnet*2*2*0*0",
            "vgg*1*0*1*0",
            "not passed:",
            "  alexnet (alexnet) SKIPPED test_skipped: not today",
            "  vgg11 (vgg) FAILED test_check: AssertionError: vgg11 broke",
        ]
    )
    props: dict[tuple[str, str | None], dict[str | None, str | None]] = {}
    for case in ET.parse(pytester.path / "out.xml").iter("testcase"):
        found = {p.get("name"): p.get("value") for p in case.iter("property")}
        props[(str(case.get("name")).split("[")[0], found.get("model"))] = found
    assert props[("test_check", "vgg11")] == {"model": "vgg11", "task": "classification", "family": "vgg"}
    alexnet = {"model": "alexnet", "task": "classification", "family": "alexnet"}
    assert props[("test_skipped", "alexnet")] == alexnet
    assert props[("test_not_a_zoo_test", None)] == {}
    assert len(props) == 6
