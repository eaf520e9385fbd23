"""One MetaSchedule run over some tasks, with the recipe that works on small shared machines.

Builds go to a pool of processes, and local measurements to one process, that this process
keeps for its later runs too (``local_workers``); measurements happen on this machine, or
elsewhere through a :class:`RemoteMeasurement` (RPC devices: ``runners.rpc_tuning``), timed as
they run inside a model (:func:`evaluator_config`); the evolutionary population is sized to the
per-task budget. The run also tames MetaSchedule's logging: nothing on stdout, log files closed
afterwards, and no clash with handlers pytest attaches to its loggers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.errors import BuildError, brief
from pytest_tvmdeploy.threads import configure_threads
from pytest_tvmdeploy.tuning.plan import TRIALS_PER_ITERATION
from pytest_tvmdeploy.tuning.summary import TaskResult
from pytest_tvmdeploy.tuning.tasks import Task

if TYPE_CHECKING:
    import tvm

    from pytest_tvmdeploy.tuning.deadline import Cutoff

@dataclass(frozen=True)
class RemoteMeasurement:
    """Candidates measured off this machine: ``make_runner(evaluator, run_timeout, say)`` gives
    MetaSchedule's runner for it (checking first that it answers, and saying where it measures);
    the candidates are linked here into shared libraries with ``cc`` (``None``: the host's
    compiler), so the other side needs no compiler."""

    make_runner: Callable[[Any, float, Callable[[str], None]], Any]
    cc: str | None = None


#: The evolutionary population is at most half of TVM's default (whose evolution cost 6-13 s
#: per task iteration on one of our cores), and smaller still when a task may measure only a
#: few candidates.
MAX_POPULATION = 256
MIN_POPULATION = 64
INITIAL_UNMEASURED = 50
RUN_TIMEOUT_SECONDS = 30.0
#: The XGBoost cost model predicts at random until it has seen this many measurements
#: (``XGBModel.num_warmup_samples``; until then the shipped one ranks: ``warm_start``); smaller
#: runs use the random model and skip its training.
COST_MODEL_WARMUP = 100
#: Cache-cold runs timed per candidate (each run alone; their mean is the candidate's cost).
COLD_RUNS = 5


def run_meta_schedule(
    tasks: list[Task],
    target: tvm.target.Target,
    work_dir: Path,
    *,
    budget: int,
    per_task: int,
    label: str,
    say: Callable[[str], None],
    max_seconds: float | None = None,
    remote: RemoteMeasurement | None = None,
) -> tuple[tuple[TaskResult, ...], bool]:
    """MetaSchedule on ``tasks`` with the builder, runner and search sized for small machines;
    returns each task's result and whether ``max_seconds`` ended the run before its budget.

    ``label`` names the target in error messages. With ``remote``, candidates are linked into
    shared libraries here and measured on its devices.
    """

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import cpu_count

    from pytest_tvmdeploy.tuning.deadline import Cutoff, now
    from pytest_tvmdeploy.tuning.monitor import META_SCHEDULE_LOGGER, CurrentTask, TuningMonitor
    from pytest_tvmdeploy.tuning.pool_builder import Export, PersistentPoolBuilder
    from pytest_tvmdeploy.tuning.transfer import transfer_schedules
    from pytest_tvmdeploy.tuning.warm_start import WarmStartedModel, tuning_cost_model

    configure_threads()  # candidates are measured with the threads the deployed model will run with
    logger = logging.getLogger(META_SCHEDULE_LOGGER)
    cutoff = Cutoff(None)
    contexts, weights = _tune_contexts(tasks, work_dir, per_task, logger, cutoff)
    monitor = TuningMonitor([str(context.task_name) for context in contexts], say, cutoff)
    current = CurrentTask(len(contexts), say, monitor.sent_at)
    candidates = work_dir / "candidates"
    candidates.mkdir(exist_ok=True)
    evaluator = evaluator_config(target)
    export = Export() if remote is None else Export(shared=True, cc=remote.cc)
    builder = PersistentPoolBuilder(folder=str(candidates), max_workers=cpu_count(logical=True), export=export)
    runner = _runner(remote, evaluator, say)  # after the builder: its pool starts first
    cost_model = tuning_cost_model(contexts[0].num_threads) if budget >= COST_MODEL_WARMUP else "random"
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    logger.addHandler(current)  # after everything that can fail before the ``finally`` that removes it
    try:
        try:
            # the clock runs from here: starting the workers (the first run in a process) is not search time
            if max_seconds is not None:
                cutoff.deadline = now() + max_seconds
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(work_dir),
                max_trials_global=budget,
                max_trials_per_task=per_task,
                num_trials_per_iter=TRIALS_PER_ITERATION,
                builder=builder,
                runner=runner,
                database=database,
                cost_model=cost_model,
                measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [monitor],
                task_scheduler=ms.task_scheduler.TaskScheduler.create("gradient"),
            )
        except Exception as exc:  # noqa: BLE001
            if not monitor.timed_out:  # else the monitor's TuningDeadline ended the run: no failure
                raise BuildError(
                    f"tuning task {current.described()} for target {label} failed: "
                    f"{brief(exc)} (MetaSchedule logs: {work_dir / 'logs'})"
                ) from exc
        timed_out = monitor.timed_out or bool(cutoff.ended)
        try:  # after a time limit too: it measures at most two candidates a task
            transfer_schedules(tasks, database, target, builder, runner, say)
        except Exception as exc:  # noqa: BLE001 - the search's own records stand; passing them on is extra
            say(f"passing schedules between sibling tasks failed: {brief(exc)}")
    finally:
        logger.removeHandler(current)
        if remote is not None:
            runner.pool.shutdown()
        _close_log_files(work_dir)
    if isinstance(cost_model, WarmStartedModel):
        say("candidates ranked by the shipped cost model: {shipped}, by this run's: {session}".format(
            **cost_model.predictions))
    if timed_out:
        unreached = cutoff.unreached()
        left = f"; {len(unreached)} of {len(contexts)} tasks not reached: {', '.join(unreached)}" if unreached else ""
        say(f"tuning stopped at its time limit of {max_seconds:g} s{left}")
    return monitor.results(), timed_out


def _runner(remote: RemoteMeasurement | None, evaluator: Any, say: Callable[[str], None]) -> Any:
    """This machine's runner, or ``remote``'s."""
    from pytest_tvmdeploy.tuning.local_workers import local_runner

    if remote is None:
        return local_runner(evaluator, RUN_TIMEOUT_SECONDS)
    return remote.make_runner(evaluator, RUN_TIMEOUT_SECONDS, say)


def _tune_contexts(tasks: list[Task], work_dir: Path, per_task: int, logger: logging.Logger,
                   cutoff: Cutoff) -> tuple[Any, Any]:
    """MetaSchedule's tuning contexts and task weights, with the search sized for ``per_task``
    and ended at ``cutoff``."""
    from tvm.s_tir import meta_schedule as ms

    from pytest_tvmdeploy.tuning.deadline import DeadlineSearch
    from pytest_tvmdeploy.tuning.intrinsics import register_working_vnni

    register_working_vnni()  # tuning contexts need the intrinsics; TVM's VNNI one does not build
    logger.setLevel(logging.WARNING)  # MetaSchedule's console handler takes this level: no log on stdout
    with _unnamed_handlers_detached(logger):  # creating the contexts configures MetaSchedule's logging
        return ms.relax_integration.extracted_tasks_to_tune_contexts(
            [task.extracted for task in tasks],
            str(work_dir),
            strategy=DeadlineSearch(ms.search_strategy.EvolutionarySearch(
                population_size=population_size(per_task), init_min_unmeasured=INITIAL_UNMEASURED
            ), cutoff),
        )


def evaluator_config(target: tvm.target.Target) -> Any:
    """How a candidate is timed. On CPUs: each of :data:`COLD_RUNS` runs after its arguments but
    the first (weights, constants, the output) are flushed from the caches, as a kernel meets them
    inside a model, where the previous kernel has just written its input and every other
    kernel's weights have passed through the caches since its own last call. Timed hot, with
    its weights left in the caches by the run before, a kernel runs a median 1.15-1.37x faster
    than in the model (up to 2.8x; cold: within 1-4%, ``benchmarks/kernels.py``), and the search
    favours schedules that only win hot."""
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name in ("llvm", "c"):
        return ms.runner.EvaluatorConfig(number=1, repeat=COLD_RUNS, min_repeat_ms=0, enable_cpu_cache_flush=True)
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40)


def population_size(per_task: int) -> int:
    """Evolutionary search population: 32 per trial a task may measure, within 64..256."""
    return max(MIN_POPULATION, min(MAX_POPULATION, 32 * per_task))


@contextmanager
def _unnamed_handlers_detached(logger: logging.Logger) -> Iterator[None]:
    """Take unnamed handlers off ``logger`` for a while, then put them back.

    MetaSchedule's logging setup names every handler already on its logger in a
    ``dictConfig``, which fails on a handler without a name, such as the capture handler
    pytest (>= 9) attaches to every non-propagating logger during a test.
    """
    unnamed = [handler for handler in logger.handlers if handler.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


def _close_log_files(work_dir: Path) -> None:
    """Close MetaSchedule's log files in ``work_dir`` (its loggers keep them open)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("tvm.s_tir.meta_schedule")]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(str(work_dir)):
                logger.removeHandler(handler)
                handler.close()
