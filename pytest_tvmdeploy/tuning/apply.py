"""``compile_tuned``: build a Relax module with the best stored schedule of each of its tasks.

Only the chosen record of each task (see ``selection``) is loaded, from a temporary database:
loading a record replays its trace, so loading a whole database costs seconds per thousand
records. Functions without a record stay unscheduled, exactly as in an untuned build.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_tvmdeploy.build.compile import compile_module
from pytest_tvmdeploy.build.passes import PassPipeline, build_pipeline
from pytest_tvmdeploy.errors import BuildError, brief
from pytest_tvmdeploy.targets import TargetSpec, parse_target
from pytest_tvmdeploy.tuning.records import DatabaseFiles, RecordLine, read_database
from pytest_tvmdeploy.tuning.sampled import Remember, schedule_unscheduled
from pytest_tvmdeploy.tuning.selection import TaskRecords, records_by_task
from pytest_tvmdeploy.tuning.targets import record_matcher, tuning_target
from pytest_tvmdeploy.tuning.tasks import extract_tasks, prepare_module, task_keys

if TYPE_CHECKING:
    import tvm

_TENSORIZE = '"Tensorize"'


class RecordsBuild(NamedTuple):
    """A build's VM executable, how many functions got a stored record, how many a sampled schedule,
    and the module compiled (its TIR functions scheduled; None when built without either)."""

    executable: Any
    applied: int
    sampled: int
    module: Any = None


def compile_tuned(module: tvm.IRModule, target: TargetSpec, database_dir: Path) -> Any:
    """``tvm.compile`` ``module`` for ``target`` with the records in ``database_dir`` applied.

    The result is a Relax VM executable like :func:`pytest_tvmdeploy.build.compile_module`'s,
    with the same ``main``.
    """
    return build_with_records(module, target, read_database(Path(database_dir))).executable


def build_with_records(module: tvm.IRModule, target: TargetSpec, files: DatabaseFiles | None,
                       pipeline: PassPipeline | None = None,
                       keep: Callable[[TaskRecords], bool] | None = None,
                       sampled: bool = False, sample: Callable[[str], bool] | None = None,
                       remember: Remember | None = None) -> RecordsBuild:
    """:func:`compile_tuned` with the database already read (``None``: no database). ``pipeline``
    is the passes to run (by default :func:`build_pipeline`'s, convolutions blocked when there
    are records); ``keep`` chooses which of the chosen records apply (all); with ``sampled`` the
    functions still unscheduled get a sampled schedule (:mod:`pytest_tvmdeploy.tuning.sampled`;
    LLVM targets only), those whose task name ``sample`` chooses (all), kept in ``remember`` for
    later builds if given."""
    has_records = files is not None and not files.is_empty
    pipeline = pipeline or build_pipeline(blocked=has_records)
    sampled = sampled and target.as_dict.get("kind") == "llvm"
    if not has_records and not sampled:
        return RecordsBuild(compile_module(module, target, pipeline), 0, 0)
    as_tuned = tuning_target(target)  # prepared exactly as tune() prepares it, so the keys match
    prepared = prepare_module(module, as_tuned, pipeline)
    applied = scheduled = 0
    if has_records:
        assert files is not None
        chosen = [task for task in chosen_records(files, prepared, target) if keep is None or keep(task)]
        if chosen:
            prepared, applied = apply_records(prepared, as_tuned, files, chosen)
    if sampled:
        prepared, scheduled = schedule_unscheduled(prepared, as_tuned, sample, remember)
    return RecordsBuild(compile_module(prepared, target, pipeline), applied, scheduled, prepared)


def sampled_host_build(module: tvm.IRModule) -> Any:
    """``module`` built for this machine's CPU (``llvm``) with sampled schedules and no records:
    for a float module run many times (the quantizer's sensitivity simulation of EfficientNet-Lite0:
    1.7x faster per call than unscheduled loops, for ~40 s more building)."""
    return build_with_records(module, parse_target("llvm"), None, sampled=True).executable


def chosen_records(files: DatabaseFiles, prepared: tvm.IRModule, target: TargetSpec) -> list[TaskRecords]:
    """The record a build applies for each task of the prepared module that has one."""
    tasks = extract_tasks(prepared, tuning_target(target))
    return [task for task in records_by_task(files, task_keys(tasks), record_matcher(target)) if task.best]


def apply_records(
    prepared: tvm.IRModule, target: tvm.target.Target, files: DatabaseFiles, chosen: list[TaskRecords]
) -> tuple[tvm.IRModule, int]:
    """Replace each tuned function of ``prepared`` by its scheduled version; also returns how
    many records were applied (see :func:`loadable_database` for the ones that cannot be)."""
    from tvm import relax

    database, loaded = loadable_database(files, [task.best for task in chosen])
    try:
        with target, database:
            return relax.transform.MetaScheduleApplyDatabase()(prepared), len(loaded)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"applying tuning records from {files.folder} failed: {brief(exc)}") from exc


def loadable_database(files: DatabaseFiles, records: list[RecordLine]) -> tuple[Any, list[RecordLine]]:
    """A MetaSchedule database of those ``records`` that TVM can load, and which ones those are.

    Loading a record replays its trace on its workload. A trace that names blocks its
    workload does not have (records filed under another model's workload by older versions)
    cannot be replayed: it is left out with a warning naming the database and the workload,
    so its task builds unscheduled instead of failing the whole build."""
    if any(_TENSORIZE in record.body for record in records):
        from pytest_tvmdeploy.tuning.intrinsics import register_working_vnni

        register_working_vnni()  # replaying a tensorized trace looks its intrinsic up by name
    try:
        return _database_of(files, records), records
    except BuildError:
        if len(records) <= 1:
            raise
    loaded, left_out = [], []
    for record in records:
        try:
            _database_of(files, [record])
            loaded.append(record)
        except BuildError:
            left_out.append(record)
    hashes = ", ".join(files.workloads[record.workload].shash for record in left_out)
    warnings.warn(f"tuning database {files.folder}: {len(left_out)} record(s) do not replay on their stored "
                  f"workload (workload hash {hashes}) and are left out; tune again to replace them", stacklevel=2)
    return _database_of(files, loaded), loaded


def _database_of(files: DatabaseFiles, records: list[RecordLine]) -> Any:
    """A MetaSchedule database holding exactly ``records`` (and their workloads)."""
    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="tvmdeploy-records-") as folder:
        files.subset(records).write(Path(folder))
        try:
            return ms.database.JSONDatabase(work_dir=folder, allow_missing=False)
        except Exception as exc:  # noqa: BLE001
            raise BuildError(
                f"tuning database {files.folder}: TVM cannot load its records: {brief(exc)}"
            ) from exc
