"""Which tasks of a module still need trials, given the records a database already holds.

``max_trials`` is what the module should have in all for the target, records already stored
included (each task's counted up to the per-task cap), so a second call with the same budget
has nothing to do and a bigger one tunes further. A task is done when it has
``max_trials_per_task`` records (measured or failed), or when an earlier run found no more
schedules to try (``exhausted``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.targets import TargetSpec
from pytest_tvmdeploy.tuning.exhausted import exhausted_workloads
from pytest_tvmdeploy.tuning.records import DatabaseFiles, read_database
from pytest_tvmdeploy.tuning.selection import records_by_task
from pytest_tvmdeploy.tuning.targets import record_matcher, target_key

#: Candidates MetaSchedule measures per search iteration of a task (``session`` uses it too).
TRIALS_PER_ITERATION = 32


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
    per_task = max_trials_per_task or default_per_task(max_trials, len(tasks))
    stored = {task.shash: task.trials for task in records_by_task(files, tasks, record_matcher(target))}
    exhausted = exhausted_workloads(files.folder, target_key(target))
    is_done = {shash: stored[shash] >= per_task or shash in exhausted for _, shash in tasks}
    todo = tuple((name, shash) for name, shash in tasks if not is_done[shash])
    done = tuple(sorted(name for name, shash in tasks if is_done[shash]))
    remaining = max(0, max_trials - sum(min(stored[shash], per_task) for _, shash in tasks))
    return TuningPlan(todo, done, per_task, min(remaining, per_task * len(todo)))


def default_per_task(max_trials: int, task_count: int) -> int:
    """The per-task cap when none is given: an even share, or four for budgets of some size.

    A share below one search iteration (32 candidates) must stay the cap, or the first round
    over the tasks spends the budget before it reaches the last ones. Above that, a higher cap
    lets MetaSchedule's gradient scheduler give the tasks that gain most more trials (resnet18,
    ~1400 trials: 36.8 ms with a cap of 256, 40.9 ms with an even 72 per task).
    """
    share = max(1, math.ceil(max_trials / max(1, task_count)))
    return share if share < TRIALS_PER_ITERATION else min(max_trials, 4 * share)


def needs_tuning(
    database: Path | DatabaseFiles,
    target: TargetSpec,
    workloads: Sequence[str],
    *,
    max_trials: int,
    max_trials_per_task: int | None = None,
) -> bool:
    """Whether :func:`tune` with this budget would measure anything for a module with these workloads.

    ``database`` is the database folder, or its content already read. ``workloads`` are the
    module's task hashes (:func:`workload_hashes`); no TVM module work is done, so a caller that
    kept them can skip importing the model when nothing is to do.
    """
    files = database if isinstance(database, DatabaseFiles) else read_database(Path(database))
    tasks = [(shash, shash) for shash in workloads]
    plan = plan_tuning(files, tasks, target, max_trials=max_trials, max_trials_per_task=max_trials_per_task)
    return plan.has_work
