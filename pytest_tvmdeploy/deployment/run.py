"""Run a built artifact: in this process's Relax VM or on a remote device, and from C++."""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pytest_tvmdeploy.build.cache import Artifact
from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.outputs import RunResult
from pytest_tvmdeploy.runners.cpp import run_cpp
from pytest_tvmdeploy.runners.python_vm import run_python_vm


def run_tvm(artifact: Artifact, arrays: Mapping[str, np.ndarray],
            config: DeployConfig) -> tuple[RunResult | None, str | None]:
    """Run the artifact in this process's Relax VM, or on the remote device; ``(None, why)`` when
    it was built for another architecture and there is no device to run it on."""
    if config.remote is not None:
        from pytest_tvmdeploy.runners.rpc import run_rpc

        artifact.verify()
        return run_rpc(artifact.path, arrays, config.remote, repeat=config.repeat,
                       timeout=config.remote_timeout), None
    spec = config.spec
    if not spec.runs_here:
        return None, (f"built for {spec.architecture} ({artifact.path}); this machine is "
                      f"{platform.machine()}: give an RPC device (--tvm-rpc / --tvm-rpc-tracker) to run it")
    return run_python_vm(artifact.path, arrays, repeat=config.repeat), None


def run_cpp_check(artifact: Artifact, arrays: Mapping[str, np.ndarray],
                  config: DeployConfig) -> tuple[RunResult | None, str | None]:
    """Run the artifact from C++ in a child process: ``(result, None)`` or ``(None, why it failed)``.
    A crash or timeout there is reported, not raised."""
    assert config.cpp_runner is not None
    try:
        artifact.verify()  # a damaged .so can crash the loader: refuse it before the child opens it
        with tempfile.TemporaryDirectory(prefix="tvmdeploy-cpp-") as work_dir:
            return run_cpp(config.cpp_runner, artifact.path, arrays, work_dir=Path(work_dir),
                           repeat=config.repeat, timeout=config.cpp_timeout), None
    except TvmDeployError as exc:
        return None, str(exc)
