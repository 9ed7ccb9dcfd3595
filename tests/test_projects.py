"""pytest-zoo inside real project layouts: conftest files, src/ layouts, every ini file, import modes.

Each shape runs one real session that records an upgrade snapshot while it runs a gate and the
shipped suite, then one that compares; the outcomes must be identical across shapes, with no
INTERNALERROR anywhere. Two shapes combine every feature and run by default; the full matrix, one
feature per shape, is opt-in: ``pytest -m zoo_projects``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from zoo_sessions import assert_clean, expected_gate, outcomes, tiny_gate, write

SUBSET = "TestTiny or snapshot or (TestZoo and forward)"
ARGS = ("--zoo-models=resnet18,tinya,tinybad", "--zoo-suite=yes", "--zoo-examples=1", "-k", SUBSET, "-v")

CONFTEST_SUB = """
import pytest


@pytest.fixture
def project_fixture():
    return 1


def test_conftest_in_a_subdirectory_works(project_fixture):
    pass
"""

#: Where a shape's ini text goes, and the section header it needs.
INI = {
    "pyproject.toml": "[tool.pytest.ini_options]\n",
    "pytest.ini": "[pytest]\n",
    "tox.ini": "[pytest]\n",
    "setup.cfg": "[tool:pytest]\n",
}


def _ini(name: str, **keys: str) -> dict[str, str]:
    header = INI[name]
    if name == "pyproject.toml":
        body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    else:
        body = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return {name: header + body}


def _project(root: Path, *, ini: str, src: bool, conftests: bool, importlib: bool) -> None:
    files = {"tests/test_gate.py": tiny_gate()}
    keys = {"testpaths": "tests"}
    if src:
        files["src/tinypkg/__init__.py"] = "SIZE = 4\n"
        files["tests/test_gate.py"] = "import tinypkg\n" + tiny_gate()
        keys["pythonpath"] = "src"
    if importlib:
        keys["addopts"] = "--import-mode=importlib"
    if conftests:
        files["conftest.py"] = "collect_ignore = ['build']\n"
        files["tests/conftest.py"] = CONFTEST_SUB
    write(root, {**files, **_ini(ini, **keys)})


Shape = Callable[[pytest.Pytester, pytest.MonkeyPatch], tuple[str, ...]]


def _conftests_pyproject_no_cache(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, ...]:
    _project(pytester.path, ini="pyproject.toml", src=False, conftests=True, importlib=False)
    return ("-p", "no:cacheprovider")


def _src_importlib_setup_cfg_elsewhere(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, ...]:
    root = pytester.path / "project"
    _project(root, ini="setup.cfg", src=True, conftests=True, importlib=True)
    elsewhere = pytester.path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the rootdir (project/) is not the cwd
    return (str(root / "tests"),)


def _plain(ini: str, **kw: bool) -> Shape:
    def shape(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
        _project(
            pytester.path,
            ini=ini,
            src=kw.get("src", False),
            conftests=kw.get("conftests", False),
            importlib=kw.get("importlib", False),
        )
        return ()

    return shape


def _rootdir_elsewhere(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    root = pytester.path / "project"
    _project(root, ini="pytest.ini", src=False, conftests=False, importlib=False)
    (pytester.path / "elsewhere").mkdir()
    monkeypatch.chdir(pytester.path / "elsewhere")
    return ("--rootdir", str(root), "-c", str(root / "pytest.ini"), str(root / "tests"))


def _no_cacheprovider(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    _project(pytester.path, ini="pytest.ini", src=False, conftests=False, importlib=False)
    return ("-p", "no:cacheprovider")


def _relative(found: dict[str, str]) -> dict[str, str]:
    """Outcomes keyed by ``Class::test[param]``: the path part differs between layouts.

    (With the rootdir elsewhere, pytest shows ids relative to the cwd, ``../project/zoo-snapshot::x``.)
    """
    return {
        "::".join(nodeid.split("::")[-2:]).rsplit("/", 1)[-1]: outcome for nodeid, outcome in found.items()
    }


def _record_and_compare(pytester: pytest.Pytester, extra: tuple[str, ...]) -> dict[str, str]:
    snap = Path.cwd() / "zoo.snap"
    record = pytester.runpytest_subprocess(*ARGS, f"--zoo-snapshot={snap}", "--zoo-snapshot-update", *extra)
    assert_clean(record)
    assert record.ret == pytest.ExitCode.TESTS_FAILED, record.stdout.str()[-3000:]  # tinybad fails
    record.stdout.fnmatch_lines(["*wrote *zoo.snap: 1 model(s) recorded*"])
    compare = pytester.runpytest_subprocess(*ARGS, f"--zoo-snapshot={snap}", *extra)
    assert_clean(compare)
    found = _relative(outcomes(compare.outlines))
    assert found.pop("zoo-snapshot::resnet18") == "PASSED"
    assert _relative(outcomes(record.outlines)) == {**found, "zoo-snapshot::resnet18": "PASSED"}
    return found


EXPECTED = {**expected_gate(), "TestZoo::test_forward_shape[resnet18]": "PASSED"}


@pytest.mark.parametrize(
    "shape",
    [_conftests_pyproject_no_cache, _src_importlib_setup_cfg_elsewhere],
    ids=["conftests", "src-layout"],
)
def test_project_shapes_combined(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shape: Shape
) -> None:
    """Every feature of a real project in two sessions pairs: the same outcomes as an empty directory's."""
    found = _record_and_compare(pytester, shape(pytester, monkeypatch))
    found.pop("tests/conftest.py::test_conftest_in_a_subdirectory_works", None)
    found = {k: v for k, v in found.items() if not k.endswith("test_conftest_in_a_subdirectory_works")}
    assert found == EXPECTED


MATRIX: dict[str, Shape] = {
    "conftest-root-and-subdir": _plain("pytest.ini", conftests=True),
    "tests-and-src": _plain("pytest.ini", src=True),
    "import-mode-importlib": _plain("pytest.ini", importlib=True),
    "pyproject.toml": _plain("pyproject.toml"),
    "pytest.ini": _plain("pytest.ini"),
    "tox.ini": _plain("tox.ini"),
    "setup.cfg": _plain("setup.cfg"),
    "no-cacheprovider": _no_cacheprovider,
    "rootdir-not-cwd": _rootdir_elsewhere,
}


@pytest.mark.zoo_projects
@pytest.mark.parametrize("name", list(MATRIX))
def test_project_matrix(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    found = _record_and_compare(pytester, MATRIX[name](pytester, monkeypatch))
    found = {k: v for k, v in found.items() if not k.endswith("test_conftest_in_a_subdirectory_works")}
    assert found == EXPECTED


def test_a_planted_change_is_reported_precisely_inside_a_project(pytester: pytest.Pytester) -> None:
    """The upgrade compare in a project with conftest files: one changed field, named; file untouched."""
    _project(pytester.path, ini="pyproject.toml", src=False, conftests=True, importlib=False)
    snap = pytester.path / "zoo.snap"
    args = ("--zoo-models=resnet18", f"--zoo-snapshot={snap}", "-k", "snapshot")
    record = pytester.runpytest_subprocess(*args, "--zoo-snapshot-update")
    assert record.ret == 0, record.stdout.str()[-3000:]
    data = json.loads(snap.read_text())
    data["models"]["resnet18"]["class_defaults"]["groups"] = 2  # "the old torchvision had groups=2"
    snap.write_text(json.dumps(data, indent=2))
    planted = snap.read_bytes()
    compare = pytester.runpytest_subprocess(*args)
    assert_clean(compare)
    assert compare.ret == pytest.ExitCode.TESTS_FAILED
    text = compare.stdout.str()
    assert "class_defaults.groups" in text and "2" in text, text[-3000:]
    compare.stdout.fnmatch_lines(["*changed: 1: resnet18 (class_defaults)*"])
    assert snap.read_bytes() == planted
