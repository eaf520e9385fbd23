"""The processes that build and time candidates on this machine, started once per process.

A tuning run needs a pool of build processes and a process that times candidates, and each of
them imports TVM as it starts (~25 s of CPU for the three on two cores, more than a small run's
search). A process that tunes again (the sandbox worker over a test session, a script tuning
model after model) keeps them for its later runs: they hold nothing of a run (a build gets its
output folder with each job; the timing process loads a candidate, times it and unloads it), a
worker that dies or times out is restarted on its next job, and they end with this process (their
pipe closes) or at its exit.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from tvm.support.popen_pool import PopenPoolExecutor

from pytest_tvmdeploy.threads import BIND_VARIABLE, FALLBACK_VARIABLE, VARIABLE

_BUILD_POOLS: dict[tuple[int, float, int], PopenPoolExecutor] = {}
_RUNNERS: dict[tuple[Any, float, tuple[str | None, ...]], Any] = {}


def build_pool(max_workers: int, timeout_seconds: float, uses_per_worker: int) -> PopenPoolExecutor:
    """This process's pool of ``max_workers`` build processes, started (and importing TVM) now on
    first use, while the search for the first batch runs."""
    key = (max_workers, timeout_seconds, uses_per_worker)
    if key not in _BUILD_POOLS:
        pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_seconds,
                                 maximum_process_uses=uses_per_worker)
        for _ in range(max_workers):
            pool.submit(bool)  # a job that only starts a worker
        _BUILD_POOLS[key] = pool
    return _BUILD_POOLS[key]


def local_runner(evaluator: Any, timeout_seconds: float) -> Any:
    """MetaSchedule's ``LocalRunner`` timing candidates as ``evaluator`` says, with the thread
    settings in force now (its process inherits them as it starts, so other settings get another)."""
    from tvm.s_tir import meta_schedule as ms

    key = (evaluator, timeout_seconds, tuple(os.environ.get(name) for name in (VARIABLE, FALLBACK_VARIABLE,
                                                                                BIND_VARIABLE)))
    if key not in _RUNNERS:
        _RUNNERS[key] = ms.runner.LocalRunner(timeout_sec=timeout_seconds, evaluator_config=evaluator)
    return _RUNNERS[key]


@atexit.register
def close_local_workers() -> None:
    """Stop every build and timing process this process started."""
    for pool in (*_BUILD_POOLS.values(), *(runner.pool for runner in _RUNNERS.values())):
        pool.shutdown(wait=False)
    _BUILD_POOLS.clear()
    _RUNNERS.clear()
