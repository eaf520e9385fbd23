"""Marked tests run on remote devices (TVM RPC on loopback) and build for other architectures."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from rpc_servers import RpcFarm, free_port  # fixtures/ is on sys.path (conftest.py)

KEY = "tvmdeploy-plugin-cpu"
needs_tracker = pytest.mark.skipif(importlib.util.find_spec("tornado") is None,
                                   reason="TVM's RPC tracker needs tornado (pip install tornado)")
CROSS_CXX = "aarch64-linux-gnu-g++"
EM_AARCH64 = 183  # ELF e_machine

FOUR_MODELS = """
import pytest
from models import TinyConvNet, seeded

@pytest.mark.parametrize("copy", range(4), ids=lambda c: f"copy{c}")
@pytest.mark.tvm_model(model="tiny_convnet.onnx", inputs={"x": ((1, 3, 16, 16), "float32")})
def test_model(tvm_deployment, copy):
    assert tvm_deployment.device.startswith("rpc:")

def test_plain():
    pass
"""


def records(folder: Path) -> list[dict]:
    return json.loads((folder / "report.json").read_text())["tests"]


def test_a_suite_runs_on_an_rpc_server(project: pytest.Pytester, tmp_path: Path) -> None:
    with RpcFarm(tmp_path) as farm:
        server = farm.server()
        farm.wait_ready()
        project.makepyfile(FOUR_MODELS)
        result = project.runpytest("--tvm-rpc", server.address, "--tvm-report=out", "-k", "copy0 or plain")
        result.assert_outcomes(passed=2)
        assert server.sessions() >= 1
    (record,) = records(project.path / "out")
    assert record["device"] == f"rpc:{server.address}" and record["outcome"] == "passed"
    assert record["max_abs_error"] < 1e-5 and record["cpp"] == "bitwise"  # C++ still checks the .so on the host


@needs_tracker
def test_xdist_workers_take_devices_from_a_tracker_pool(project: pytest.Pytester, tmp_path: Path) -> None:
    with RpcFarm(tmp_path) as farm:
        tracker = farm.tracker()
        servers = [farm.server(tracker=tracker, key=KEY) for _ in range(2)]
        farm.wait_ready()
        project.makepyfile(FOUR_MODELS)
        result = project.runpytest_subprocess("-p", "xdist", "-n", "2", "--tvm-rpc-tracker", tracker.address,
                                              "--tvm-rpc-key", KEY, "--tvm-report=out")
        result.assert_outcomes(passed=5)
        assert all(server.sessions() >= 1 for server in servers), [s.log() for s in servers]
    devices = {r["device"] for r in records(project.path / "out")}
    assert devices == {f"rpc:{KEY}@{tracker.address}"}


@needs_tracker
def test_tuning_measures_candidates_on_the_tracker_pool(project: pytest.Pytester, tmp_path: Path) -> None:
    """--tvm-tune with a tracker: candidates are linked here and measured on both servers; the
    run that follows uses the records (and a device again)."""
    with RpcFarm(tmp_path) as farm:
        tracker = farm.tracker()
        servers = [farm.server(tracker=tracker, key=KEY) for _ in range(2)]
        farm.wait_ready()
        project.makepyfile(FOUR_MODELS)
        project.makeini("[pytest]\ntvm_snapshot = off\ntvm_tuning_dir = tuning\n")
        result = project.runpytest_subprocess("--tvm-tune=12", "--tvm-rpc-tracker", tracker.address,
                                              "--tvm-rpc-key", KEY, "--tvm-report=out", "-k", "copy0")
        result.assert_outcomes(passed=1)
        sessions = [server.sessions() for server in servers]
    (record,) = records(project.path / "out")
    assert record["tuned"] is True and record["device"] == f"rpc:{KEY}@{tracker.address}"
    measured = len((project.path / "tuning" / "llvm" / "database_tuning_record.json").read_text().splitlines())
    assert measured >= 8
    assert all(count >= 2 for count in sessions) and sum(sessions) >= measured + 1, sessions


def test_an_unreachable_device_fails_its_tests_and_the_session_goes_on(project: pytest.Pytester) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    project.makepyfile(FOUR_MODELS)
    result = project.runpytest("--tvm-rpc", address, "-k", "copy0 or plain")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*test_model[[]copy0[]]: RPC server {address}: connection to {address} refused*"])


def test_bad_rpc_options_are_usage_errors(project: pytest.Pytester) -> None:
    result = project.runpytest("--tvm-rpc-tracker", "127.0.0.1:9190")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*RPC tracker '127.0.0.1:9190': a device key is needed*"])
    result = project.runpytest("--tvm-rpc", "no-port")
    result.stderr.fnmatch_lines(["*RPC server 'no-port': expected HOST:PORT*"])


def test_a_target_for_another_architecture_is_cross_compiled_and_not_run_here(project: pytest.Pytester) -> None:
    if shutil.which(CROSS_CXX) is None:
        missing = f"{CROSS_CXX} not installed (apt install g++-aarch64-linux-gnu)"
        pytest.fail(missing) if os.environ.get("TVMDEPLOY_REQUIRE_CROSS") else pytest.skip(missing)
    project.makepyfile(FOUR_MODELS)
    target = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}'
    result = project.runpytest(f"--tvm-target={target}", f"--tvm-cc={CROSS_CXX}", "--tvm-report=out", "-rs",
                               "-k", "copy0 or plain")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*built for aarch64 (*model.so); this machine is x86_64: give an RPC device*"])
    (record,) = records(project.path / "out")
    assert record["outcome"] == "skipped" and record["cpp"] == "skipped"
    assert record["cpp_note"] == "the .so is built for aarch64"
    header = Path(record["artifact"]).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # 64-bit ELF
    assert int.from_bytes(header[18:20], "little") == EM_AARCH64
