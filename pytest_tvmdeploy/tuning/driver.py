"""``tune``: run MetaSchedule on a Relax module and add its records to a database folder.

The run happens in a temporary database that starts from the stored records of the tasks it
tunes; only at the end are its new records appended to the real one, each with the module it was
tuned on (see ``records.merge_new_records``), under a lock that also keeps
two processes from tuning into the same folder at once (their measurements would disturb
each other, and the second usually finds its tasks already tuned).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_tvmdeploy.errors import BuildError, ConfigError
from pytest_tvmdeploy.targets import TargetSpec
from pytest_tvmdeploy.tuning.exhausted import note_exhausted
from pytest_tvmdeploy.tuning.plan import TuningPlan, plan_tuning
from pytest_tvmdeploy.tuning.records import DatabaseFiles, database_lock, merge_new_records, read_database
from pytest_tvmdeploy.tuning.selection import is_valid, records_by_task, selection_fingerprint
from pytest_tvmdeploy.tuning.session import run_meta_schedule
from pytest_tvmdeploy.tuning.summary import TaskResult, TuningSummary
from pytest_tvmdeploy.tuning.targets import record_matcher, target_key, tuning_target
from pytest_tvmdeploy.tuning.tasks import Task, extract_tasks, prepare_module, task_keys, tuned_workload

if TYPE_CHECKING:
    import tvm

    from pytest_tvmdeploy.tuning.session import RemoteMeasurement


def tune(
    module: tvm.IRModule,
    target: TargetSpec,
    database_dir: Path,
    *,
    max_trials: int,
    max_trials_per_task: int | None = None,
    progress: Callable[[str], None] | None = None,
    max_seconds: float | None = None,
    remote: RemoteMeasurement | None = None,
) -> TuningSummary:
    """Tune ``module`` (a Relax module as a frontend imported it) for ``target``; store records in ``database_dir``.

    ``max_trials`` is the number of trials the module should have for the target in all,
    records already in the folder included; ``max_trials_per_task`` caps each task (default:
    ``plan.default_per_task``). Tasks at their cap, or whose every schedule was tried, are not
    tuned again, so a second call with the same budget measures nothing, and a bigger budget
    tunes the other tasks further (starting from their best records; a task may exceed its cap
    by up to one cap in that call). Records already in the folder are kept. ``progress``
    receives a line per batch of candidates sent to the builder and per measured batch.
    ``max_seconds`` ends the search once that much of it has gone (counted once the build and
    timing workers are up): no task starts another search after it, the batches already sent are
    measured and stored, and tasks whose turn had not come keep no new records; a later call goes
    on from the stored records.
    With ``remote`` (e.g. :func:`pytest_tvmdeploy.runners.rpc_tuning.rpc_measurement`), candidates
    are measured there; a target that is not this machine needs that.
    """
    say = progress or (lambda line: None)
    if remote is None and not target.runs_here:
        raise ConfigError(f"tuning for target {target.json}: it is built for {target.architecture}, not this "
                          f"machine ({platform.machine()}); give an RPC device to measure on "
                          "(--tvm-rpc / --tvm-rpc-tracker)")
    database_dir = Path(database_dir)
    start = time.perf_counter()
    with database_lock(database_dir):
        seed = read_database(database_dir)
        tvm_target = tuning_target(target)
        tasks = extract_tasks(prepare_module(module, tvm_target), tvm_target)
        plan = plan_tuning(seed, task_keys(tasks), target, max_trials=max_trials,
                           max_trials_per_task=max_trials_per_task)
        results: tuple[TaskResult, ...] = ()
        added = 0
        if plan.has_work:
            say(f"tuning {len(plan.todo)} of {len(tasks)} tasks, up to {plan.per_task} trials each, "
                f"{plan.budget} in all")
            todo = [task for task in tasks if (task.name, task.shash) in plan.todo]
            results, added, timed_out = _tune_in_copy(_warm_start(seed, todo, target), todo, plan, tvm_target,
                                                      label=target.json, say=say, max_seconds=max_seconds,
                                                      remote=remote)
            if not timed_out:  # a task cut short by the clock did not run dry
                note_exhausted(database_dir, target_key(target), _exhausted(todo, plan, results))
        else:
            say(f"nothing to tune: the database holds the {max_trials}-trial budget of these {len(tasks)} tasks")
        chosen = records_by_task(read_database(database_dir), task_keys(tasks), record_matcher(target))
    return TuningSummary(
        database_dir=database_dir,
        tasks=len(tasks),
        trials=sum(r.trials for r in results),
        seconds=time.perf_counter() - start,
        records_added=added,
        results=results,
        skipped=plan.done,
        workloads=tuple(task.shash for task in tasks),
        fingerprint=selection_fingerprint(chosen),
    )


def _exhausted(todo: list[Task], plan: TuningPlan, results: tuple[TaskResult, ...]) -> list[str]:
    """Tasks that got fewer trials than allowed while budget was left: their search ran dry."""
    if sum(result.trials for result in results) >= plan.budget:
        return []
    trials = {result.name: result.trials for result in results}
    return [task.shash for task in todo if trials.get(task.name, 0) < plan.per_task]


def _warm_start(files: DatabaseFiles, todo: list[Task], target: TargetSpec) -> DatabaseFiles:
    """The stored records MetaSchedule starts from: the valid ones of the tasks to tune, for
    this target, that TVM can load (a record that cannot be replayed would fail the run)."""
    from pytest_tvmdeploy.tuning.apply import loadable_database

    wanted, matches = {task.shash for task in todo}, record_matcher(target)
    records = [record for record in files.records
               if files.workloads[record.workload].shash in wanted and matches(record.target) and is_valid(record)]
    if not records:
        return files.subset([])
    return files.subset(loadable_database(files, records)[1])


def _tune_in_copy(
    seed: DatabaseFiles,
    todo: list[Task],
    plan: TuningPlan,
    target: tvm.target.Target,
    *,
    label: str,
    say: Callable[[str], None],
    max_seconds: float | None = None,
    remote: RemoteMeasurement | None = None,
) -> tuple[tuple[TaskResult, ...], int, bool]:
    """Tune in a temporary database holding ``seed`` (records of the real one), then append the
    new records to the real one (``seed``'s folder).

    The copy is removed afterwards, unless tuning failed: then its MetaSchedule logs stay
    for the error message to point at.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="tvmdeploy-tuning-"))
    try:
        seed.write(run_dir)
        results, timed_out = run_meta_schedule(
            todo, target, run_dir, budget=plan.budget, per_task=plan.per_task, label=label, say=say,
            max_seconds=max_seconds, remote=remote,
        )
        _all_failed_check(results, label, run_dir)  # before merging: a broken run must not mark tasks done
        tuned = {task.shash: tuned_workload(task) for task in todo}
        added = merge_new_records(seed.folder, read_database(run_dir), seed, tuned)
    except BuildError:
        shutil.rmtree(run_dir / "candidates", ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    shutil.rmtree(run_dir, ignore_errors=True)
    return results, added, timed_out


def _all_failed_check(results: tuple[TaskResult, ...], label: str, run_dir: Path) -> None:
    """Raise when no candidate of any task ran: the toolchain, not the search, is broken."""
    if results and all(result.failed for result in results):
        first = results[0]
        raise BuildError(
            f"tuning for target {label}: every candidate failed, e.g. task {first.name}: "
            f"{first.first_error} (MetaSchedule logs: {run_dir / 'logs'})"
        )
