"""Schedules passed between tasks that compute the same anchor with different fused epilogues.

A network repeats its convolutions: ResNet's last stage runs one 3x3 512-channel conv three
times, once fused with a bias and ReLU, twice with the residual addition in between. Each fused
function is its own tuning task with its own share of the trials, and their searches end far
apart (15 minutes on resnet18: 1176 us with the addition, 1996 us without). After the search,
:func:`transfer_schedules` tries the best schedule of every task on each sibling task whose own
best is slower: TVM's ``schedule_using_anchor_trace`` replays the conv's part of the trace on the
sibling's conv (its *anchor block*, found by ``find_anchor_sblock``; siblings are tasks whose
anchor blocks are structurally equal) and inlines or parallelizes the rest. Each such candidate is
built and measured like any other and stored as a record of its task; a build then applies it
when it is that task's fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.tuning.selection import UNMEASURED_SECONDS

if TYPE_CHECKING:
    import tvm

    from pytest_tvmdeploy.tuning.tasks import Task

#: A sibling's schedule is tried on a task when its best record is at least this much faster.
MIN_GAIN = 0.03
#: At most this many siblings' schedules are tried per task (the fastest ones).
MAX_DONORS = 2


@dataclass(frozen=True)
class Transfer:
    """One sibling's schedule tried on a task: its mean run time (``None``: it failed to build or
    run) and the task's best before."""

    task: str
    donor: str
    seconds: float | None
    before: float | None

    @property
    def improved(self) -> bool:
        return self.seconds is not None and (self.before is None or self.seconds < self.before)


def anchor_key(task: Task) -> str | None:
    """The structural hash of the task's anchor block (``None``: it has none, or several)."""
    import tvm_ffi
    from tvm.s_tir.analysis import find_anchor_sblock

    try:
        block = find_anchor_sblock(task.extracted.dispatched[0])
    except Exception:  # noqa: BLE001 - a function TVM's analysis rejects simply has no siblings
        return None
    return None if block is None else str(tvm_ffi.structural_hash(block, map_free_vars=True))


def sibling_groups(tasks: list[Task]) -> list[list[Task]]:
    """The tasks that share an anchor block, in groups of two or more."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        key = anchor_key(task)
        if key is not None:
            groups.setdefault(key, []).append(task)
    return [group for group in groups.values() if len(group) > 1]


@dataclass(frozen=True)
class _Candidate:
    task: Task
    donor: str
    schedule: Any  # tvm.s_tir.Schedule
    before: float | None


def transfer_schedules(tasks: list[Task], database: Any, target: tvm.target.Target, builder: Any, runner: Any,
                       say: Callable[[str], None] = lambda line: None, min_gain: float = MIN_GAIN) -> list[Transfer]:
    """Try each task's best schedule on its slower siblings (see the module docstring), measure
    the candidates with ``builder`` and ``runner`` and commit them to ``database`` (MetaSchedule's).
    ``min_gain``: how much faster a sibling's best must be to be tried."""
    from tvm.s_tir import meta_schedule as ms

    candidates = [candidate for group in sibling_groups(tasks) for candidate in _candidates(group, database, target,
                                                                                           min_gain)]
    if not candidates:
        return []
    built = builder.build([ms.builder.BuilderInput(c.schedule.mod, target) for c in candidates])
    runnable = [(c, result.artifact_path) for c, result in zip(candidates, built) if result.error_msg is None]
    arguments = [ms.arg_info.ArgInfo.from_entry_func(c.schedule.mod, remove_preproc=True) for c, _ in runnable]
    device = "cpu" if target.kind.name in ("llvm", "c") else target.kind.name  # as the runner names devices
    futures = runner.run([ms.runner.RunnerInput(path, device, args)
                          for (_, path), args in zip(runnable, arguments)]) if runnable else []
    seconds: dict[int, float] = {}
    for (candidate, _), args, future in zip(runnable, arguments, futures):
        result = future.result()
        run_secs = [float(s) for s in result.run_secs or ()] if result.error_msg is None else []
        if run_secs and max(run_secs) < UNMEASURED_SECONDS:
            workload = database.commit_workload(_module(candidate.task))
            database.commit_tuning_record(ms.database.TuningRecord(candidate.schedule.trace, workload, run_secs,
                                                                   target, args))
            seconds[id(candidate)] = sum(run_secs) / len(run_secs)
    transfers = [Transfer(c.task.name, c.donor, seconds.get(id(c)), c.before) for c in candidates]
    failed = sum(t.seconds is None for t in transfers)
    say(f"schedules passed between sibling tasks (same conv or matmul, other epilogue): {len(transfers)} tried, "
        f"{sum(t.improved for t in transfers)} faster than their task's best"
        + (f", {failed} failed to build or run" if failed else ""))
    return transfers


def _candidates(group: list[Task], database: Any, target: tvm.target.Target, min_gain: float) -> list[_Candidate]:
    """Each task of ``group`` scheduled with the best traces of its faster siblings."""
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace

    best = {task.name: database.query_tuning_record(_module(task), target, "main") for task in group}
    seconds = {name: _mean(record) for name, record in best.items()}
    candidates = []
    for task in group:
        before = seconds[task.name]
        donors = sorted((s, name) for name, s in seconds.items()
                        if name != task.name and s is not None and (before is None or s < before * (1 - min_gain)))
        for _, donor in donors[:MAX_DONORS]:
            schedule = Schedule(_module(task))
            try:
                schedule_using_anchor_trace(schedule, best[donor].trace, target)
            except Exception:  # noqa: BLE001 - a trace that does not fit this sibling is no candidate
                continue
            candidates.append(_Candidate(task, donor, schedule, before))
    return candidates


def _module(task: Task) -> tvm.IRModule:
    return task.extracted.dispatched[0]


def _mean(record: Any) -> float | None:
    """A record's mean run time, ``None`` for no record or a failed one."""
    values = [float(s) for s in record.run_secs or ()] if record is not None else []
    return sum(values) / len(values) if values and max(values) < UNMEASURED_SECONDS else None
