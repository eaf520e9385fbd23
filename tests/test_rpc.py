"""The RPC runner against real TVM RPC trackers and servers on 127.0.0.1 (no mocks).

One farm of child processes per test module (per xdist worker): a tracker with a pool of two
servers under one key, a single server, and two servers that tests kill or freeze. All ports
are free ports picked at start, and every process is killed at teardown, whatever happened.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pytest_tvmdeploy import Deployment, deploy
from pytest_tvmdeploy.errors import ConfigError, RunnerError
from pytest_tvmdeploy.runners import rpc_devices
from pytest_tvmdeploy.runners.rpc import RpcRunResult, run_rpc
from pytest_tvmdeploy.runners.rpc_devices import RemoteSpec, parse_remote
from rpc_servers import RpcFarm, RpcProcess, free_port  # fixtures/ is on sys.path (conftest.py)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KEY = "tvmdeploy-test-cpu"
TINY_INPUTS = {"x": ((1, 3, 16, 16), "float32")}
#: Calls that keep the tiny model busy for many seconds: the run is still going when a test
#: kills or freezes its server.
ENDLESS = 10_000_000
needs_tracker = pytest.mark.skipif(importlib.util.find_spec("tornado") is None,
                                   reason="TVM's RPC tracker needs tornado (pip install tornado)")


@dataclass
class Rpc:
    """The farm's processes, by role."""

    farm: RpcFarm
    server: RpcProcess                 # a single server, healthy all along
    to_kill: RpcProcess                # killed mid-run by one test
    to_freeze: RpcProcess              # stopped (SIGSTOP) mid-run by one test
    tracker: RpcProcess | None = None
    pool: tuple[RpcProcess, ...] = ()  # registered with the tracker under KEY

    @property
    def pool_spec(self) -> RemoteSpec:
        assert self.tracker is not None
        return parse_remote(tracker=self.tracker.address, key=KEY)


@pytest.fixture(scope="module")
def rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rpc]:
    with RpcFarm(tmp_path_factory.mktemp("rpc-logs")) as farm:
        tracker = farm.tracker() if importlib.util.find_spec("tornado") else None
        pool = tuple(farm.server(tracker=tracker, key=KEY) for _ in range(2)) if tracker else ()
        processes = Rpc(farm, farm.server(), farm.server(), farm.server(), tracker, pool)
        farm.wait_ready()
        yield processes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return deploy(FIXTURES / "tiny_convnet.onnx", TINY_INPUTS, cache_dir=tmp_path_factory.mktemp("rpc-cache"))


def assert_same_outputs(result: RpcRunResult, deployment: Deployment) -> None:
    """Bitwise equal to the local Python VM's outputs, in order, named output_0, ..."""
    assert list(result.outputs) == [f"output_{i}" for i in range(len(deployment.outputs))]
    for got, want in zip(result.outputs.values(), deployment.outputs.values()):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


def raises_quickly(seconds: float, call: Callable[..., object], *args: object, **kwargs: object) -> RunnerError:
    """The RunnerError ``call`` raises, checked to come within ``seconds``."""
    start = time.monotonic()
    with pytest.raises(RunnerError) as info:
        call(*args, **kwargs)
    assert time.monotonic() - start < seconds, f"took {time.monotonic() - start:.1f} s: {info.value}"
    return info.value


# ----------------------------------------------------------------------------------------------
# addresses


@pytest.mark.parametrize(("args", "expected"), [
    (("127.0.0.1:9090",), RemoteSpec("127.0.0.1", 9090)),
    ((" gpu-box:1 ",), RemoteSpec("gpu-box", 1)),
    (("[::1]:9090",), RemoteSpec("::1", 9090)),
    ((None, "10.0.0.2:9190", "rasp4"), RemoteSpec("10.0.0.2", 9190, "rasp4", tracker=True)),
    (("10.0.0.2:9090", None, "mykey"), RemoteSpec("10.0.0.2", 9090, "mykey")),
])
def test_parse_remote(args: tuple, expected: RemoteSpec) -> None:
    server, tracker, key = (*args, None, None)[:3]
    assert parse_remote(server, tracker=tracker, key=key) == expected


def test_labels_name_the_server_or_the_pool() -> None:
    assert parse_remote("127.0.0.1:9090").label == "127.0.0.1:9090"
    assert parse_remote("[::1]:9090").label == "[::1]:9090"
    pool = parse_remote(tracker="10.0.0.2:9190", key="rasp4")
    assert pool.label == "rasp4@10.0.0.2:9190"
    assert pool.describe() == "RPC device 'rasp4' from tracker 10.0.0.2:9190"


@pytest.mark.parametrize(("args", "message"), [
    (("localhost",), "expected HOST:PORT"),
    ((":9090",), "expected HOST:PORT"),
    (("::1:9090",), "expected HOST:PORT"),
    (("host:http",), "port 'http' is not a number"),
    (("host:70000",), "port '70000' is not a number in 1-65535"),
    (("host:0",), "is not a number in 1-65535"),
    ((None, "host:9190"), "a device key is needed"),
    ((None, "host:9190", "two words"), "must not contain spaces"),
    (("host:9090", "host:9190", "k"), "not both"),
    ((None, None, "k"), "not neither"),
])
def test_bad_addresses_are_config_errors(args: tuple, message: str) -> None:
    server, tracker, key = (*args, None, None)[:3]
    with pytest.raises(ConfigError, match=message):
        parse_remote(server, tracker=tracker, key=key)


def test_protocol_constants_match_tvm() -> None:
    from tvm.rpc import base

    assert (rpc_devices.RPC_MAGIC, rpc_devices.RPC_TRACKER_MAGIC) == (base.RPC_MAGIC, base.RPC_TRACKER_MAGIC)
    assert (rpc_devices.RPC_CODE_SUCCESS, rpc_devices.RPC_CODE_MISMATCH) == (base.RPC_CODE_SUCCESS,
                                                                             base.RPC_CODE_MISMATCH)
    codes = base.TrackerCode
    assert (rpc_devices.TRACKER_SUCCESS, rpc_devices.TRACKER_REQUEST, rpc_devices.TRACKER_SUMMARY) == (
        codes.SUCCESS, codes.REQUEST, codes.SUMMARY)


# ----------------------------------------------------------------------------------------------
# runs


def test_single_server_outputs_are_bitwise_identical(rpc: Rpc, tiny: Deployment) -> None:
    result = run_rpc(tiny.artifact_path, tiny.inputs, rpc.server.address, repeat=3)
    assert_same_outputs(result, tiny)
    assert result.runner == f"rpc:{rpc.server.address}" and result.server == rpc.server.address
    assert len(result.call_seconds) == 3 and all(0 < s < 1 for s in result.call_seconds)
    assert result.load_seconds > 0


@needs_tracker
def test_tracker_outputs_are_bitwise_identical_and_the_device_comes_back(rpc: Rpc, tiny: Deployment) -> None:
    result = run_rpc(tiny.artifact_path, tiny.inputs, rpc.pool_spec)
    assert_same_outputs(result, tiny)
    assert result.runner == f"rpc:{KEY}@{rpc.tracker.address}"
    assert result.server in {p.address for p in rpc.pool}
    assert len(result.call_seconds) == 1
    # the session is closed when run_rpc returns (no GC needed), so the server is free again
    rpc.farm.wait_free(rpc.tracker, KEY, deadline=time.monotonic() + 3)


def test_nested_outputs_are_flattened_like_the_python_vm(rpc: Rpc, tmp_path: Path) -> None:
    from models import TwoInThreeOut

    d = deploy(TwoInThreeOut(), {"a": ((2, 4), "float32"), "b": ((3, 4), "float32")}, cache_dir=tmp_path)
    result = run_rpc(d.artifact_path, d.inputs, rpc.server.address, repeat=2)
    assert [a.shape for a in result.outputs.values()] == [(2, 4), (2, 3), (2,)]
    assert_same_outputs(result, d)


@needs_tracker
def test_concurrent_callers_get_different_servers(rpc: Rpc, tiny: Deployment, tmp_path: Path) -> None:
    """Two processes (as two xdist workers would be) each lease a device of the 2-server pool."""
    script = textwrap.dedent(f"""
        import json, pathlib, sys, time
        sys.modules["torch"] = None  # the runner does not need it: start in 1 s, not 3
        import numpy as np
        from pytest_tvmdeploy.runners.rpc import run_rpc
        from pytest_tvmdeploy.runners.rpc_devices import parse_remote
        import tvm  # imported before the barrier: both then ask the tracker at the same moment
        folder = pathlib.Path(sys.argv[1])
        inputs = {{"x": np.load(folder / "x.npy")}}
        (folder / ("ready-" + sys.argv[2])).touch()
        while not (folder / "go").exists():
            time.sleep(0.01)
        spec = parse_remote(tracker={rpc.tracker.address!r}, key={KEY!r})
        result = run_rpc(pathlib.Path({str(tiny.artifact_path)!r}), inputs, spec, repeat=100_000, timeout=60)
        print(json.dumps(result.server))
    """)
    np.save(tmp_path / "x.npy", tiny.inputs["x"])
    before = [p.sessions() for p in rpc.pool]
    callers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(i)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
            assert all(c.poll() is None for c in callers), [c.communicate() for c in callers]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (tmp_path / "go").touch()
        outputs = [c.communicate(timeout=60) for c in callers]
    finally:
        for caller in callers:
            caller.kill()
    assert [c.returncode for c in callers] == [0, 0], outputs
    servers = {json.loads(out.strip().splitlines()[-1]) for out, _ in outputs}
    assert servers == {p.address for p in rpc.pool}
    assert [p.sessions() - b for p, b in zip(rpc.pool, before)] == [1, 1]


# ----------------------------------------------------------------------------------------------
# failures: each a RunnerError naming the device, and the caller goes on


def test_missing_module_or_no_calls_fail_before_connecting(tmp_path: Path, tiny: Deployment) -> None:
    with pytest.raises(RunnerError, match=r"RPC server 127.0.0.1:9: module .*nothing.so not found"):
        run_rpc(tmp_path / "nothing.so", {}, "127.0.0.1:9")
    with pytest.raises(RunnerError, match="repeat must be >= 1, got 0"):
        run_rpc(tiny.artifact_path, tiny.inputs, "127.0.0.1:9", repeat=0)


def test_unreachable_server_fails_fast(tiny: Deployment) -> None:
    address = f"127.0.0.1:{free_port()}"
    error = raises_quickly(3, run_rpc, tiny.artifact_path, tiny.inputs, address)
    assert str(error).startswith(f"RPC server {address}: connection to {address} refused")


def test_unreachable_tracker_fails_fast(tiny: Deployment) -> None:
    address = f"127.0.0.1:{free_port()}"
    spec = parse_remote(tracker=address, key=KEY)
    error = raises_quickly(3, run_rpc, tiny.artifact_path, tiny.inputs, spec)
    assert str(error).startswith(f"RPC device {KEY!r} from tracker {address}: connection to {address} refused")


@needs_tracker
def test_wrong_kind_of_port(rpc: Rpc, tiny: Deployment) -> None:
    error = raises_quickly(5, run_rpc, tiny.artifact_path, tiny.inputs, rpc.tracker.address, timeout=5)
    assert f"RPC server {rpc.tracker.address}" in str(error) and "not a TVM RPC server" in str(error)
    spec = parse_remote(tracker=rpc.server.address, key=KEY)
    error = raises_quickly(5, run_rpc, tiny.artifact_path, tiny.inputs, spec, timeout=5)
    assert "not a TVM RPC tracker" in str(error)


@needs_tracker
def test_no_device_with_that_key(rpc: Rpc, tiny: Deployment) -> None:
    spec = parse_remote(tracker=rpc.tracker.address, key="no-such-device")
    error = raises_quickly(5, run_rpc, tiny.artifact_path, tiny.inputs, spec, timeout=1.0)
    assert str(error).startswith(f"RPC device 'no-such-device' from tracker {rpc.tracker.address}: no free device")
    assert f"no server is registered with key 'no-such-device'; keys registered: {KEY}" in str(error)


@needs_tracker
def test_busy_pool_times_out_then_serves_again(rpc: Rpc, tiny: Deployment) -> None:
    from tvm import rpc as tvm_rpc

    tracker = tvm_rpc.connect_tracker("127.0.0.1", rpc.tracker.port)
    held = [tracker.request(KEY) for _ in rpc.pool]  # both devices in use by someone else
    try:
        error = raises_quickly(5, run_rpc, tiny.artifact_path, tiny.inputs, rpc.pool_spec, timeout=1.0)
        assert str(error).startswith(f"RPC device {KEY!r} from tracker {rpc.tracker.address}: no free device")
        assert f"2 server(s) registered with key {KEY!r}, 0 free" in str(error)
    finally:
        del held[:]
        gc.collect()
    rpc.farm.wait_free(rpc.tracker, KEY, deadline=time.monotonic() + 10)
    assert_same_outputs(run_rpc(tiny.artifact_path, tiny.inputs, rpc.pool_spec), tiny)


def test_wrong_input_shape_names_the_device_and_the_parameter(rpc: Rpc, tiny: Deployment) -> None:
    wrong = {"x": np.zeros((1, 3, 8, 8), "float32")}
    error = raises_quickly(10, run_rpc, tiny.artifact_path, wrong, rpc.server.address)
    assert str(error).startswith(f"RPC server {rpc.server.address}: running main(x) failed on the remote:")
    assert "param=x" in str(error) and "shape[2] mismatch" in str(error)
    assert_same_outputs(run_rpc(tiny.artifact_path, tiny.inputs, rpc.server.address), tiny)


@needs_tracker
def test_remote_error_through_the_tracker_releases_the_device(rpc: Rpc, tiny: Deployment) -> None:
    wrong = {"x": np.zeros((1, 3, 8, 8), "float32")}
    error = raises_quickly(10, run_rpc, tiny.artifact_path, wrong, rpc.pool_spec)
    assert f"RPC device {KEY!r} from tracker {rpc.tracker.address} (server 127.0.0.1:" in str(error)
    assert "param=x" in str(error)
    rpc.farm.wait_free(rpc.tracker, KEY, deadline=time.monotonic() + 3)


def _when_running(server: RpcProcess, action: Callable[[], None]) -> threading.Thread:
    """Call ``action`` shortly after ``server`` has loaded a module (the run is then in main)."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while "load_module" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_server_killed_mid_run(rpc: Rpc, tiny: Deployment) -> None:
    victim = rpc.to_kill
    killer = _when_running(victim, victim.kill)
    error = raises_quickly(15, run_rpc, tiny.artifact_path, tiny.inputs, victim.address, repeat=ENDLESS, timeout=30)
    killer.join(5)
    assert not victim.alive()
    assert str(error).startswith(f"RPC server {victim.address}: connection lost while running main(x)")
    # this process goes on: other devices still work
    assert_same_outputs(run_rpc(tiny.artifact_path, tiny.inputs, rpc.server.address), tiny)


def test_frozen_server_times_out_instead_of_hanging(rpc: Rpc, tiny: Deployment) -> None:
    victim = rpc.to_freeze
    freezer = _when_running(victim, lambda: victim.signal_group(signal.SIGSTOP))
    start = time.monotonic()
    with pytest.raises(RunnerError) as info:
        run_rpc(tiny.artifact_path, tiny.inputs, victim.address, repeat=ENDLESS, timeout=2)
    assert 1.5 < time.monotonic() - start < 9
    freezer.join(5)
    assert str(info.value).startswith(f"RPC server {victim.address}: timed out while running main(x)")
    # a frozen server accepts TCP connections (the kernel does) but never answers the handshake
    error = raises_quickly(5, run_rpc, tiny.artifact_path, tiny.inputs, victim.address, timeout=1)
    assert "did not answer the RPC handshake" in str(error)
    victim.kill()
    assert_same_outputs(run_rpc(tiny.artifact_path, tiny.inputs, rpc.server.address), tiny)

