"""What a tuning database contributes to a build, as a digest; and a module's workload hashes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.targets import TargetSpec
from pytest_tvmdeploy.tuning.records import DatabaseFiles, read_database
from pytest_tvmdeploy.tuning.selection import records_by_task, selection_fingerprint
from pytest_tvmdeploy.tuning.targets import record_matcher

if TYPE_CHECKING:
    import tvm


def database_fingerprint(
    database_dir: Path,
    module: tvm.IRModule | None = None,
    target: TargetSpec | None = None,
    *,
    workloads: Sequence[str] | None = None,
) -> str | None:
    """A stable hex digest of the database in ``database_dir`` (``None`` when nothing counts).

    Without ``module`` or ``workloads``: every line of both files, read without TVM. With
    ``module`` and ``target``: only the records :func:`compile_tuned` would apply to that
    module, so records added for other models or targets leave it unchanged (``None`` when
    none applies); this prepares the module (TVM: 1-10 s for an ImageNet CNN). With
    ``workloads`` (the module's :func:`workload_hashes`, kept from earlier) and ``target``: the
    same digest without touching the module.
    """
    files = read_database(Path(database_dir))
    if module is None and workloads is None:
        return files.digest()
    if target is None:
        raise ConfigError("database_fingerprint: a module or its workloads need the target")
    if workloads is None:
        workloads = workload_hashes(module, target)
    return applied_fingerprint(files, workloads, target)


def applied_fingerprint(files: DatabaseFiles, workloads: Sequence[str], target: TargetSpec) -> str | None:
    """The digest of the records of ``files`` that a build of a module with these ``workloads``
    for ``target`` applies (``None`` when none applies)."""
    if files.is_empty:
        return None
    return selection_fingerprint(records_by_task(files, [(w, w) for w in workloads], record_matcher(target)))


def workload_hashes(module: tvm.IRModule, target: TargetSpec) -> tuple[str, ...]:
    """The structural hashes of ``module``'s tuning tasks for ``target``: the database's keys.

    They depend only on the module's graph and shapes (not its weights), the target and
    the TVM version, so a caller may keep them next to a model fingerprint.
    """
    from pytest_tvmdeploy.tuning.targets import tuning_target
    from pytest_tvmdeploy.tuning.tasks import extract_tasks, prepare_module

    tvm_target = tuning_target(target)
    return tuple(task.shash for task in extract_tasks(prepare_module(module, tvm_target), tvm_target))
