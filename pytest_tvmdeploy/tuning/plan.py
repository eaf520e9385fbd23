"""Which tasks of a module still need trials, given the records a database already holds.

A task is done for a target when it has ``max_trials_per_task`` records for it (measured or
failed), or when an earlier run found no more schedules to try (``exhausted``). The per-task
budget defaults to an even share of ``max_trials`` over all of the module's tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_tvmdeploy.build import TargetSpec
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.tuning.exhausted import exhausted_workloads
from pytest_tvmdeploy.tuning.records import DatabaseFiles, read_database
from pytest_tvmdeploy.tuning.selection import records_by_task
from pytest_tvmdeploy.tuning.targets import record_matcher, target_key


@dataclass(frozen=True)
class TuningPlan:
    """The tasks to tune (by name and workload hash), the ones already done, and the budget."""

    todo: tuple[tuple[str, str], ...]
    done: tuple[str, ...]
    per_task: int
    budget: int

    @property
    def has_work(self) -> bool:
        return bool(self.todo) and self.budget > 0


def plan_tuning(
    files: DatabaseFiles,
    tasks: Sequence[tuple[str, str]],
    target: TargetSpec,
    *,
    max_trials: int,
    max_trials_per_task: int | None = None,
) -> TuningPlan:
    """Plan a run over ``tasks`` (``(name, workload hash)`` pairs) against the records in ``files``."""
    if max_trials < 0 or (max_trials_per_task is not None and max_trials_per_task < 1):
        raise ConfigError(f"tuning budget: max_trials={max_trials}, max_trials_per_task={max_trials_per_task}")
    per_task = max_trials_per_task or max(1, math.ceil(max_trials / max(1, len(tasks))))
    stored = {task.shash: task.trials for task in records_by_task(files, tasks, record_matcher(target))}
    exhausted = exhausted_workloads(files.folder, target_key(target))
    is_done = {shash: stored[shash] >= per_task or shash in exhausted for _, shash in tasks}
    todo = tuple((name, shash) for name, shash in tasks if not is_done[shash])
    done = tuple(sorted(name for name, shash in tasks if is_done[shash]))
    return TuningPlan(todo, done, per_task, min(max_trials, per_task * len(todo)))


def needs_tuning(
    database_dir: Path,
    target: TargetSpec,
    workloads: Sequence[str],
    *,
    max_trials: int,
    max_trials_per_task: int | None = None,
) -> bool:
    """Whether :func:`tune` with this budget would measure anything for a module with these workloads.

    ``workloads`` are the module's task hashes (:func:`workload_hashes`); no TVM module work
    is done, so a caller that kept them can skip importing the model when nothing is to do.
    """
    tasks = [(shash, shash) for shash in workloads]
    plan = plan_tuning(
        read_database(Path(database_dir)), tasks, target, max_trials=max_trials, max_trials_per_task=max_trials_per_task
    )
    return plan.has_work
