"""The pytest side of the sandbox worker: TVM work runs in a child process, so a crash, a hang or
a memory blow-up in TVM fails one deployment with the stage it happened in, never the session.

A :class:`Sandbox` keeps one worker up across deployments (TVM and torch imported once) and
starts a fresh one after a failure. Example::

    with Sandbox(timeout=600, memory_limit=8 << 30, log_dir=Path("logs")) as sandbox:
        outcome = sandbox.run(Job(TVM_SIDE, {"job": job, "config": config}, reports_progress=True))
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.deployment.worker import ANSWER_FILE, JOB_FILE, Job
from pytest_tvmdeploy.errors import ConfigError, SandboxError, TvmDeployError

#: Default limit of one stage (import, quantize, tune, build, run, localize), in seconds: an
#: untuned vit_b_16 imports, builds and runs within it on two cores.
DEFAULT_TIMEOUT = 1800.0
#: What the worker's first import of TVM and torch may take.
START_TIMEOUT = 300.0
#: Lines of the worker's stderr a crash report shows.
STDERR_LINES = 25
#: Stage names as progress reports them → as crash reports name them.
STAGE_NAMES = {"compile": "build", "cpp": "run"}


class Sandbox:
    """One worker process at a time; :meth:`run` hands it a job and waits for its answer."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, memory_limit: int | None = None,
                 log_dir: Path | None = None, setup: tuple[str, ...] = ()) -> None:
        self.timeout, self.memory_limit, self.setup = timeout, memory_limit, tuple(setup)
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="tvmdeploy-sandbox-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._events: _EventReader | None = None
        self._log: Path | None = None
        self._ready = False
        self.started = 0  # workers started so far (one more after every crash)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, job: Job, progress: Callable[[str], None] | None = None) -> Any:
        """The job's answer; a :class:`TvmDeployError` the worker raised is raised here, and a
        dead, hung or oversized worker becomes a :class:`SandboxError` naming stage and cause."""
        self._ensure_worker()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.log_dir))
        (folder / JOB_FILE).write_bytes(pickle.dumps(job))
        log_start = self._log.stat().st_size if self._log is not None and self._log.exists() else 0
        stage = job.stage
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(f"{folder}\n".encode())
        self._process.stdin.flush()
        while True:
            try:
                event = self._next_event(stage, log_start)
            except SandboxError as exc:
                exc.job = job  # what the reproducer needs to run it again
                raise
            if "alive" in event:  # a long stage (tuning) that is still making progress
                continue
            if "stage" in event:
                stage = STAGE_NAMES.get(event["stage"], event["stage"])
                if progress is not None:
                    progress(event["stage"])
                continue
            answer = pickle.loads((folder / ANSWER_FILE).read_bytes())
            shutil.rmtree(folder, ignore_errors=True)  # kept only when the worker died on it
            for category, message in answer.warnings:  # issued here as if TVM ran in this process
                warnings.warn(message, _warning_class(category), stacklevel=2)
            if isinstance(answer.value, TvmDeployError):
                over = self._over_limit(answer.value, stage)
                if over is not None:
                    over.job = job
                    raise over
                raise answer.value
            return answer.value

    def _next_event(self, stage: str, log_start: int) -> dict[str, Any]:
        """The worker's next event, or the reason it will send none."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise SandboxError(f"TVM worker timed out in stage {stage} after {self.timeout:g} s "
                                   f"(--tvm-timeout); it was killed", stage=stage, cause="timeout",
                                   stderr=self._stderr_tail(log_start))
            line = self._events.next_line(min(left, 0.5))
            if line is _EventReader.CLOSED:
                raise self._death(stage, log_start)
            if line is not None:
                return json.loads(line)
            if self._process is not None and self._process.poll() is not None and not self._events.pending():
                raise self._death(stage, log_start)

    def _death(self, stage: str, log_start: int) -> SandboxError:
        """What a worker that stopped answering died of."""
        assert self._process is not None
        code = self._process.wait()
        self._process = None
        tail = self._stderr_tail(log_start)
        if code < 0:
            name = signal.Signals(-code).name
            what = f"killed by {name}"
            if -code == signal.SIGKILL:
                what += " (by the out-of-memory killer or another process)"
        else:
            name, what = f"exit code {code}", f"exited with code {code}"
        if self.memory_limit is not None and _out_of_memory(tail):
            what += f"; it ran out of its memory limit ({_size_text(self.memory_limit)}, --tvm-memory-limit)"
        return SandboxError(f"TVM worker crashed in stage {stage}: {what}", stage=stage, cause=name, stderr=tail)

    def _over_limit(self, error: TvmDeployError, stage: str) -> SandboxError | None:
        """An allocation the memory limit refused, told as such (TVM reports it as an error)."""
        if self.memory_limit is None or not _out_of_memory(str(error)):
            return None
        return SandboxError(f"TVM worker ran out of its memory limit ({_size_text(self.memory_limit)}, "
                            f"--tvm-memory-limit) in stage {stage}: {error}", stage=stage, cause="memory-limit")

    def start(self) -> None:
        """Start a worker now, without waiting for it: it imports TVM while the caller works on."""
        if self._process is None or self._process.poll() is not None:
            self._spawn()

    def _ensure_worker(self) -> None:
        self.start()
        if not self._ready:
            self._wait_ready()

    def _spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        self.started += 1
        self._log = self.log_dir / f"worker-{self.started}.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", "from pytest_tvmdeploy.deployment.worker import main; main()", *self.setup,
                 str(write_fd)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                preexec_fn=self._limit_memory if self.memory_limit is not None else None,
            )
        os.close(write_fd)
        if self._events is not None:
            self._events.close()
        self._events = _EventReader(read_fd)
        self._ready = False

    def _wait_ready(self) -> None:
        saved, self.timeout = self.timeout, START_TIMEOUT
        try:
            event = self._next_event("start", 0)
        finally:
            self.timeout = saved
        if "setup_failed" in event:
            self._kill()
            raise ConfigError(event["setup_failed"])
        if "ready" not in event:
            raise SandboxError(f"TVM worker did not start: {event}", stage="start", cause="start")
        self._ready = True

    def _limit_memory(self) -> None:
        """In the child, before it runs Python: cap the heap (RLIMIT_DATA counts what a process
        allocates, not the address space torch's libraries reserve)."""
        import resource

        assert self.memory_limit is not None
        resource.setrlimit(resource.RLIMIT_DATA, (self.memory_limit, self.memory_limit))

    def _stderr_tail(self, start: int) -> str:
        if self._log is None or not self._log.exists():
            return ""
        with self._log.open("rb") as log:
            log.seek(start)
            lines = log.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-STDERR_LINES:])

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stop the worker (the next :meth:`run` starts a new one). Between jobs it holds nothing
        worth a graceful exit, and tearing TVM and torch down takes most of a second."""
        self._kill()


class _EventReader:
    """Lines from the worker's event pipe, read with a timeout. Reads the descriptor itself:
    a buffered file would hold a second line that ``select`` can no longer see."""

    CLOSED = object()

    def __init__(self, fd: int) -> None:
        self.fd, self._buffer = fd, b""

    def pending(self) -> bool:
        return b"\n" in self._buffer

    def next_line(self, timeout: float) -> Any:
        """The next whole line, ``None`` after ``timeout`` seconds without one, or ``CLOSED``."""
        if not self.pending():
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return self.CLOSED
            self._buffer += chunk
            if not self.pending():
                return None
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        os.close(self.fd)


def _warning_class(name: str) -> type[Warning]:
    found = getattr(builtins, name, None)
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


def _out_of_memory(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in ("bad_alloc", "out of memory", "cannot allocate memory", "memoryerror"))


def _size_text(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g}{unit}"
    return f"{size} bytes"
