"""Measure tuning candidates on RPC devices: MetaSchedule's RPC runner with our sessions.

:func:`rpc_measurement` is what ``tune(remote=...)`` takes. Each measurement opens its session
the way a deployment's run does (:mod:`~pytest_tvmdeploy.runners.rpc_devices`):
a device leased from the tracker's pool by key, with a deadline, or the one server connected
directly. The session ends with the measurement, so the device goes back to its pool at once;
with a tracker, the runner keeps as many measurements under way as the pool has servers.
Candidates reach the device as shared libraries linked on this machine (see ``pool_builder``),
so the device needs no compiler: a target that is not this machine is built here, measured there.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.errors import RunnerError
from pytest_tvmdeploy.runners.rpc_devices import (
    RPC_TIMEOUT,
    Lease,
    RemoteSpec,
    lease_device,
    pool_status,
    probe_server,
    tracker_summary,
)
from pytest_tvmdeploy.tuning.session import RemoteMeasurement

if TYPE_CHECKING:
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RPCRunner

#: Seconds for each TCP connect to a tracker or server.
CONNECT_TIMEOUT = 10.0


def rpc_measurement(spec: RemoteSpec, *, lease_timeout: float = RPC_TIMEOUT,
                    cc: str | None = None) -> RemoteMeasurement:
    """Tuning measured on ``spec``'s devices: each candidate may wait ``lease_timeout`` seconds for
    a free device; candidates are linked here with ``cc`` (``None``: the host's compiler)."""
    return RemoteMeasurement(functools.partial(_measuring_runner, spec, lease_timeout), cc)


def _measuring_runner(spec: RemoteSpec, lease_timeout: float, evaluator: EvaluatorConfig, run_timeout: float,
                      say: Callable[[str], None]) -> RPCRunner:
    """The runner of :func:`rpc_measurement`, after checking the devices answer (said once)."""
    devices = device_count(spec)
    say(f"measuring candidates on {spec.describe()}, {devices} at a time")
    return remote_runner(spec, evaluator, devices=devices, run_timeout=run_timeout, lease_timeout=lease_timeout)


def remote_runner(spec: RemoteSpec, evaluator: EvaluatorConfig, *, devices: int, run_timeout: float,
                  lease_timeout: float) -> RPCRunner:
    """A MetaSchedule runner measuring on ``spec``'s devices, up to ``devices`` at once (see
    :func:`device_count`).

    ``run_timeout`` bounds one measurement once a device is held; ``lease_timeout`` how long a
    measurement may wait for a free device.
    """
    from tvm.s_tir.meta_schedule.runner import RPCConfig, RPCRunner

    # RPCConfig insists on tracker fields even when sessions are opened by our own function.
    config = RPCConfig(tracker_host=spec.host, tracker_port=spec.port, tracker_key=spec.key or "server",
                       session_timeout_sec=int(lease_timeout + run_timeout))
    return RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=devices,
                     f_create_session=session_opener(spec, lease_timeout=lease_timeout, run_timeout=run_timeout))


def device_count(spec: RemoteSpec) -> int:
    """How many devices can measure at once: the servers registered under the key, or 1 for a
    server given directly (checked to answer TVM's handshake). Raises :class:`RunnerError`
    naming the device when the server does not answer or no server is under the key."""
    where = spec.describe()
    if not spec.tracker:
        probe_server(Lease(spec.host, spec.port, spec.key), where=where,
                     deadline=time.monotonic() + CONNECT_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
        return 1
    summary = tracker_summary(spec.host, spec.port, timeout=CONNECT_TIMEOUT)
    servers = [s for s in summary.get("server_info", []) if s.get("key") == f"server:{spec.key}"]
    if not servers:
        raise RunnerError(f"{where}: cannot tune there, {pool_status(spec, CONNECT_TIMEOUT)}")
    return len(servers)


def session_opener(spec: RemoteSpec, *, lease_timeout: float, run_timeout: float) -> Callable[[Any], Any]:
    """The runner's ``f_create_session``: a picklable call of :func:`open_session`."""
    return functools.partial(open_session, spec, lease_timeout=lease_timeout, run_timeout=run_timeout)


def open_session(spec: RemoteSpec, rpc_config: Any, *, lease_timeout: float, run_timeout: float) -> Any:
    """An RPC session on a device of ``spec`` (run in the runner's worker processes).

    ``rpc_config`` is MetaSchedule's, unused: where to go is ``spec``. The server ends the
    session after ``run_timeout`` seconds, so a candidate that hangs frees its device.
    """
    from tvm import rpc

    del rpc_config
    lease = lease_device(spec, deadline=time.monotonic() + lease_timeout, connect_timeout=CONNECT_TIMEOUT)
    return rpc.connect(lease.host, lease.port, key=lease.match_key, session_timeout=run_timeout)


__all__ = ["device_count", "open_session", "remote_runner", "rpc_measurement"]
