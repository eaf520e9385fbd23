"""Shared helpers: a pytester project pre-filled with the small fixture models."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def shared_cpp_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """The C++ runner, built once for the whole run (its xdist workers share the build), and the
    prebuilt runner of every inner session through ``$TVMDEPLOY_CPP_RUNNER``: each would
    otherwise build its own into its fresh cache (~15 s of CPU, ~70 times a run). Tests of the
    build itself remove the variable. ``None`` without a C++ toolchain."""
    from pytest_tvmdeploy.plugin.cpp import CPP_RUNNER_VARIABLE
    from pytest_tvmdeploy.runners.cpp_build import build_cpp_runner, find_cpp_toolchain

    if find_cpp_toolchain() is not None:
        yield None
        return
    run_folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_folder = run_folder.parent  # the workers' common folder
    runner = build_cpp_runner(run_folder / "cpp-runner")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CPP_RUNNER_VARIABLE, str(runner))
        yield runner


@pytest.fixture
def own_cpp_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions build their C++ runner themselves, as without ``$TVMDEPLOY_CPP_RUNNER``."""
    from pytest_tvmdeploy.plugin.cpp import CPP_RUNNER_VARIABLE

    monkeypatch.delenv(CPP_RUNNER_VARIABLE, raising=False)


@pytest.fixture(scope="session")
def cpp_exe(shared_cpp_runner: Path | None) -> Path:
    """The C++ runner (skips the test without a C++ toolchain)."""
    from pytest_tvmdeploy.runners.cpp_build import find_cpp_toolchain

    if shared_cpp_runner is None:
        pytest.skip(f"no C++ toolchain: {find_cpp_toolchain()}")
    return shared_cpp_runner


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
