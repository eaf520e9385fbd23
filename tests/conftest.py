"""Shared helpers: a pytester project pre-filled with the small fixture models."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the small models (models.py) and photo sets (images.py)
FIXTURE_FILES = ("models.py", "faults.py", "tiny_convnet.onnx", "tiny_convnet.pt", "tiny_convnet.pt2", "corrupt.onnx",
                 "tiny_convnet_dynamic.onnx")


#: The ini of a ``project``: snapshots are on by default, but only their own tests want them.
PROJECT_INI = "[pytest]\ntvm_snapshot = off\n"


@pytest.fixture
def not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `pytest -n`, an inner pytester session would inherit the worker's variables and
    believe it is an xdist worker too (syrupy then keeps its report for a controller that never comes)."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def snapshot_project(pytester: pytest.Pytester, not_an_xdist_worker: None) -> pytest.Pytester:
    """A pytester folder holding ``models.py`` and the fixture model files next to its tests."""
    for name in FIXTURE_FILES:
        shutil.copy(FIXTURES / name, pytester.path / name)
    pytester.syspathinsert()
    return pytester


@pytest.fixture
def project(snapshot_project: pytest.Pytester) -> pytest.Pytester:
    """Like ``snapshot_project``, with snapshots switched off in its ini file."""
    snapshot_project.makeini(PROJECT_INI)
    return snapshot_project


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def cpp_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C++ runner, built once per session (skips the test without a C++ toolchain)."""
    from pytest_tvmdeploy.runners.cpp_build import build_cpp_runner, find_cpp_toolchain

    reason = find_cpp_toolchain()
    if reason is not None:
        pytest.skip(f"no C++ toolchain: {reason}")
    return build_cpp_runner(tmp_path_factory.mktemp("cpp_build"))


@pytest.fixture(scope="session", autouse=True)
def _imports_outlive_pytester(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import everything a deployment touches once, before any in-process pytester run.

    In-process pytester runs drop modules first imported during the run; importing
    TVM's modules a second time in one process re-registers its global functions and
    crashes. Deploying each kind of source here puts them all in the preserved set.
    """
    from pytest_tvmdeploy import deploy

    cache = tmp_path_factory.mktemp("warm-cache")
    for name in ("tiny_convnet.pt", "tiny_convnet.pt2", "tiny_convnet.onnx"):
        deploy(FIXTURES / name, {"x": ((1, 3, 16, 16), "float32")}, cache_dir=cache)
    import pytest_tvmdeploy.plugin  # noqa: F401
