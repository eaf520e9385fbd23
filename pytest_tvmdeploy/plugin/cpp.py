"""The C++ check's options and the session's C++ runner (built once, on first use)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.plugin.session import SESSION_KEY, add_options
from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.runners.cpp_build import SessionCppRunner
from pytest_tvmdeploy.targets import TargetSpec

CPP_RUNNER_KEY = pytest.StashKey[SessionCppRunner]()
#: A prebuilt runner for every session that does not name one (a CI image that ships one, or a
#: test suite whose inner sessions share one build).
CPP_RUNNER_VARIABLE = "TVMDEPLOY_CPP_RUNNER"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, "cpp")


def pytest_configure(config: pytest.Config) -> None:
    prebuilt = config.getoption("tvm_cpp_runner") or os.environ.get(CPP_RUNNER_VARIABLE)
    config.stash[CPP_RUNNER_KEY] = SessionCppRunner(
        config.stash[SESSION_KEY].cache_dir / "cpp-runner", prebuilt=Path(prebuilt).resolve() if prebuilt else None
    )


def cpp_runner_for(config: pytest.Config, mode: str, target: TargetSpec, record: TestRecord) -> Path | None:
    """The C++ runner executable if this test runs the C++ check, else ``None`` (why: in ``record``)."""
    if mode == "off":
        record.cpp = "off"
        return None
    if not target.runs_here:
        record.cpp, record.cpp_note = "skipped", f"the .so is built for {target.architecture}"
        return None
    runner = config.stash[CPP_RUNNER_KEY]
    missing = runner.missing_toolchain()
    if missing is not None:
        if mode == "on":
            raise TvmDeployError(f"the C++ check is required (cpp=on) but {missing}")
        record.cpp, record.cpp_note = "skipped", missing
        return None
    return runner.executable()
