"""The standard checks of a deployment, as a plain function: :func:`check`.

What the plugin runs for every ``tvm_model`` test, usable without pytest::

    from pytest_tvmdeploy import check, deploy
    result = check(deploy(model, inputs), ToleranceRules(rtol=1e-4), snapshot=SnapshotFile(path))
    assert result, result.describe()

The Python VM's outputs are judged against the reference (elementwise, or by the int8 budget);
the C++ runner's must equal the Python VM's bit for bit; a snapshot store adds drift; a float
model that fails is localised to its first diverging operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_tvmdeploy.checks.arbiter import arbitrate
from pytest_tvmdeploy.checks.drift import SnapshotStore
from pytest_tvmdeploy.checks.elementwise import first_bitwise_difference
from pytest_tvmdeploy.checks.histogram import error_histogram
from pytest_tvmdeploy.checks.judge import Verdict, output_judge, verdict_summary
from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.stages.verdict import CPP_RUNTIME, StageVerdict
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import TvmDeployError, brief
from pytest_tvmdeploy.outputs import TVM_CPP, TVM_PYTHON, NamedArrays

#: ``localizer(deployment, tolerances)``: the first diverging operator (a Divergence) or ``None``.
Localizer = Callable[[Any, ToleranceRules], Any]
#: ``bisector(deployment, tolerances)``: the compiler stage that puts it out of tolerance (a StageVerdict).
Bisector = Callable[[Any, ToleranceRules], Any]


@dataclass(frozen=True)
class CheckResult:
    """The verdict of every standard check: truthy when all passed."""

    failures: tuple[str, ...]
    verdict: Verdict | None                 # the Python VM's outputs against the reference
    cpp: str | None = None                  # bitwise, differs, failed; None: C++ did not run
    snapshot: str | None = None             # written, matched, failed, damaged; None: no store
    error_histogram: dict[str, Any] | None = None
    divergence: dict[str, Any] | None = None  # the first diverging operator, or {"error": ...}
    compiler_stage: dict[str, Any] | None = None  # the stage bisection's verdict, or {"error": ...}
    actual: dict[str, NamedArrays] = field(default_factory=dict)  # runner → its outputs
    operator_case: Any = None  # the operator wrong on its own, cut out (an OperatorCase), if localised
    arbitration: dict[str, str] | None = None  # which side a third reference takes (see checks.arbiter)

    def __bool__(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        """Every failure, or a one-line summary of the passing verdict."""
        if self.failures:
            return "\n".join(self.failures)
        return self.verdict.describe() if self.verdict is not None else "passed"

    def summary(self) -> dict[str, Any]:
        """The numbers that go into a test record (max abs error, int8 metrics)."""
        return verdict_summary(self.verdict) if self.verdict is not None else {}


def check(
    deployment: Any,
    tolerances: ToleranceRules = ToleranceRules(),
    *,
    budget: QuantBudget | None = None,
    localize: bool = True,
    snapshot: SnapshotStore | None = None,
    localizer: Localizer | None = None,
    bisect: bool = True,
    bisector: Bisector | None = None,
) -> CheckResult:
    """Run the standard checks on ``deployment``.

    ``budget`` judges the outputs by int8 metrics instead of elementwise ``tolerances`` (for
    quantized models). ``localize`` names the first diverging operator of a failing float model
    (one or two extra builds). ``snapshot`` (a :class:`~pytest_tvmdeploy.checks.drift.SnapshotFile`
    or the plugin's syrupy store) adds the drift check against stored golden outputs.
    ``bisect`` names the compiler stage (pass, or tuning record) after which a failing float
    model's outputs leave tolerance (a few extra builds). ``localizer(deployment, tolerances)`` and
    ``bisector(deployment, tolerances)`` replace the in-process localisation and bisection (the
    plugin runs them in its sandbox worker).
    """
    try:
        tolerances.check_names(deployment.output_names)
    except TvmDeployError as exc:
        return CheckResult((str(exc),), None)
    judge = output_judge(tolerances, budget)
    verdict = judge(deployment.reference, deployment.outputs, deployment.reference_name, TVM_PYTHON)
    failures: list[str] = []
    divergence = stage = case = arbitration = None
    if not verdict:
        failures.append(verdict.describe())
        if budget is None:
            arbitration = arbitrate(deployment, judge)
            if arbitration is not None:
                failures.append(arbitration.describe())
        if localize and budget is None:
            paragraph, divergence, case = _localize(deployment, tolerances, localizer or _localize_here)
            failures.append(paragraph)
        if bisect and budget is None:
            paragraph, stage, whole = _bisect(deployment, tolerances, bisector or _bisect_here)
            failures.append(paragraph)
            case = case or whole
    cpp_failures, cpp = _cpp_check(deployment, judge, failed_already=bool(failures))
    failures += cpp_failures
    if cpp == "differs" and verdict:
        stage = StageVerdict(CPP_RUNTIME, note="the Python VM's outputs are within tolerance, the C++ "
                             "runner's differ from them").to_json()
    snapshot_status = None
    if snapshot is not None:
        snapshot_failures, snapshot_status = snapshot.check(deployment, tolerances, judge)
        failures += snapshot_failures
    actual = {TVM_PYTHON: deployment.outputs}
    if deployment.cpp_outputs is not None:
        actual[TVM_CPP] = deployment.cpp_outputs
    return CheckResult(tuple(failures), verdict, cpp, snapshot_status,
                       error_histogram(deployment.reference, deployment.outputs), divergence, stage, actual, case,
                       arbitration.to_json() if arbitration is not None else None)


def _cpp_check(deployment: Any, judge: Any, *, failed_already: bool) -> tuple[list[str], str | None]:
    """C++ against the Python VM (bitwise), and against the reference when they differ."""
    if deployment.cpp_error is not None:
        return [f"C++ runner: {deployment.cpp_error}"], "failed"
    if deployment.cpp_outputs is None:
        return [], None
    difference = first_bitwise_difference(deployment.outputs, deployment.cpp_outputs,
                                          expected_name=TVM_PYTHON, actual_name=TVM_CPP)
    if difference is None:
        # identical outputs would only repeat the Python VM's verdict
        note = [f"{TVM_CPP}: bitwise identical to the Python VM's outputs (same differences)"]
        return (note if failed_already else []), "bitwise"
    failures = [f"C++ outputs differ from the Python VM's: {difference}"]
    cpp_verdict = judge(deployment.reference, deployment.cpp_outputs, deployment.reference_name, TVM_CPP)
    if not cpp_verdict:
        failures.append(cpp_verdict.describe())
    return failures, "differs"


def _localize_here(deployment: Any, tolerances: ToleranceRules) -> Any:
    from pytest_tvmdeploy.checks.localize import localize_divergence

    return localize_divergence(deployment.source, deployment.inputs, deployment.target, tolerances)


def _bisect_here(deployment: Any, tolerances: ToleranceRules) -> Any:
    from pytest_tvmdeploy.checks.stages import bisect_model_file

    return bisect_model_file(deployment.source, deployment.inputs, deployment.reference, deployment.target,
                             tolerances, deployment.tuning_dir, sampled=deployment.sampled > 0)


def _bisect(deployment: Any, tolerances: ToleranceRules,
            bisector: Bisector) -> tuple[str, dict[str, Any], Any]:
    """Which compiler stage puts the outputs out of tolerance: a paragraph of the failure, its
    record, and (for a small model only a whole build breaks) the model cut out for upstream."""
    if deployment.source is None:
        reason = "the model source is not available"
    elif not deployment.target.runs_here:
        reason = f"target {deployment.target.json} does not run on this machine"
    else:
        try:
            verdict = bisector(deployment, tolerances)
        except TvmDeployError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not replace the real failure
            reason = f"{type(exc).__name__}: {brief(exc)}"
        else:
            return verdict.describe(), verdict.to_json(), verdict.upstream
    return f"could not bisect the compiler stages: {reason}", {"error": reason}, None


def _localize(deployment: Any, tolerances: ToleranceRules,
              localizer: Localizer) -> tuple[str, dict[str, Any] | None, Any]:
    """Where the outputs start to diverge: a paragraph of the failure, its record, and the
    operator that is wrong on its own, cut out (or ``None``)."""
    if deployment.source is None:
        return "could not localise the divergence: the model source is not available", {"error": "no source"}, None
    try:
        divergence = localizer(deployment, tolerances)
    except TvmDeployError as exc:
        return f"could not localise the divergence: {exc}", {"error": str(exc)}, None
    if divergence is None:
        return "no intermediate result leaves tolerance in an instrumented (unfused, untuned) build", None, None
    return divergence.describe(), divergence.to_json(), divergence.upstream
