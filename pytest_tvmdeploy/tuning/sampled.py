"""Schedules for functions nobody tuned: sampled from MetaSchedule's rules, chosen by the shipped
cost model, never measured.

An unscheduled function runs as plain loops on one core (resnet18: ~1.9 s a call where PyTorch
takes ~21 ms). Each fused function without a tuning record instead gets one of
:data:`CANDIDATES` schedules (:data:`SMALL_CANDIDATES` for a function doing a tiny share of the
model's flops) drawn from MetaSchedule's design space for LLVM targets (multi-level
tiling, parallel outer loops, vectorised inner loops, unrolling): the one the shipped cost model
(:mod:`pytest_tvmdeploy.tuning.cost_model`) ranks first, or the first valid one without it,
unrolling at most :data:`MAX_UNROLL` iterations (deeper unrolling costs LLVM minutes). The
draws are seeded from the function's structural hash, so a build is reproducible. Functions over
symbolic dimensions have no design space and stay unscheduled. Given a ``remember`` store (the
artifact cache's), the chosen schedule's trace is kept per function structure, target and recipe, and
any later build meeting the same function (another form of the model, another model with the same
layer, a rebuild after another layer changed) replays it instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.errors import BuildError, brief
from pytest_tvmdeploy.tuning.cost_model import ranking_scores, shipped_cost_model, shipped_digest
from pytest_tvmdeploy.tuning.tasks import Task, extract_tasks

if TYPE_CHECKING:
    import tvm

#: Design-space draws per function (each draw gives one schedule per sketch); 16 draws ranked by
#: the cost model ran resnet18 in 89 ms and mobilenet_v2 in 14.6 ms, 64 draws in 89 / 14.0 ms at
#: four times the scheduling time, one unranked draw in 176 / 33 ms.
CANDIDATES = 16
#: Draws for a function without a reduction (elementwise, pooling-free data movement): its design
#: space varies little (unrolling, vectorised width), and densenet121 spent a third of its
#: sampling on them.
INJECTIVE_CANDIDATES = 2
#: Draws for a function doing under :data:`SMALL_SHARE` of the model's estimated flops (the
#: squeeze-and-excitation convs on 1x1 maps, means): on EfficientNet-B0, 34 of 62 functions doing 2%
#: of the flops took half of the sampling time at 16 draws.
SMALL_CANDIDATES = 4
SMALL_SHARE = 0.005
#: MetaSchedule's generic LLVM rules: the x86 set adds VNNI tiling, whose intrinsic registration
#: alone imports all of TVM's tensor intrinsics (~20 s a process).
RULES = "llvm"
#: The most loop iterations a sampled schedule unrolls (MetaSchedule draws 0, 16, 64 or 512). At
#: 512, LLVM took 31 s to compile one of MobileNetV2's 1x1 convs (a 14-wide vector tile, 224 of
#: them unrolled; its ONNX Runtime QDQ form drew it), 0.2 s at 64; 38 s of the model's 39.
MAX_UNROLL = 64

#: A store of JSON values: ``remember(key, compute)`` returns the value kept under ``key``, or
#: keeps and returns ``compute()`` (see ``ArtifactCache.remembered``).
Remember = Callable[[str, Callable[[], Any]], Any]


def recipe() -> str:
    """What the sampled schedules depend on besides the module (for artifact keys)."""
    return (f"sampled-{CANDIDATES}-{INJECTIVE_CANDIDATES}-{SMALL_CANDIDATES}@{SMALL_SHARE}-{RULES}-unroll{MAX_UNROLL}-"
            f"{shipped_digest() or 'first'}")


def schedule_unscheduled(prepared: tvm.IRModule, target: tvm.target.Target,
                         sample: Callable[[str], bool] | None = None,
                         remember: Remember | None = None) -> tuple[tvm.IRModule, int]:
    """``prepared`` with a sampled schedule on each static function that has none yet (of those
    whose task name ``sample`` chooses: stage bisection narrows a wrong build down to one function
    this way); also returns how many functions got one. ``remember`` keeps the chosen schedules
    for later builds."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.MemoryDatabase()
    scheduled = 0
    tasks = unscheduled_tasks(prepared, target)
    draws = draw_counts(tasks)
    for task in tasks:
        function = task.extracted.dispatched[0]
        if sample is not None and not sample(task.name):
            continue
        schedule = (remembered_schedule(task, target, remember, draws[task.name]) if remember
                    else choose_schedule(task, target, None, draws[task.name]))
        if schedule is None:
            continue
        workload = database.commit_workload(function)
        database.commit_tuning_record(ms.database.TuningRecord(
            schedule.trace, workload, [1.0], target, ms.arg_info.ArgInfo.from_prim_func(function["main"])))
        scheduled += 1
    if not scheduled:
        return prepared, 0
    try:
        with target, database:
            return relax.transform.MetaScheduleApplyDatabase()(prepared), scheduled
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"applying sampled schedules for {target} failed: {brief(exc)}") from exc


def unscheduled_tasks(prepared: tvm.IRModule, target: tvm.target.Target) -> list[Task]:
    """The tasks of ``prepared`` that no record has scheduled."""
    return [task for task in extract_tasks(prepared, target) if not _is_scheduled(task.extracted.dispatched[0])]


def draw_counts(tasks: list[Task]) -> dict[str, int]:
    """Design-space draws per task name: :data:`CANDIDATES`, or :data:`SMALL_CANDIDATES` for a
    task under :data:`SMALL_SHARE` of the tasks' estimated flops (times their calls)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    flops: dict[str, float | None] = {}
    for task in tasks:
        try:
            flops[task.name] = float(estimate_tir_flops(task.extracted.dispatched[0])) * int(task.extracted.weight)
        except Exception:  # noqa: BLE001 - a function TVM cannot estimate keeps the full draws
            flops[task.name] = None
    total = sum(value for value in flops.values() if value is not None)
    return {name: SMALL_CANDIDATES if value is not None and value < SMALL_SHARE * total else CANDIDATES
            for name, value in flops.items()}


def choose_schedule(task: Task, target: tvm.target.Target, blocks: Blocks | None = None,
                    draws: int = CANDIDATES) -> Any | None:
    """The cost model's pick among the task's sampled schedules (``None``: no valid one, or a
    function written as plain loops without blocks, as TOPI's scatter and some slices are).
    ``blocks``: the function's :func:`blocks_of`, if the caller has them; ``draws``: design-space
    draws if the function reduces (otherwise :data:`INJECTIVE_CANDIDATES`)."""
    from tvm.s_tir import meta_schedule as ms

    function = task.extracted.dispatched[0]
    blocks = blocks or blocks_of(function)
    if blocks is None:
        return None
    context = light_context(function, target, seed=int(task.shash) % (2**31 - 1) or 1)
    domains = blocks.domains
    candidates = []
    for _ in range(draws if blocks.reduces else INJECTIVE_CANDIDATES):
        for schedule in context.generate_design_space():
            schedule.enter_postproc()  # as MetaSchedule marks them: a replay can leave them out
            if all(postproc.apply(schedule) for postproc in context.space_generator.postprocs):
                candidates.append(schedule)
    model = shipped_cost_model()
    order = range(len(candidates))
    if model is not None and candidates:
        args = ms.arg_info.ArgInfo.from_prim_func(function["main"])
        scores = ranking_scores(model, context, [ms.MeasureCandidate(schedule, args) for schedule in candidates])
        order = sorted(order, key=lambda i: (-scores[i], i))  # best first; among equals, the first drawn
    # the best that runs every iteration: checked best first, so most candidates skip the check's Python walk
    best = next((candidates[i] for i in order if covers_every_iteration(candidates[i], domains)), None)
    return None if best is None else capped_unroll(best, function, context.space_generator.postprocs)


def capped_unroll(schedule: Any, function: tvm.IRModule, postprocs: Any) -> Any:
    """``schedule``, or when it unrolls more than :data:`MAX_UNROLL` iterations, the same
    replayed on ``function`` unrolling that many (and postprocessed again)."""
    import tvm

    def deeper(instruction: Any, decision: Any) -> list[int] | None:
        """The draw's choices if it is an unroll limit over the cap, else ``None``."""
        if instruction.kind.name != "SampleCategorical" or decision is None:
            return None
        values = [int(v) for v in instruction.attrs[0]]
        return values if values[int(decision)] > MAX_UNROLL else None

    def capped(instruction: Any, _inputs: Any, _attrs: Any, decision: Any) -> Any:
        values = deeper(instruction, decision)
        return decision if values is None else max((v, i) for i, v in enumerate(values) if v <= MAX_UNROLL)[1]

    trace = schedule.trace
    if not any(deeper(inst, trace.get_decision(inst)) for inst in trace.insts):
        return schedule
    replayed = tvm.s_tir.Schedule(function)
    trace.apply_to_schedule(replayed, remove_postproc=True, decision_provider=capped)
    replayed.enter_postproc()
    return replayed if all(postproc.apply(replayed) for postproc in postprocs) else schedule


def remembered_schedule(task: Task, target: tvm.target.Target, remember: Remember,
                        draws: int = CANDIDATES) -> Any | None:
    """:func:`choose_schedule`'s schedule, its trace kept in ``remember`` under the function's
    structure (its structural hash, which leaves names out, as a model's ONNX export and its
    PyTorch import name one layer's buffers differently), its block names (a trace replays only on
    the names it was made on), the target, the draws and :func:`recipe`. Both a first and a later
    build replay the kept trace, so they build alike."""
    import tvm

    function = task.extracted.dispatched[0]
    blocks = blocks_of(function)
    identity = [task.shash, list(blocks.domains) if blocks else None, str(target), recipe(), draws]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def choose() -> Any:
        schedule = choose_schedule(task, target, blocks, draws)
        return None if schedule is None else _plain(schedule.trace.as_json())

    trace = remember(key, choose)
    if trace is None:
        return None
    schedule = tvm.s_tir.Schedule(function)
    try:
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(trace, schedule)
    except Exception as exc:  # noqa: BLE001 - a damaged kept trace costs a new draw, not the build
        warnings.warn(f"kept sampled schedule {key[:16]} of {task.name} does not replay ({brief(exc)}); "
                      "sampling it again", stacklevel=2)
        return choose_schedule(task, target, blocks, draws)
    return schedule


def _plain(value: Any) -> Any:
    """A trace's JSON form (TVM arrays, maps and numbers) as plain Python values."""
    import tvm

    if isinstance(value, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return value.value
    if isinstance(value, str | int | float) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(item) for item in value]


@dataclass(frozen=True)
class Blocks:
    """The blocks of an unscheduled function: each one's name and iteration count (in order),
    and whether any of them reduces."""

    domains: dict[str, int]
    reduces: bool


def blocks_of(function: tvm.IRModule) -> Blocks | None:
    """The blocks under ``function``'s root block, from one pass (``None``: it has none)."""
    import tvm

    schedule = tvm.s_tir.Schedule(function)
    try:
        blocks = _blocks(schedule)
    except tvm.s_tir.schedule.ScheduleError:
        return None
    domains: dict[str, int] = {}
    reduces = False
    for block in blocks:
        size = 1
        for variable in schedule.get(block).iter_vars:
            size *= int(variable.dom.extent)
            reduces = reduces or variable.iter_type == tvm.tirx.IterVar.CommReduce
        domains[schedule.get(block).name_hint] = size
    return Blocks(domains, reduces)


def covers_every_iteration(schedule: Any, domains: dict[str, int]) -> bool:
    """Whether each block of ``domains`` still in ``schedule`` sits in loops that run at least
    its iterations. A consumer fused into a producer's tiles (``reverse_compute_at``) runs only
    over the producer's extent: a padding block then never writes its border, whose memory
    holds whatever the memory planner last put there (TVM 0.27 samples such schedules, e.g.
    for EfficientNet-Lite0's padded depthwise convs)."""
    for block in _blocks(schedule):
        name = schedule.get(block).name_hint
        if name not in domains:
            continue  # split by decompose_reduction, or new (cache reads and writes)
        runs = 1
        for loop in schedule.get_loops(block):
            runs *= int(schedule.get(loop).extent)
        if runs < domains[name]:
            return False
    return True


def _blocks(schedule: Any) -> list[Any]:
    """The blocks of the schedule's ``main`` (those under its root block)."""
    return list(schedule.get_child_blocks(schedule.get_sblock("root")))


def light_context(module: tvm.IRModule, target: tvm.target.Target, seed: int) -> Any:
    """A MetaSchedule ``TuneContext`` with the :data:`RULES` design space, made without the
    blanket import of every tensor intrinsic that ``TuneContext()`` does first."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    space = ms.space_generator.PostOrderApply(sch_rules=RULES, postprocs=RULES, mutator_probs=RULES)
    context = ms.TuneContext.__new__(ms.TuneContext)
    context.__init_handle_by_constructor__(
        _ffi_api.TuneContext, module, target, space, None, "sampled", 1, seed,
        get_logging_func(get_logger(__name__)),
    )
    _ffi_api.TuneContextInitialize(context)
    return context


def _is_scheduled(function: tvm.IRModule) -> bool:
    return any(bool(f.attrs and f.attrs.get("tirx.is_scheduled", False)) for f in function.functions.values())
