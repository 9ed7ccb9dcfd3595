"""The plugin in real pytest sessions: selection, the shipped suite, usage errors, load cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECKS = (
    "test_head_matches_builder",
    "test_forward_shape",
    "test_freeze_counts",
    "test_gradients_reach_head_only",
    "test_replace_head_keeps_dtype_and_device",
    "test_training_step",
    "test_finite_outputs_and_backward",
    "test_state_dict_round_trip",
    "test_batch_equivalence",
    "test_channels_last_and_autocast",
    "test_default_weights_metadata",
)


WEIGHTS_CHECKS = (
    "test_schema",
    "test_categories",
    "test_num_params",
    "test_ops",
    "test_file_size",
    "test_metrics",
    "test_recipe",
    "test_min_size",
    "test_transforms",
    "test_load_pretrained",
)

# Every session runs in a subprocess: an in-process pytester run drops the torch submodules it
# imported when it ends, and torch cannot register its operators twice.


def test_zoo_models_runs_every_check_for_exactly_the_selected_models(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--zoo-models=resnet18,mobilenet_v3_small", "--zoo-examples=2", "-v"
    )
    expected = {
        f"TestZoo::{check}[{model}]" for check in CHECKS for model in ("mobilenet_v3_small", "resnet18")
    }
    expected |= {
        f"TestZooWeights::{check}[{case}]"
        for check in WEIGHTS_CHECKS
        for case in ("mobilenet_v3_small-IMAGENET1K_V1", "resnet18-IMAGENET1K_V1")
    }
    passed = {line.split(" ")[0].split("::", 1)[1] for line in result.outlines if line.endswith("%]")}
    assert passed == expected
    result.assert_outcomes(passed=len(expected))
    result.stdout.fnmatch_lines(["zoo: 2 model(s) selected*"])


def test_collection_is_sorted_and_honours_excludes(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nzoo_exclude = resnet1??\n")
    result = pytester.runpytest_subprocess("--zoo-models=resnet*,!resnet5?", "--collect-only", "-q")
    ids = [line for line in result.outlines if "TestZoo::test_freeze_counts" in line]
    assert [i.rsplit("[", 1)[1].rstrip("]") for i in ids] == ["resnet18", "resnet34"]


def test_ini_key_selects_models(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nzoo_models = squeezenet1_1\nzoo_examples = 1\n")
    result = pytester.runpytest_subprocess("-k", "TestZoo and (forward or freeze)", "-v")
    result.stdout.fnmatch_lines(
        [
            "*TestZoo::test_forward_shape[[]squeezenet1_1[]] PASSED*",
            "*TestZoo::test_freeze_counts[[]squeezenet1_1[]] PASSED*",
        ]
    )
    assert result.parseoutcomes()["passed"] == 2


def test_unmatched_pattern_is_a_usage_error_with_suggestions(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--zoo-models=resnet18,rsenet5*")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pattern 'rsenet5*' matches none of the 121 torchvision models*resnet50*"])
    # checked after collection (a gate class may list a name of its own), before anything runs
    result.stdout.no_fnmatch_line("*passed*")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zoo-models=resnet18,,vgg11"], "*empty pattern*"),
        (["--zoo-models="], "*--zoo-models is empty*"),
        (["--zoo-models=resnet*", "--zoo-exclude=resnet*"], "*select no model: every match was excluded*"),
        (
            ["--zoo-models=resnet18", "--zoo-device=tpu"],
            "*--zoo-device='tpu' is not a device. Valid: auto, cpu*",
        ),
        (
            ["--zoo-models=resnet18", "--zoo-examples=0"],
            "*--zoo-examples='0' is not a positive whole number*",
        ),
        (["--zoo-models=resnet18", "--zoo-examples=abc"], "*--zoo-examples='abc'*"),
    ],
)
def test_bad_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_failing_head_swap_is_reported_with_model_and_expected_shapes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from torch import nn
        from pytest_zoo import ZooConformance

        class TestFixedCount(ZooConformance):
            models = ["resnet18"]

            def replace_head(self, model, num_classes):
                model.fc = nn.Linear(model.fc.in_features, 10_001)
                return model
        """
    )
    result = pytester.runpytest_subprocess("-k", "head_matches", "--zoo-examples=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*resnet18: the model's state_dict after replace_head differs from torchvision's resnet18(*)*",
            "*hook:*replace_head -> TestFixedCount.replace_head (*.py:7)",
            "*fc.weight: expected (*, 512), found (10001, 512)*",
            "*defect:*fc still has 10001 outputs, not num_classes=*: replace_head did not resize this layer*",
        ]
    )


def test_a_head_of_another_design_than_the_builders_passes(pytester: pytest.Pytester) -> None:
    """A bias-less head, declared (``head_bias = False``), is a design choice, not a defect: it is
    judged by following num_classes. Undeclared, it is reported (tests/test_gate_fidelity.py)."""
    pytester.makepyfile(
        """
        from torch import nn
        from pytest_zoo import ZooConformance

        class TestNoBias(ZooConformance):
            models = ["resnet18"]
            head_bias = False

            def replace_head(self, model, num_classes):
                old = model.fc
                model.fc = nn.Linear(old.in_features, num_classes, bias=False, dtype=old.weight.dtype)
                return model
        """
    )
    result = pytester.runpytest_subprocess("-k", "head_matches or freeze", "--zoo-examples=2")
    result.assert_outcomes(passed=2)


def test_suite_is_not_collected_without_zoo_models(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*TestZoo*")


def test_loading_the_plugin_does_not_import_torch(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            heavy = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
            print("HEAVY:", heavy)
        """
    )
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*zoo-0.1.0*", "*HEAVY: []"])


def test_importing_the_package_is_cheap() -> None:
    code = "import sys, pytest_zoo, pytest_zoo.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
