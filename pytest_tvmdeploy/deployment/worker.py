"""The sandbox worker: a child process that does everything that touches TVM for the pytest
process — frontend import, quantization, tuning, build, the Relax VM run, localisation builds.

Started by :class:`~pytest_tvmdeploy.deployment.sandbox.Sandbox` with the number of its event
pipe's descriptor as last argument. It reads one job folder per line on stdin (a
pickled :class:`Job`), reports each stage it enters and then ``done`` or ``failed`` as JSON lines
on the events descriptor (stdout and stderr stay free for TVM's own output), and writes its
answer as ``answer.pkl`` into the job folder. A crash takes down only this process.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import json
import os
import pickle
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import ConfigError, TvmDeployError

JOB_FILE = "job.pkl"
ANSWER_FILE = "answer.pkl"


@dataclass(frozen=True)
class Job:
    """One piece of TVM work: the function ``module:name`` called with ``payload`` as keyword
    arguments; with ``reports_progress`` it also gets ``phase`` and ``heartbeat`` callbacks."""

    function: str
    payload: dict[str, Any]
    reports_progress: bool = False

    @property
    def stage(self) -> str:
        """The stage a job starts in, as crash reports name it."""
        return "import" if self.reports_progress else self.function.rsplit(":", 1)[-1].split("_")[0]


@dataclass(frozen=True)
class Answer:
    """A job's result (or the error it raised) and the warnings it issued on the way."""

    value: Any
    warnings: tuple[tuple[str, str], ...] = ()  # (category name, message)


class Events:
    """JSON lines to the parent on a descriptor of its own."""

    def __init__(self, fd: int) -> None:
        self._out = os.fdopen(fd, "w", buffering=1)

    def send(self, **event: Any) -> None:
        self._out.write(json.dumps(event) + "\n")
        self._out.flush()


def run_job(job: Job, events: Events) -> Any:
    """Do ``job``; stage names go to the parent as they start."""
    module, _, name = job.function.partition(":")
    function = getattr(importlib.import_module(module), name)
    extra = {"phase": lambda stage: events.send(stage=stage), "heartbeat": lambda line: events.send(alive=line)}
    return function(**job.payload, **(extra if job.reports_progress else {}))


def serve(events: Events) -> None:
    """Answer jobs until stdin closes."""
    events.send(ready=os.getpid())
    for line in sys.stdin:
        folder = Path(line.strip())
        job = pickle.loads((folder / JOB_FILE).read_bytes())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = _outcome(job, events)
        issued = tuple((w.category.__name__, str(w.message)) for w in caught)
        _answer(folder, Answer(value, issued))
        events.send(done=not isinstance(value, TvmDeployError))


def _outcome(job: Job, events: Events) -> Any:
    """The job's result, or the error it raised as a :class:`TvmDeployError` (the worker lives on)."""
    try:
        return run_job(job, events)
    except TvmDeployError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - any other failure is reported too
        return TvmDeployError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")


def _answer(folder: Path, answer: Answer) -> None:
    temporary = folder / f".{ANSWER_FILE}.tmp"
    temporary.write_bytes(pickle.dumps(answer))
    os.replace(temporary, folder / ANSWER_FILE)


def _import_everything() -> None:
    """Pay TVM's and torch's import once, before the first job. The collector stays off meanwhile
    (the imports make hundreds of thousands of objects and free none: its passes cost ~0.4 s of
    the ~5 s) and then leaves what they made out of its later passes."""
    gc.disable()
    try:
        import torch  # noqa: F401
        import tvm  # noqa: F401
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401
        from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
    finally:
        gc.enable()
    gc.freeze()
    np.zeros(1)
    faulthandler.enable()  # after TVM, which installs its own SIGSEGV handler: Python's stack on a crash


def import_setup(modules: tuple[str, ...] | list[str]) -> None:
    """Import the user's setup modules (``--tvm-setup``): custom converters, TVM functions, passes."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is reported, naming it
            raise ConfigError(f"--tvm-setup module {name!r} failed to import: {type(exc).__name__}: {exc}\n"
                              f"{traceback.format_exc(limit=6)}") from exc


def main() -> None:
    """``python -c ... [SETUP_MODULE ...] EVENTS_FD``."""
    events = Events(int(sys.argv[-1]))
    _import_everything()
    try:
        import_setup(sys.argv[1:-1])
    except ConfigError as exc:
        events.send(setup_failed=str(exc))
        sys.exit(2)
    serve(events)


if __name__ == "__main__":
    main()
