"""A Relax module as MetaSchedule sees it: the preprocessing tuning and builds share, and its tasks.

Tuning and applying records must see the same fused TIR functions, or the database's keys (the
functions' structural hashes) do not match. Both therefore run what TVM's
``static_shape_tuning`` pipeline runs before tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.build.passes import PassPipeline, build_pipeline
from pytest_tvmdeploy.errors import BuildError, brief

if TYPE_CHECKING:
    import tvm

    from pytest_tvmdeploy.tuning.records import WorkloadLine


@dataclass(frozen=True)
class Task:
    """One tuning task: a fused TIR function, its workload hash and MetaSchedule's handle on it."""

    name: str
    shash: str
    extracted: Any  # tvm.s_tir.meta_schedule.ExtractedTask


def prepare_module(module: tvm.IRModule, target: tvm.target.Target,
                   pipeline: PassPipeline | None = None) -> tvm.IRModule:
    """Legalize and fuse ``module`` for ``target`` as ``static_shape_tuning`` does before tuning
    (with ``pipeline``'s passes: by default those of a tuned build, convolutions blocked)."""
    try:
        with target:
            return (pipeline or build_pipeline(blocked=True)).prepare(module)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"preparing the module for tuning on {target} failed: {brief(exc)}") from exc


def extract_tasks(prepared: tvm.IRModule, target: tvm.target.Target) -> list[Task]:
    """The module's tuning tasks, one per distinct fused TIR function."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    try:
        extracted = ms.relax_integration.extract_tasks(prepared, target)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"extracting tuning tasks for {target} failed: {brief(exc)}") from exc
    return [Task(t.task_name, str(tvm_ffi.structural_hash(t.dispatched[0])), t) for t in extracted
            if _is_static(t.dispatched[0])]


def _is_static(module: tvm.IRModule) -> bool:
    """Whether every buffer of the task's function has a fixed shape: MetaSchedule tunes only
    those (a function over a symbolic dimension aborts its search; it builds unscheduled)."""
    from tvm import tirx

    functions = [f for f in module.functions.values() if isinstance(f, tirx.PrimFunc)]
    return all(getattr(p, "shape", None) is not None  # a buffer; a scalar parameter passes a size
               and all(isinstance(d, tirx.IntImm) for d in p.shape) for f in functions for p in f.params)


def task_keys(tasks: list[Task]) -> list[tuple[str, str]]:
    """``(name, workload hash)`` pairs, the form record selection takes."""
    return [(task.name, task.shash) for task in tasks]


def tuned_workload(task: Task) -> WorkloadLine:
    """The workload line of the module ``task`` tunes, as MetaSchedule's JSON database stores it."""
    import json

    from tvm.s_tir.meta_schedule.database import Workload

    from pytest_tvmdeploy.tuning.records import WorkloadLine

    shash, module = Workload(task.extracted.dispatched[0]).as_json()
    return WorkloadLine(str(shash), json.dumps([str(shash), module]))
