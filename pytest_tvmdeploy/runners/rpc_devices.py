"""Where an RPC run goes: a TVM RPC server, or a device leased from a tracker's pool by key.

Everything here speaks TVM's RPC handshake and tracker protocol (``tvm/rpc/base.py``,
``tvm/rpc/tracker.py``) over plain sockets with timeouts: TVM's own tracker client retries a
refused connection for 60 s and waits for a free device forever. Importing this module does
not import TVM.

Leasing: the tracker keeps, per key, a queue of free servers. A request takes one server out of
the queue and returns its address plus a one-time match key; the server is back in the queue
only when the session opened with that key ends (it re-registers as soon as it accepts
connections again). ``run_rpc`` holds a device for one run: from the grant until its session
closes, when it returns or fails. So concurrent callers (threads, processes, xdist workers,
machines) get different servers, and a caller finding none free waits, first come first served,
until its deadline. A grant nobody uses (the caller died between grant and connect, or gave up
at the very moment a server freed) keeps that server out of the queue for ~8 s, until the
server notices and re-registers with a new match key.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pytest_tvmdeploy.errors import ConfigError, RunnerError

# Protocol constants, as in tvm/rpc/base.py (tests check they still match).
#: Default limit of one remote run, waiting for a free device included (seconds).
RPC_TIMEOUT = 600.0
RPC_MAGIC = 0xFF271
RPC_TRACKER_MAGIC = 0x2F271
RPC_CODE_SUCCESS = RPC_MAGIC + 0
RPC_CODE_MISMATCH = RPC_MAGIC + 2
TRACKER_SUCCESS = 0
TRACKER_REQUEST = 4
TRACKER_SUMMARY = 6

#: The client key of the reachability probe: no server matches it, so it answers MISMATCH.
PROBE_KEY = "client:pytest-tvmdeploy-probe"
_MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class RemoteSpec:
    """Where to run: one RPC server (``tracker=False``) or a tracker and a device key.

    ``key`` is the device key for a tracker; for a single server it is the ``--key`` the
    server was started with (usually empty).

    >>> parse_remote("127.0.0.1:9090").label
    '127.0.0.1:9090'
    >>> parse_remote(tracker="127.0.0.1:9190", key="rasp4").label
    'rasp4@127.0.0.1:9190'
    """

    host: str
    port: int
    key: str = ""
    tracker: bool = False

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    @property
    def label(self) -> str:
        """Short, stable name: ``HOST:PORT`` for a server, ``KEY@TRACKER`` for a tracker pool."""
        return f"{self.key}@{self.address}" if self.tracker else self.address

    def describe(self) -> str:
        """How error messages name the device."""
        if self.tracker:
            return f"RPC device {self.key!r} from tracker {self.address}"
        return f"RPC server {self.address}"


@dataclass(frozen=True)
class Lease:
    """One server granted for one session, and the key its handshake expects."""

    host: str
    port: int
    match_key: str

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) → ``(host, port)``; :class:`ConfigError` otherwise."""
    stripped = text.strip()
    if stripped.startswith("["):
        host, sep, port_text = stripped[1:].partition("]:")
    else:
        host, sep, port_text = stripped.rpartition(":")
    if not sep or not host or ":" in host and not stripped.startswith("["):
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9090 ([ADDRESS]:PORT for IPv6)")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what} {text!r}: port {port_text!r} is not a number in 1-65535")
    return host, int(port_text)


def parse_remote(server: str | None = None, *, tracker: str | None = None, key: str | None = None) -> RemoteSpec:
    """A :class:`RemoteSpec` from a server ``HOST:PORT``, or a tracker ``HOST:PORT`` plus a key."""
    if (server is None) == (tracker is None):
        raise ConfigError("RPC: give either a server HOST:PORT or a tracker HOST:PORT with a key, not "
                          + ("both" if server is not None else "neither"))
    key = (key or "").strip()
    if any(ch.isspace() for ch in key):
        raise ConfigError(f"RPC key {key!r}: must not contain spaces")
    if tracker is not None:
        if not key:
            raise ConfigError(f"RPC tracker {tracker!r}: a device key is needed (the servers' --key)")
        return RemoteSpec(*parse_address(tracker, what="RPC tracker"), key=key, tracker=True)
    assert server is not None
    return RemoteSpec(*parse_address(server, what="RPC server"), key=key)


def lease_device(spec: RemoteSpec, *, deadline: float, connect_timeout: float) -> Lease:
    """The server to use: ``spec`` itself, or one the tracker grants before ``deadline``.

    ``deadline`` is a :func:`time.monotonic` value. Raises :class:`RunnerError` naming the
    tracker and key when the tracker is unreachable or no device frees up in time.
    """
    if not spec.tracker:
        return Lease(spec.host, spec.port, spec.key)
    where = spec.describe()
    start = time.monotonic()
    try:
        host, port, match_key = _ask_tracker(spec, [TRACKER_REQUEST, spec.key, "", 1], where=where,
                                             doing="waiting for a free device", deadline=deadline,
                                             connect_timeout=connect_timeout)
    except TimeoutError:  # the request's connection is closed: the summary no longer counts it
        raise RunnerError(
            f"{where}: no free device after waiting {time.monotonic() - start:.1f} s "
            f"({pool_status(spec, connect_timeout)})"
        ) from None
    return Lease(str(host), int(port), str(match_key))


def pool_status(spec: RemoteSpec, timeout: float) -> str:
    """What the tracker says about ``spec.key``'s pool, in words (for error messages)."""
    try:
        summary = tracker_summary(spec.host, spec.port, timeout=timeout)
    except (RunnerError, OSError) as exc:
        return f"could not read the tracker's summary: {exc}"
    servers = [s for s in summary.get("server_info", []) if s.get("key") == f"server:{spec.key}"]
    queue = summary.get("queue_info", {}).get(spec.key, {})
    if not servers:
        keys = sorted({str(s.get("key", "")).removeprefix("server:") for s in summary.get("server_info", [])})
        return f"no server is registered with key {spec.key!r}; keys registered: {', '.join(keys) or 'none'}"
    return (f"{len(servers)} server(s) registered with key {spec.key!r}, {queue.get('free', 0)} free, "
            f"{queue.get('pending', 0)} request(s) waiting, this one included")


def tracker_summary(host: str, port: int, *, timeout: float = 10.0) -> dict[str, Any]:
    """The tracker's summary: ``{"queue_info": {key: {"free", "pending"}}, "server_info": [...]}``."""
    spec = RemoteSpec(host, port, tracker=True)
    where = f"RPC tracker {spec.address}"
    try:
        return _ask_tracker(spec, [TRACKER_SUMMARY], where=where, doing="reading its summary",
                            deadline=time.monotonic() + timeout, connect_timeout=timeout)
    except TimeoutError:
        raise RunnerError(f"{where}: no summary within {timeout:g} s") from None


def _ask_tracker(spec: RemoteSpec, request: list[Any], *, where: str, doing: str, deadline: float,
                 connect_timeout: float) -> Any:
    """Send one request to the tracker and return its answer's payload.

    The connection is closed before this returns or raises; :class:`TimeoutError` when no
    answer came before ``deadline``, :class:`RunnerError` for a broken or odd answer.
    """
    sock = _open_tracker(spec, where, connect_timeout)
    try:
        _send_json(sock, request)
        reply = _recv_json(sock, deadline, where, doing)
    except TimeoutError:
        raise
    except OSError as exc:
        raise RunnerError(f"{where}: connection to the tracker broken while {doing}: {exc}") from None
    finally:
        sock.close()
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == TRACKER_SUCCESS):
        raise RunnerError(f"{where}: unexpected answer while {doing}: {reply!r}")
    return reply[1]


def probe_server(lease: Lease, *, where: str, deadline: float, connect_timeout: float) -> None:
    """Check the server answers TVM's RPC handshake (it rejects the probe's key and goes on).

    Waits for the answer until ``deadline``: a single server busy with another client answers
    only when that session ends. Raises :class:`RunnerError` naming ``where``.
    """
    sock = _connect(lease.host, lease.port, where, connect_timeout)
    try:
        key = PROBE_KEY.encode()
        sock.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key)
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        answer = _recv_exactly(sock, 4)
    except TimeoutError:
        raise RunnerError(
            f"{where}: server {lease.address} accepted the connection but did not answer the RPC "
            "handshake before the timeout (busy with another client for that long, or frozen)"
        ) from None
    except OSError as exc:
        raise RunnerError(f"{where}: {lease.address} broke off the RPC handshake ({exc}): "
                          "not a TVM RPC server (a tracker's port?)") from None
    finally:
        sock.close()
    if struct.unpack("<i", answer)[0] not in (RPC_CODE_MISMATCH, RPC_CODE_SUCCESS):
        raise RunnerError(f"{where}: {lease.address} is not a TVM RPC server ({_show(answer)})")


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect(host: str, port: int, where: str, timeout: float) -> socket.socket:
    """A TCP connection, or a :class:`RunnerError` saying why not (refused, unreachable, ...)."""
    address = _format_address(host, port)
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise RunnerError(f"{where}: connection to {address} refused (nothing listens there)") from None
    except socket.gaierror as exc:
        raise RunnerError(f"{where}: cannot resolve host {host!r}: {exc.strerror}") from None
    except TimeoutError:
        raise RunnerError(f"{where}: no TCP connection to {address} within {timeout:g} s "
                          "(host down or unreachable, or the port is filtered)") from None
    except OSError as exc:
        raise RunnerError(f"{where}: cannot connect to {address}: {exc.strerror or exc}") from None


def _open_tracker(spec: RemoteSpec, where: str, timeout: float) -> socket.socket:
    sock = _connect(spec.host, spec.port, where, timeout)
    try:
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        answer = _recv_exactly(sock, 4)
    except TimeoutError:
        sock.close()
        raise RunnerError(f"{where}: {spec.address} did not answer the tracker handshake "
                          f"within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise RunnerError(f"{where}: {spec.address} broke off the tracker handshake ({exc}): "
                          "not a TVM RPC tracker (an RPC server's port?)") from None
    if struct.unpack("<i", answer)[0] != RPC_TRACKER_MAGIC:
        sock.close()
        raise RunnerError(f"{where}: {spec.address} is not a TVM RPC tracker ({_show(answer)})")
    return sock


def _show(answer: bytes) -> str:
    """A handshake answer in words: printable bytes are likely another protocol (``HTTP``)."""
    if answer.isascii() and answer.decode().isprintable():
        return f"it answered {answer.decode()!r}..."
    return f"handshake answer {struct.unpack('<i', answer)[0]:#x}"


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, received = [], 0
    while received < size:
        chunk = sock.recv(size - received)
        if not chunk:
            raise ConnectionResetError("connection closed by the peer")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def _send_json(sock: socket.socket, value: Any) -> None:
    data = json.dumps(value).encode()
    sock.sendall(struct.pack("<i", len(data)) + data)


def _recv_json(sock: socket.socket, deadline: float, where: str, doing: str) -> Any:
    """One length-prefixed JSON message; :class:`TimeoutError` at ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(doing)
    sock.settimeout(remaining)
    try:
        size = struct.unpack("<i", _recv_exactly(sock, 4))[0]
        if not 0 < size <= _MAX_MESSAGE:
            raise RunnerError(f"{where}: bad message length {size} while {doing}")
        return json.loads(_recv_exactly(sock, size))
    except (ConnectionError, ValueError) as exc:
        raise RunnerError(f"{where}: connection broken while {doing}: {exc}") from None


__all__ = [
    "Lease",
    "RemoteSpec",
    "lease_device",
    "parse_address",
    "parse_remote",
    "pool_status",
    "probe_server",
    "tracker_summary",
]
