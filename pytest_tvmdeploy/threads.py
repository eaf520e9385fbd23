"""How many threads TVM's CPU runtime runs a deployed model with.

TVM sizes its thread pool from ``TVM_NUM_THREADS`` (else ``OMP_NUM_THREADS``), and without
either takes half the hardware threads on x86 to skip hyper-threads: one thread on a 2-vCPU
machine, while ONNX Runtime and PyTorch use both cores. It also pins the calling thread to
CPU 0 (``TVM_BIND_THREADS``), and every process started afterwards inherits that mask: two
pytest-xdist workers, or MetaSchedule's build workers, then share one core. The pool is made on
the first parallel kernel and the environment reaches every child process (the sandbox, the C++
runner, MetaSchedule's measurement workers), so both variables are set once, before any model
runs, and only where nobody set them: a user's own values always win.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

VARIABLE = "TVM_NUM_THREADS"
FALLBACK_VARIABLE = "OMP_NUM_THREADS"
BIND_VARIABLE = "TVM_BIND_THREADS"


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(processes: int = 1) -> int:
    """The thread count each of ``processes`` processes sharing this machine should use."""
    return max(1, available_cores() // max(1, processes))


def configure_threads(
    threads: int | None = None, *, processes: int = 1, environ: MutableMapping[str, str] | None = None,
) -> int:
    """Set ``TVM_NUM_THREADS`` unless the environment already says; return the count in force.

    ``threads`` is an explicit choice (it overrides the environment); without it the cores are
    shared evenly among ``processes`` (pytest-xdist workers). Thread pinning is turned off
    unless the environment asks for it.
    """
    environ = os.environ if environ is None else environ
    if threads is not None:
        if threads < 1:
            raise ValueError(f"{VARIABLE} must be at least 1, not {threads}")
        environ[VARIABLE] = str(threads)
    elif not environ.get(VARIABLE) and not environ.get(FALLBACK_VARIABLE):
        environ[VARIABLE] = str(default_threads(processes))
    environ.setdefault(BIND_VARIABLE, "0")
    return runtime_threads(environ)


def runtime_threads(environ: MutableMapping[str, str] | None = None) -> int:
    """The thread count TVM's runtime takes from the environment (as its threading backend reads it)."""
    environ = os.environ if environ is None else environ
    for name in (VARIABLE, FALLBACK_VARIABLE):
        if name in environ:
            text = environ[name].strip()
            return max(1, int(text)) if text.isdigit() else 1  # TVM reads it with atoi
    return max(1, (os.cpu_count() or 2) // 2)
