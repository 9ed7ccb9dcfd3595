"""Every option and ini key is validated when pytest configures: one real session per bad value.

Each bad value must stop the run before anything is collected, with a usage error (exit code 4)
that names the option, repeats the bad value and says what is valid.
"""

from __future__ import annotations

import pytest
import torch  # imported here so that in-process pytester runs never re-import it
import torchvision  # noqa: F401  (same reason: selection imports it inside the runs)

CASES = [
    # devices
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-device=tpu"],
        "",
        "*--zoo-device='tpu' is not a device. Valid: auto, cpu, cuda, cuda:N, mps, meta.*",
        id="device-tpu",
    ),
    pytest.param(
        ["--zoo-models=resnet18"],
        "zoo_device = tpu",
        "*ini option zoo_device='tpu' is not a device. Valid: auto, cpu*",
        id="ini-device-tpu",
    ),
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-device=cuda:x"],
        "",
        "*--zoo-device='cuda:x' is not a device*",
        id="device-cuda-bad-index",
    ),
    # counts
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-examples=0"],
        "",
        "*--zoo-examples='0' is not a positive whole number of Hypothesis examples (default 3)*",
        id="examples-0",
    ),
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-examples=-1"],
        "",
        "*--zoo-examples='-1' is not a positive whole number*",
        id="examples-negative",
    ),
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-examples=abc"],
        "",
        "*--zoo-examples='abc' is not a positive whole number*",
        id="examples-abc",
    ),
    pytest.param(
        ["--zoo-models=resnet18"],
        "zoo_examples = 2.5",
        "*ini option zoo_examples='2.5' is not a positive whole number*",
        id="ini-examples-float",
    ),
    # the shipped suite and the report
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-suite=maybe"],
        "",
        "*--zoo-suite='maybe' is not one of auto, yes, no*",
        id="suite-bad",
    ),
    pytest.param(
        ["--zoo-models=resnet18"],
        "zoo_suite = sometimes",
        "*ini option zoo_suite='sometimes'*",
        id="ini-suite",
    ),
    pytest.param(["--zoo-report="], "", "*--zoo-report is empty*", id="report-empty"),
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-snapshot=zoo.json", "--zoo-snapshot-update", "--zoo-report=zoo.md"],
        "",
        "*--zoo-report=zoo.md: cannot write the zoo report to *: the report would overwrite the upgrade "
        "snapshot (--zoo-snapshot=*zoo.json)*",
        id="report-json-is-the-snapshot",
    ),
    pytest.param(
        [],
        "zoo_report = nowhere/zoo.md",
        "*ini option zoo_report=nowhere/zoo.md: cannot write*",
        id="ini-report",
    ),
    # patterns
    pytest.param(["--zoo-models="], "", "*--zoo-models is empty*'resnet*'*", id="models-empty"),
    pytest.param(["--zoo-models= , "], "", "*--zoo-models: empty pattern in ' , '*", id="models-blank-items"),
    pytest.param(
        ["--zoo-models=resnet18,,vgg11"],
        "",
        "*--zoo-models: empty pattern in 'resnet18,,vgg11'*",
        id="models-gap",
    ),
    pytest.param(
        ["--zoo-models=rsenet5*"],
        "",
        "*pattern 'rsenet5*' matches none of the * torchvision models. Did you mean*resnet50*",
        id="models-unmatched",
    ),
    pytest.param(
        [],
        "zoo_models = vgg11,nosuchnet",
        "*pattern 'nosuchnet' matches none of the*",
        id="ini-models-unmatched",
    ),
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-exclude=rseent*"],
        "",
        "*pattern 'rseent*' matches none of the*",
        id="exclude-unmatched",
    ),
    # tasks
    pytest.param(
        ["--zoo-tasks=detektion"],
        "",
        "*--zoo-tasks='detektion': unknown task(s) 'detektion'. ('detektion': did you mean 'detection'?) "
        "Valid tasks: classification*",
        id="tasks-unknown",
    ),
    pytest.param(
        ["--zoo-tasks="], "", "*--zoo-tasks is empty. Give comma-separated tasks from:*", id="tasks-empty"
    ),
    pytest.param(
        [],
        "zoo_tasks = classification, vision",
        "*ini option zoo_tasks=*unknown task(s) 'vision'*",
        id="ini-tasks",
    ),
    # deployment paths
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-deploy=export,onnx"],
        "",
        "*--zoo-deploy='export,onnx': unknown deployment path(s) 'onnx'. Valid: export, compile, script, "
        "fx, or all*",
        id="deploy-unknown",
    ),
    pytest.param(["--zoo-deploy="], "", "*--zoo-deploy is empty. Valid: export, compile*", id="deploy-empty"),
    pytest.param(
        ["--zoo-models=resnet18"],
        "zoo_deploy = trace",
        "*ini option zoo_deploy='trace': unknown deployment path(s) 'trace'*",
        id="ini-deploy",
    ),
    # conflicts
    pytest.param(
        ["--zoo-models=resnet*", "--zoo-exclude=resnet*"],
        "",
        "*select no model: every match was excluded*",
        id="exclude-everything",
    ),
    pytest.param(
        ["--zoo-models=resnet18", "--zoo-tasks=detection"],
        "",
        "*--zoo-tasks=detection leaves no model*of task(s) classification*",
        id="tasks-versus-models",
    ),
    pytest.param(
        ["--zoo-exclude=vgg*"],
        "",
        "*--zoo-exclude='vgg*' only excludes, and there is nothing to exclude from*--zoo-models='*'*",
        id="exclude-without-models",
    ),
    pytest.param(
        ["--zoo-models=!vgg*"],
        "",
        "*--zoo-models='!vgg*' only excludes, and there is nothing to exclude from*",
        id="models-only-negated",
    ),
    pytest.param(
        ["--zoo-list", "--zoo-snapshot=snap.json", "--zoo-snapshot-update"],
        "",
        "*--zoo-list and --zoo-snapshot-update conflict*",
        id="list-versus-snapshot-update",
    ),
    pytest.param(
        ["--zoo-snapshot-update"],
        "",
        "*--zoo-snapshot-update needs a file to write*",
        id="update-without-file",
    ),
]


@pytest.mark.parametrize(("args", "ini", "message"), CASES)
def test_bad_value_is_a_usage_error_naming_option_value_and_valid_choices(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_never_runs(): raise SystemExit('collected despite a bad option')")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([message])
    if "matches none" in message or "every match was excluded" in message:
        # A name only a gate class lists is selectable, so patterns are checked after collection.
        result.stdout.no_fnmatch_line("*passed*")
    else:
        result.stdout.no_fnmatch_line("*collected*")


def test_ini_cuda_without_a_gpu_names_the_ini_key(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makeini("[pytest]\nzoo_device = cuda\n")
    result = pytester.runpytest("--zoo-models=resnet18")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option zoo_device=cuda: CUDA is not available on this machine*"])


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "*--zoo-device=cuda: CUDA is not available on this machine. Use --zoo-device=cpu or auto.*"),
        ("cuda:0", "*--zoo-device=cuda:0: CUDA is not available*"),
    ],
)
@pytest.mark.parametrize("models", [True, False], ids=["with-models", "device-alone"])
def test_cuda_without_a_gpu_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, device: str, message: str, models: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    args = [f"--zoo-device={device}"] + (["--zoo-models=resnet18"] if models else [])
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_cuda_index_beyond_the_devices_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = pytester.runpytest("--zoo-models=resnet18", "--zoo-device=cuda:2", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--zoo-device=cuda:2: only 2 CUDA device(s), cuda:0..cuda:1.*"])


def test_valid_values_and_standing_ini_configuration_are_accepted(pytester: pytest.Pytester) -> None:
    """The other side of every rule above: none of them refuses what is legitimate."""
    pytester.makeini("[pytest]\nzoo_exclude = vgg*\nzoo_examples = 2\nzoo_device = cpu\n")
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest()  # an ini exclusion with no models selected is standing config
    result.assert_outcomes(passed=1)
    result = pytester.runpytest(
        "--zoo-models=resnet1?,!resnet10?", "--zoo-examples=5", "--collect-only", "-q"
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_freeze_counts[[]resnet18[]]*"])
    result = pytester.runpytest("--zoo-tasks=optical_flow", "--zoo-exclude=raft_large", "--zoo-list")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["raft_small*optical_flow*raft*no class head*", "1 model(s); *"])
    result.stdout.no_fnmatch_line("raft_large*")
