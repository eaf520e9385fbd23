"""Choosing, per tuning task, the stored record a build applies: MetaSchedule's rule, in Python.

MetaSchedule applies a workload's valid record with the lowest mean run time (the first one
stored among equals); a record is valid when it was measured (a run time other than 1e10) and
its trace schedules something before its post-processing part. Doing the choice here lets a
build load one record per task instead of replaying every stored trace, and lets the
fingerprint cover exactly what a build applies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pytest_tvmdeploy.tuning.records import DatabaseFiles, RecordLine

#: MetaSchedule's stand-in run time for a candidate that failed to build or run.
UNMEASURED_SECONDS = 1e10
_POSTPROC_START = "EnterPostproc"

TargetMatcher = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class TaskRecords:
    """The stored records of one task's workload for one target."""

    task: str
    shash: str
    trials: int                # records stored, measured or failed
    best: RecordLine | None    # the record a build applies, if any is valid


def records_by_task(files: DatabaseFiles, tasks: Iterable[tuple[str, str]],
                    matches: TargetMatcher) -> list[TaskRecords]:
    """Trials and best record for each ``(task name, workload hash)`` on a matching target."""
    by_hash: dict[str, list[RecordLine]] = {}
    for record in files.records:
        if matches(record.target):
            by_hash.setdefault(files.workloads[record.workload].shash, []).append(record)
    result = []
    for name, shash in tasks:
        stored = by_hash.get(shash, [])
        valid = [record for record in stored if is_valid(record)]
        best = min(valid, key=mean_seconds) if valid else None  # min keeps the first among equals
        result.append(TaskRecords(name, shash, len(stored), best))
    return result


def selection_fingerprint(selected: Iterable[TaskRecords]) -> str | None:
    """sha256 of the records a build applies, keyed by workload (``None`` if there are none)."""
    chosen = sorted({(task.shash, task.best.body) for task in selected if task.best is not None})
    if not chosen:
        return None
    return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()


def mean_seconds(record: RecordLine) -> float:
    """The mean run time MetaSchedule ranks records by."""
    if not record.run_secs:
        return UNMEASURED_SECONDS
    return sum(UNMEASURED_SECONDS if value is None else value for value in record.run_secs) / len(record.run_secs)


def is_valid(record: RecordLine) -> bool:
    """Whether MetaSchedule would apply the record at all."""
    schedules_something = record.first_instruction not in (None, _POSTPROC_START)
    measured = any(value is not None and value != UNMEASURED_SECONDS for value in record.run_secs)
    return schedules_something and measured
