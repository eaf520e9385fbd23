"""Find the first intermediate whose TVM value leaves tolerance, then check it on its own inputs.

One instrumented build returns every intermediate (or an evenly spaced share of them on large
graphs, narrowed down build by build); a second computes each operator up to the culprit from
the framework's values of its inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pytest_tvmdeploy.build.compile import compile_module
from pytest_tvmdeploy.checks.elementwise import OutputComparison, compare_arrays, in_reference_layout
from pytest_tvmdeploy.checks.localize.divergence import Divergence
from pytest_tvmdeploy.checks.localize.graph import GraphNode, InstrumentedGraph, LocalizationError
from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase
from pytest_tvmdeploy.checks.tolerances import Tolerance, ToleranceRules
from pytest_tvmdeploy.errors import ConfigError, brief
from pytest_tvmdeploy.sources.base import ModelFile, ModelSource
from pytest_tvmdeploy.targets import TargetSpec
from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors

if TYPE_CHECKING:
    import tvm

#: Intermediates returned by one instrumented build; larger graphs are narrowed in rounds.
MAX_OUTPUTS = 512

T = TypeVar("T")


def localize_divergence(
    source: ModelSource,
    inputs: Mapping[str, np.ndarray],
    target: TargetSpec,
    rules: ToleranceRules = ToleranceRules(),
    *,
    max_outputs: int = MAX_OUTPUTS,
    check_own: bool = True,
) -> Divergence | None:
    """The first operator whose TVM output leaves tolerance on ``inputs``, or ``None``.

    Builds the model for ``target`` with its intermediates as outputs, runs it in the Relax
    VM on this machine and compares each with the framework's value (``rules`` with the
    per-dtype defaults; a per-output override applies to the intermediate that is that
    output). With ``check_own``, the operators up to the culprit are rebuilt fed with the
    framework's values of their inputs, which tells a wrong operator from inherited error.
    Raises :class:`LocalizationError` when localisation itself fails.

    >>> divergence = localize_divergence(source, inputs, parse_target("llvm"))  # doctest: +SKIP
    >>> print(divergence.describe() if divergence else "every intermediate matches")  # doctest: +SKIP
    """
    start = time.perf_counter()
    if max_outputs < 1:
        raise ConfigError(f"max_outputs={max_outputs}: at least one intermediate per build is needed")
    if target.as_dict.get("kind") != "llvm":
        raise LocalizationError(f"target {target.json}: probes run in this process, so only llvm (CPU) targets")
    graph = _step(source, "reading the graph", lambda: instrument(source, inputs))
    if not graph.nodes:
        return None
    found = _step(source, "comparing intermediates", lambda: _first_divergence(graph, target, rules, max_outputs))
    if found is None:
        return None
    own, reason = None, "check_own=False"
    if check_own:
        try:
            own, reason = _own_comparisons(graph, found.index, target, rules, max_outputs), None
        except Exception as exc:  # noqa: BLE001 - the divergence found stands without this check
            reason = str(exc) if isinstance(exc, LocalizationError) else f"{type(exc).__name__}: {brief(exc)}"
    divergence = _divergence(graph, found, own, reason, time.perf_counter() - start)
    return replace(divergence, upstream=_operator_case(graph, divergence, rules))


def _operator_case(graph: InstrumentedGraph, divergence: Divergence, rules: ToleranceRules) -> OperatorCase | None:
    """The operator that is wrong on its own, cut out for an upstream reproducer (if there is one)."""
    if divergence.own_within_tolerance is None:
        return None
    name = divergence.node if divergence.own_within_tolerance is False else divergence.first_own_node
    node = next((n for n in graph.nodes if n.name == name), None)
    if node is None:
        return None
    try:
        case = graph.operator_case(node.value)
    except Exception:  # noqa: BLE001 - the divergence stands without its reproducer
        return None
    if case is None:
        return None
    dtype = case.expected[0].dtype if case.expected else np.dtype(divergence.dtype)
    tolerance = _tolerance(node, dtype, rules)
    return case.with_tolerance(tolerance.rtol, tolerance.atol)


def instrument(source: ModelSource, inputs: Mapping[str, np.ndarray]) -> InstrumentedGraph:
    """The graph of ``source`` specialised to ``inputs``, ready to probe."""
    from pytest_tvmdeploy.sources.onnx_file import OnnxSource
    from pytest_tvmdeploy.sources.torch_export import ExportedProgramSource

    if isinstance(source, ExportedProgramSource):
        from pytest_tvmdeploy.checks.localize.torch_graph import ExportedProgramGraph

        return ExportedProgramGraph(source, inputs)
    if isinstance(source, OnnxSource):
        from pytest_tvmdeploy.checks.localize.onnx_graph import OnnxGraph

        return OnnxGraph(source, inputs)
    raise LocalizationError(f"{source.description}: cannot localise a {source.kind or type(source).__name__} model")


def build_probe(module: tvm.IRModule, target: TargetSpec) -> Any:
    """Compile an instrumented module (the one place every probe is built)."""
    return compile_module(module, target)


@dataclass(frozen=True)
class _Found:
    index: int
    comparison: OutputComparison
    compared_before: int
    previous: tuple[int, OutputComparison] | None


def _first_divergence(graph: InstrumentedGraph, target: TargetSpec, rules: ToleranceRules,
                      max_outputs: int) -> _Found | None:
    """Compare evenly spaced intermediates, then only those between the last good and first bad."""
    candidates = list(range(len(graph.nodes)))
    compared_before, previous = 0, None
    while True:
        probe = _spread(candidates, max_outputs)
        comparisons = _traced_comparisons(graph, probe, target, rules)
        bad = next((k for k, c in enumerate(comparisons) if not c.passed), None)
        if bad is None:
            return None
        compared_before += bad
        if bad > 0:
            previous = (probe[bad - 1], comparisons[bad - 1])
        if len(probe) == len(candidates):
            return _Found(probe[bad], comparisons[bad], compared_before, previous)
        first = candidates.index(probe[bad - 1]) + 1 if bad > 0 else 0
        candidates = candidates[first:candidates.index(probe[bad]) + 1]


def _spread(candidates: list[int], count: int) -> list[int]:
    """``count`` evenly spaced candidates, always ending with the last one."""
    if len(candidates) <= count:
        return candidates
    return [candidates[(k + 1) * len(candidates) // count - 1] for k in range(count)]


def _traced_comparisons(graph: InstrumentedGraph, indices: list[int], target: TargetSpec,
                        rules: ToleranceRules) -> list[OutputComparison]:
    values = [graph.nodes[i].value for i in indices]
    actual = _run(graph.traced_module(values), target, graph.user_inputs)
    return _compare(graph, indices, graph.reference_values(values), actual, rules)


def _own_comparisons(graph: InstrumentedGraph, index: int, target: TargetSpec, rules: ToleranceRules,
                     max_outputs: int) -> list[tuple[int, OutputComparison]]:
    """Operators up to ``index`` (the last ``max_outputs``), each fed the framework's inputs."""
    indices = list(range(max(0, index + 1 - max_outputs), index + 1))
    values = [graph.nodes[i].value for i in indices]
    probe = graph.isolated_probe(values)
    actual = _run(probe.module, target, [*graph.user_inputs, *probe.feeds])
    return list(zip(indices, _compare(graph, indices, graph.reference_values(values), actual, rules)))


def _run(module: tvm.IRModule, target: TargetSpec, arguments: Sequence[np.ndarray]) -> list[np.ndarray]:

    executable = build_probe(module, target)
    try:
        result = relax_vm(executable)["main"](*tvm_tensors(arguments))
    except Exception as exc:  # noqa: BLE001
        raise LocalizationError(f"running the instrumented module failed: {brief(exc)}") from exc
    return flatten_outputs(result)


def _compare(graph: InstrumentedGraph, indices: list[int], references: list[np.ndarray], actual: list[np.ndarray],
             rules: ToleranceRules) -> list[OutputComparison]:
    if len(actual) != len(indices):
        raise LocalizationError(f"the instrumented module returned {len(actual)} values for {len(indices)} "
                                f"intermediates")
    comparisons = []
    for index, reference, value in zip(indices, references, actual):
        node = graph.nodes[index]
        reference = np.asarray(reference)
        tolerance = _tolerance(node, reference.dtype, rules)
        actual = in_reference_layout(reference, value)
        comparisons.append(compare_arrays(node.value, index, reference, actual, tolerance))
    return comparisons


def _tolerance(node: GraphNode, dtype: np.dtype, rules: ToleranceRules) -> Tolerance:
    """The rules' tolerance; per-output overrides only reach the intermediate that is that output."""
    if node.output_name is not None:
        return rules.for_output(node.output_name, node.output_index, dtype)
    return ToleranceRules(rtol=rules.rtol, atol=rules.atol).for_output(node.value, -1, dtype)


def _divergence(graph: InstrumentedGraph, found: _Found, own: list[tuple[int, OutputComparison]] | None,
                own_reason: str | None, seconds: float) -> Divergence:
    node, stats = graph.nodes[found.index], found.comparison
    previous = graph.nodes[found.previous[0]] if found.previous else None
    own_stats = dict(own).get(found.index) if own else None
    first_own = next((graph.nodes[i] for i, c in own if not c.passed), None) if own else None
    return Divergence(
        node=node.name, op=node.op, module_path=node.module_path, tensor=node.value,
        index=found.index, total=len(graph.nodes), compared_before=found.compared_before,
        shape=stats.shape, dtype=stats.dtype, tolerance=str(stats.tolerance),
        mismatched=stats.mismatched, elements=stats.total,
        max_abs_error=stats.max_abs_error, max_rel_error=stats.max_rel_error,
        worst_index=stats.worst_index, worst_reference=stats.worst_reference, worst_actual=stats.worst_actual,
        problem=stats.problem,
        previous_node=previous.name if previous else None,
        previous_op=previous.op if previous else None,
        previous_max_abs_error=found.previous[1].max_abs_error if found.previous else None,
        own_max_abs_error=own_stats.max_abs_error if own_stats else None,
        own_within_tolerance=own_stats.passed if own_stats else None,
        first_own_node=first_own.name if first_own else None,
        first_own_op=first_own.op if first_own else None,
        own_unchecked_reason=own_reason,
        reference_name=graph.reference_name,
        seconds=seconds,
    )


def _step(source: ModelSource, doing: str, work: Callable[[], T]) -> T:
    """Run one step; any failure becomes a :class:`LocalizationError` naming the model and step."""
    try:
        return work()
    except LocalizationError as exc:
        if str(exc).startswith(source.description):
            raise
        raise LocalizationError(f"{source.description}: {doing}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not replace the real failure
        raise LocalizationError(f"{source.description}: {doing}: {type(exc).__name__}: {brief(exc)}") from exc


def localize_model_file(source: ModelFile, inputs: Mapping[str, np.ndarray], target: TargetSpec,
                        rules: ToleranceRules) -> Divergence | None:
    """:func:`localize_divergence` on a model handed over as a file (in the sandbox worker)."""
    return localize_divergence(*source.open_at(inputs), target, rules)


#: :func:`localize_model_file` as the sandbox worker calls it.
LOCALIZE_FILE = "pytest_tvmdeploy.checks.localize.search:localize_model_file"
