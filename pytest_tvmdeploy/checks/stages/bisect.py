"""Name the compiler stage that breaks a model: rebuild it with more and more of the build's
optional passes and find the first whose outputs leave tolerance.

The build's passes are data (:mod:`pytest_tvmdeploy.build.passes`): the required ones make any
build run, the optional ones (folding, fusion, memory planning, TIR simplification and
vectorisation, LLVM's optimisation) can each be left out. Build ``k`` of the bisection runs the
first ``k`` optional passes in pipeline order and skips the rest; build 0 is the imported module
with only the lowering it needs. A wrong build 0 puts the fault in the import (or an operator's
legalization); otherwise a binary search finds the first pass whose build is wrong. Tuning records
are one more optional step (right after fusion, where a tuned build applies them); when they are
the culprit, a second search over the applied records names the task whose schedule is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.build.passes import (
    PREPARE,
    BuildPass,
    PassPipeline,
    build_pipeline,
    prepare_passes,
)
from pytest_tvmdeploy.checks.elementwise import compare, in_reference_layout
from pytest_tvmdeploy.checks.stages.verdict import (
    CPP_RUNTIME,
    EXPORTED,
    IMPORT,
    RECORDS,
    SAMPLED,
    UNDECIDED,
    Probe,
    StageVerdict,
)
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import brief
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources.base import ModelFile, ModelSource
from pytest_tvmdeploy.targets import TargetSpec
from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors

#: The step that applies tuning records, as an optional pass after the last pass of fusion.
RECORDS_STEP = BuildPass(RECORDS, RECORDS, lambda: None, required=False)
#: The step that gives the functions left without a record a sampled schedule, right after it.
SAMPLED_STEP = BuildPass(SAMPLED, SAMPLED, lambda: None, required=False)
#: The steps that are not passes of the pipeline.
SCHEDULE_STEPS = frozenset({RECORDS, SAMPLED})


class StageBisection:
    """Builds of one imported module with a chosen share of the optional passes (and records,
    and sampled schedules)."""

    def __init__(self, module: Any, inputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                 target: TargetSpec, rules: ToleranceRules, records: Any = None,
                 pipeline: PassPipeline | None = None, sampled: bool = False) -> None:
        self.module, self.inputs, self.reference = module, dict(inputs), dict(reference)
        self.target, self.rules, self.records = target, rules, records
        self.tuned = records is not None and not records.is_empty
        self.pipeline = pipeline or build_pipeline(blocked=self.tuned)
        self.sampled = sampled
        self.steps = self._steps()
        self.probes: list[Probe] = []
        self._prepared_module: Any = None

    def _steps(self) -> list[BuildPass]:
        import tvm

        scheduled = self.tuned or self.sampled
        with tvm.transform.PassContext():
            optional = self.pipeline.optional(prepare=scheduled, config=tvm.transform.PassContext.current().config)
        if not scheduled:
            return optional
        last_prepare = max(i for i, p in enumerate(optional) if p.stage == PREPARE)
        steps = [RECORDS_STEP] * self.tuned + [SAMPLED_STEP] * self.sampled
        return optional[:last_prepare + 1] + steps + optional[last_prepare + 1:]

    def probe(self, enabled: int, keep: Callable[[Any], bool] | None = None, label: str | None = None,
              sample: Callable[[str], bool] | None = None) -> Probe:
        """Build with the first ``enabled`` optional steps (and, if records apply, those ``keep``
        chooses; if schedules are sampled, for the functions ``sample`` chooses), run it here and
        compare with the reference."""
        label = label or (f"through {self.steps[enabled - 1].name}" if enabled else "required passes only")
        return self.probe_with({step.name for step in self.steps[:enabled]}, label, keep, sample)

    def probe_with(self, enabled: set[str], label: str, keep: Callable[[Any], bool] | None = None,
                   sample: Callable[[str], bool] | None = None) -> Probe:
        """Build with only the optional steps named in ``enabled``; see :meth:`probe`."""
        skipped = {step.name for step in self.steps} - enabled
        try:
            outputs = self._run(self._build(self.pipeline.without(skipped - SCHEDULE_STEPS), enabled, keep, sample))
        except Exception as exc:  # noqa: BLE001 - a build the bisection cannot make is a finding, not a crash
            found = Probe(label, None, error=f"{type(exc).__name__}: {brief(exc)}")
        else:
            verdict = compare(self.reference, outputs, self.rules)
            found = Probe(label, bool(verdict), verdict.max_abs_error)
        self.probes.append(found)
        return found

    def _build(self, pipeline: PassPipeline, enabled: set[str], keep: Callable[[Any], bool] | None,
               sample: Callable[[str], bool] | None) -> Any:
        from pytest_tvmdeploy.build.compile import compile_module
        from pytest_tvmdeploy.tuning.apply import build_with_records

        if not self.tuned and not self.sampled:
            return compile_module(self.module, self.target, pipeline)
        choose = keep if RECORDS in enabled else (lambda task: False)
        return build_with_records(self.module, self.target, self.records, pipeline, keep=choose,
                                  sampled=self.sampled and SAMPLED in enabled, sample=sample).executable

    def _run(self, executable: Any) -> dict[str, np.ndarray]:
        values = flatten_outputs(relax_vm(executable)["main"](*tvm_tensors(self.inputs.values())))
        names = list(self.reference)
        if len(values) != len(names):
            return {f"output_{i}": v for i, v in enumerate(values)}
        return {name: in_reference_layout(self.reference[name], value) for name, value in zip(names, values)}

    def applied_tasks(self) -> list[Any]:
        """The tasks whose records a tuned build applies."""
        from pytest_tvmdeploy.tuning.apply import chosen_records

        return chosen_records(self.records, self._prepared(), self.target)

    def sampled_functions(self) -> list[str]:
        """The functions a build with every step gives a sampled schedule (those without a record)."""
        from pytest_tvmdeploy.tuning.sampled import unscheduled_tasks
        from pytest_tvmdeploy.tuning.targets import tuning_target

        recorded = {task.task for task in self.applied_tasks()} if self.tuned else set()
        return [task.name for task in unscheduled_tasks(self._prepared(), tuning_target(self.target))
                if task.name not in recorded]

    def _prepared(self) -> Any:
        """The module as a build with every pass prepares it for records (made once)."""
        from pytest_tvmdeploy.tuning.targets import tuning_target
        from pytest_tvmdeploy.tuning.tasks import prepare_module

        if self._prepared_module is None:
            self._prepared_module = prepare_module(self.module, tuning_target(self.target), self.pipeline)
        return self._prepared_module


def bisect_stages(module: Any, inputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                  target: TargetSpec, rules: ToleranceRules = ToleranceRules(), *, records: Any = None,
                  pipeline: PassPipeline | None = None, sampled: bool = False) -> StageVerdict:
    """The stage whose passes first put ``module``'s outputs on ``inputs`` outside tolerance of
    ``reference``; ``records`` (a tuning database) are applied as the tuned build applies them,
    and with ``sampled`` the functions left without one get sampled schedules, as builds do."""
    start = time.perf_counter()
    search = StageBisection(module, inputs, reference, target, rules, records, pipeline, sampled)
    verdict = _search(search)
    return StageVerdict(**{**verdict, "probes": tuple(search.probes), "seconds": time.perf_counter() - start})


def _search(search: StageBisection) -> dict[str, Any]:
    total = len(search.steps)
    full = search.probe(total, label="every pass")
    if full.passed is None:
        return {"stage": UNDECIDED, "note": f"the build with every pass fails here: {full.error}"}
    if full.passed:
        return {"stage": EXPORTED, "note": "the same passes built in this process give outputs within "
                "tolerance: the difference comes from the exported library, its loading or a dynamic-shape dispatch"}
    minimal = search.probe(0)
    if minimal.passed is None:
        return {"stage": UNDECIDED, "note": f"the build with only the required passes fails: {minimal.error}"}
    if not minimal.passed:
        return {"stage": IMPORT, "max_abs_error": minimal.max_abs_error}
    good, bad = 0, total
    errors: dict[int, float | None] = {total: full.max_abs_error}
    while bad - good > 1:
        middle = (good + bad) // 2
        found = search.probe(middle)
        if found.passed:
            good = middle
        else:
            bad, errors[middle] = middle, found.max_abs_error
    culprit = search.steps[bad - 1]
    result: dict[str, Any] = {"stage": culprit.stage, "culprit": culprit.name, "max_abs_error": errors.get(bad),
                              "last_good": search.steps[good - 1].name if good else None}
    if search.tuned or search.sampled:
        enabled = {step.name for step in search.steps[:bad]}
        result["relax_passes"] = tuple(p.name for p in prepare_passes() if p.required or p.name in enabled)
    if culprit.name == RECORDS:
        return {**result, **_records_search(search, bad)}
    if culprit.name == SAMPLED:
        return {**result, "culprit": _sampled_search(search, bad)}
    if good:
        alone = _alone(search, bad - 1)
        result["alone"] = None if alone.passed is None else not alone.passed
        if alone.passed:
            result["partner"] = _partner(search, bad - 1)
    return result


def _partner(search: StageBisection, index: int) -> str | None:
    """The earliest pass before ``index`` that, with the passes before it, makes the pass at
    ``index`` wrong: the first ``k`` passes plus the culprit are wrong, the first ``k - 1`` are not."""
    culprit = search.steps[index].name
    good, bad = 0, index

    def wrong(count: int) -> bool:
        names = {step.name for step in search.steps[:count]} | {culprit}
        return search.probe_with(names, f"through {search.steps[count - 1].name} with {culprit}").passed is False

    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (good, middle) if wrong(middle) else (middle, bad)
    return search.steps[bad - 1].name if bad > 0 else None


def _alone(search: StageBisection, index: int) -> Probe:
    """The required passes plus only the optional pass at ``index``."""
    name = search.steps[index].name
    return search.probe_with({name}, f"{name} alone")


def _records_search(search: StageBisection, enabled: int) -> dict[str, Any]:
    """Narrow the applied records down to one task whose schedule makes the outputs wrong."""
    candidates = search.applied_tasks()
    names = [task.task for task in candidates]
    while len(candidates) > 1:
        half = len(candidates) // 2
        for part in (candidates[:half], candidates[half:]):
            chosen = {task.task for task in part}
            label = "records of " + ", ".join(sorted(chosen)) if len(chosen) <= 3 else f"{len(chosen)} records"
            if search.probe(enabled, keep=lambda task, c=chosen: task.task in c, label=label).passed is False:
                candidates = part
                break
        else:
            return {"culprit": f"{len(candidates)} records together", "note": "no single record of "
                    f"{', '.join(sorted(t.task for t in candidates))} is wrong on its own"}
    if not candidates:
        return {"culprit": "no record", "note": f"the build applies none of {names}"}
    task = candidates[0]
    return {"culprit": f"{task.task} (workload {task.shash})"}


def _sampled_search(search: StageBisection, enabled: int) -> str:
    """The function whose sampled schedule makes the outputs wrong, found by halving the set of
    functions that keep plain loops (a record found for a function makes the sampler skip it)."""
    functions = search.sampled_functions()
    if not functions:
        return "no sampled schedule (the build samples none)"
    candidates = list(functions)
    while len(candidates) > 1:
        half = candidates[:len(candidates) // 2]
        wrong = search.probe(enabled, label=f"{len(half)} sampled schedule(s)",
                             sample=lambda name, chosen=frozenset(half): name in chosen).passed is False
        candidates = half if wrong else candidates[len(half):]
    return candidates[0]


def bisect_model_file(source: ModelSource | ModelFile, inputs: Mapping[str, np.ndarray],
                      reference: Mapping[str, np.ndarray], target: TargetSpec, rules: ToleranceRules,
                      tuning_dir: Path | None = None, sampled: bool = False) -> StageVerdict:
    """:func:`bisect_stages` on a model (or one handed over as a file, in the sandbox worker),
    imported at these inputs' shapes, with the records of ``tuning_dir`` when the artifact applied
    them and sampled schedules where it had them."""
    from pytest_tvmdeploy.tuning import read_database

    if isinstance(source, ModelFile):
        source, inputs = source.open_at(inputs)
    records = read_database(Path(tuning_dir)) if tuning_dir is not None else None
    module = source.to_relax(ShapeSignature.of(inputs))
    verdict = bisect_stages(module, inputs, reference, target, rules, records=records, sampled=sampled)
    return replace(verdict, upstream=_whole_model_case(verdict, source, inputs, reference, rules))


#: Verdicts that name no pass of the build.
NOT_A_PASS = frozenset({IMPORT, RECORDS, SAMPLED, EXPORTED, UNDECIDED, CPP_RUNTIME})
#: The largest model written out whole as an upstream reproducer (its script stays short).
MAX_WHOLE_MODEL = 25


def _whole_model_case(verdict: StageVerdict, source: ModelSource, inputs: Mapping[str, np.ndarray],
                      reference: Mapping[str, np.ndarray], rules: ToleranceRules) -> Any:
    """A small model whose fault only a whole build shows (a TVM pass, not its import): the model
    itself, with the Relax passes the wrong build ran, as an upstream reproducer (else ``None``)."""
    from pytest_tvmdeploy.checks.localize.search import instrument

    added = {added.name for _, added in build_pipeline().extra}
    own = {p.name for p in prepare_passes() if p.own}
    if verdict.stage in NOT_A_PASS or verdict.culprit is None or verdict.culprit in added | own \
            or set(verdict.relax_passes) & added:
        return None
    try:
        case = instrument(source, inputs).whole_case(MAX_WHOLE_MODEL)
    except Exception:  # noqa: BLE001 - the verdict stands without its reproducer
        return None
    if case is None:
        return None
    name, first = next(iter(reference.items()))
    tolerance = rules.for_output(name, 0, np.asarray(first).dtype)
    passes = tuple(name for name in verdict.relax_passes if name not in own)  # TVM has not got them
    return replace(case, passes=passes, rtol=tolerance.rtol, atol=tolerance.atol)


#: :func:`bisect_model_file` as the sandbox worker calls it.
BISECT_FILE = "pytest_tvmdeploy.checks.stages.bisect:bisect_model_file"

