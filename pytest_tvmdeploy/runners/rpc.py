"""Run an exported ``.so`` in a Relax VM on a remote device over TVM RPC.

The device is a single RPC server or one leased from a tracker's pool (see
:mod:`pytest_tvmdeploy.runners.rpc_devices`); it is held for this one run only. The
``.so`` is uploaded, loaded and run remotely; ``main``'s calls are timed on the remote by
``time_evaluator`` (network excluded); outputs are copied back as numpy arrays.

Every wait is bounded by ``timeout``: the tracker request and handshakes use socket
timeouts, the server is told to end the session shortly after the deadline, and a watchdog
closes this process's connections to the server if the deadline passes, so a frozen server or
a dropped network becomes a :class:`RunnerError` instead of a hang.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import RunnerError, brief
from pytest_tvmdeploy.outputs import RunResult
from pytest_tvmdeploy.runners.rpc_devices import (
    RPC_TIMEOUT,
    Lease,
    RemoteSpec,
    lease_device,
    parse_remote,
    probe_server,
)
from pytest_tvmdeploy.vm import relax_vm, tvm_tensors

RUNNER_PREFIX = "rpc"
DEFAULT_TIMEOUT = RPC_TIMEOUT
CONNECT_TIMEOUT = 10.0

#: How long after our deadline the server ends the session on its own (frees a device whose
#: client vanished); later than the watchdog, whose message says more.
_SERVER_GRACE = 5.0
#: How long the watchdog waits for the run to unwind after closing its connections.
_ABORT_GRACE = 5.0
_CONNECTION_LOST = re.compile(
    r"kShutdown|connection (?:reset|closed|refused)|broken pipe|socket|end of file|EOF|RPCSessionTimeout",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RpcRunResult(RunResult):
    """A :class:`RunResult` that also says which server ran the module (``HOST:PORT``)."""

    server: str = ""


def run_rpc(
    module_path: Path,
    inputs: Mapping[str, np.ndarray],
    remote: RemoteSpec | str,
    *,
    repeat: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> RpcRunResult:
    """Run ``module_path``'s ``main`` on ``remote`` (a :class:`RemoteSpec` or ``"HOST:PORT"``).

    Inputs are passed positionally in the mapping's order; outputs are flattened and named
    ``output_0``, ``output_1``, ... ``call_seconds`` holds ``repeat`` remote timings of
    ``main`` (after one untimed warm-up call); ``load_seconds`` is upload + load + VM creation.
    ``timeout`` bounds the whole run, waiting for a free device included; ``connect_timeout``
    bounds each TCP connect. Any failure raises :class:`RunnerError` naming the device.
    Example::

        spec = parse_remote(tracker="10.0.0.2:9190", key="rasp4")
        result = run_rpc(Path("model.so"), {"x": x}, spec, repeat=10)
        result.outputs["output_0"], result.median_call_seconds, result.server  # "10.0.0.7:9090"
    """
    spec = parse_remote(remote) if isinstance(remote, str) else remote
    module_path = Path(module_path).resolve()
    if repeat < 1:
        raise RunnerError(f"run_rpc: repeat must be >= 1, got {repeat}")
    if not module_path.is_file():
        raise RunnerError(f"{spec.describe()}: module {module_path} not found")
    deadline = time.monotonic() + timeout
    connect_timeout = min(connect_timeout, timeout)
    lease = lease_device(spec, deadline=deadline, connect_timeout=connect_timeout)
    where = spec.describe() + (f" (server {lease.address})" if spec.tracker else "")
    probe_server(lease, where=where, deadline=deadline, connect_timeout=connect_timeout)
    session = _RemoteSession(module_path, inputs, lease, repeat, session_timeout=_session_timeout(deadline))
    _run_before(session.run, lease, deadline, where, session)
    if session.failure is not None:
        raise RunnerError(f"{where}: {session.failure}")
    return RpcRunResult(
        runner_name(spec),
        {f"output_{i}": a for i, a in enumerate(session.outputs)},
        load_seconds=session.load_seconds,
        call_seconds=session.call_seconds,
        server=lease.address,
    )


@dataclass
class _RemoteSession:
    """One RPC session's work; run in a worker thread, it keeps only numpy arrays and text.

    No remote handle outlives :meth:`run` (not even through a traceback), so the session
    closes - and a leased device goes back to its pool - as soon as the run ends.
    """

    module_path: Path
    inputs: Mapping[str, np.ndarray]
    lease: Lease
    repeat: int
    session_timeout: float
    stage: str = "connecting"
    outputs: list[np.ndarray] = field(default_factory=list)
    load_seconds: float = 0.0
    call_seconds: tuple[float, ...] = ()
    failure: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - every remote failure becomes a message
            self.failure = _explain(self.stage, exc)

    def _run(self) -> None:
        from tvm import rpc

        remote = rpc.connect(
            self.lease.host, self.lease.port, key=self.lease.match_key, session_timeout=self.session_timeout
        )
        self.stage = "uploading the module"
        start = time.perf_counter()
        remote.upload(str(self.module_path), self.module_path.name)
        self.stage = "loading the module"
        device = remote.cpu()
        vm = relax_vm(remote.load_module(self.module_path.name), device)
        self.load_seconds = time.perf_counter() - start
        self.stage = "sending the inputs"
        # set_input + invoke_stateful: calling main directly returns tuples as opaque handles
        vm.set_input("main", *tvm_tensors(self.inputs.values(), device))
        self.stage = f"running main({', '.join(self.inputs)})"
        timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=self.repeat)
        self.call_seconds = tuple(float(s) for s in timer("main").results)
        self.stage = "fetching the outputs"
        self.outputs = _fetch_outputs(vm.module["get_output_arity"], vm.module["get_output"])
        self.stage = "closing the session"


def _fetch_outputs(arity: Callable[..., int], output: Callable[..., Any],
                   index: tuple[int, ...] = ()) -> list[np.ndarray]:
    """``main``'s last outputs as numpy arrays, nested tuples flattened depth-first.

    Like ``VirtualMachine.get_outputs`` but without its self-referencing closure: that cycle
    keeps the VM, hence the session and the leased device, alive until the next GC pass.
    """
    count = arity("main", *index)
    if count == -1:
        return [output("main", *index).numpy()]
    return [array for i in range(count) for array in _fetch_outputs(arity, output, (*index, i))]


def _explain(stage: str, exc: BaseException) -> str:
    """Why a stage failed, in one line: TVM's own message, and whether the link was lost."""
    text = brief(exc).removeprefix("RPCError: ").removeprefix("Error caught from RPC call: ")
    if "RPCSessionTimeoutError" in str(exc):
        return f"the server ended the session at its timeout while {stage}: {text}"
    if type(exc).__name__ != "RPCError" and _CONNECTION_LOST.search(str(exc)):
        return (f"connection lost while {stage} (the server process stopped or the network "
                f"dropped): {text}")
    if type(exc).__name__ == "RPCError":
        return f"{stage} failed on the remote: {text}"
    return f"{stage} failed: {text}"


def _session_timeout(deadline: float) -> float:
    """The session length the server enforces: our deadline plus a grace, whole seconds."""
    return float(math.ceil(max(1.0, deadline - time.monotonic()) + _SERVER_GRACE))


def _run_before(work: Callable[[], None], lease: Lease, deadline: float, where: str, session: _RemoteSession) -> None:
    """Run ``work`` in a thread; at ``deadline`` close our connections to the server and raise.

    TVM's RPC client blocks in socket calls without a timeout (with the GIL released), so the
    watchdog is this thread: shutting the sockets down makes the blocked call fail.
    """
    before = _connections_to(lease)
    worker = threading.Thread(target=work, name=f"tvm-rpc {lease.address}", daemon=True)
    worker.start()
    aborted = False
    try:
        worker.join(max(0.0, deadline - time.monotonic()))
    finally:
        if worker.is_alive():  # deadline passed, or KeyboardInterrupt while waiting
            aborted = True
            _shutdown(_connections_to(lease) - before, lease.port)
            worker.join(_ABORT_GRACE)
    if aborted:
        stuck = "; the RPC call is still blocked, its thread is left behind" if worker.is_alive() else ""
        raise RunnerError(f"{where}: timed out while {session.stage} (no answer before the deadline; "
                          f"connection closed{stuck})")


def _connections_to(lease: Lease) -> set[int]:
    """File descriptors of this process's TCP connections to the leased server."""
    import psutil

    try:
        peers = {info[4][0] for info in socket.getaddrinfo(lease.host, lease.port, proto=socket.IPPROTO_TCP)}
        connections = psutil.Process().net_connections(kind="tcp")
    except (OSError, psutil.Error):
        return set()
    return {c.fd for c in connections if c.fd >= 0 and c.raddr and c.raddr.port == lease.port and c.raddr.ip in peers}


def _shutdown(fds: set[int], port: int) -> None:
    """Shut the sockets down (not close: the fds still belong to TVM's client)."""
    for fd in fds:
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.getpeername()[1] == port:  # still the same connection
                    sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def runner_name(spec: RemoteSpec) -> str:
    """The ``runner`` of a run on ``spec``: ``rpc:HOST:PORT``, or ``rpc:KEY@TRACKER`` for a pool."""
    return f"{RUNNER_PREFIX}:{spec.label}"


__all__ = ["DEFAULT_TIMEOUT", "RUNNER_PREFIX", "RemoteSpec", "RpcRunResult", "parse_remote", "run_rpc", "runner_name"]
