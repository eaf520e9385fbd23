"""The smallest prefix of a model's graph whose TVM build and run still crash.

Each probe builds and runs the graph up to one node (that node's value as the only output) in a
sandbox worker, where a crash kills only the worker; a binary search over the nodes finds the first
whose prefix crashes. The prefix, cut out with its inputs, becomes the crash's upstream script.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_tvmdeploy.checks.localize.graph import InstrumentedGraph
from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase
from pytest_tvmdeploy.sources.base import ModelFile, ModelSource
from pytest_tvmdeploy.targets import TargetSpec


@dataclass(frozen=True)
class CrashPrefix:
    """The first node whose prefix crashes: ``index`` of ``total`` graph values, after ``probes`` builds."""

    node: str
    op: str
    index: int
    total: int
    probes: int
    seconds: float
    case: OperatorCase | None = field(default=None, repr=False)

    def describe(self) -> str:
        return (f"smallest crashing prefix: the graph up to {self.node} ({self.op}), value {self.index + 1} of "
                f"{self.total}, crashes on its own ({self.probes} probe build(s), {self.seconds:.1f} s)")


def opened_graph(source: ModelSource | ModelFile, inputs: Mapping[str, np.ndarray]) -> InstrumentedGraph:
    """The graph of a model (a file is opened first) at these inputs' shapes."""
    from pytest_tvmdeploy.checks.localize.search import instrument

    if isinstance(source, ModelFile):
        source, inputs = source.open_at(inputs)
    return instrument(source, inputs)


def smallest_crashing_prefix(graph: InstrumentedGraph, crashes: Callable[[str], bool]) -> CrashPrefix | None:
    """Binary search for the first node whose prefix ``crashes`` (told a node's value name);
    ``None`` when even the whole graph's prefix does not crash on its own."""
    start = time.perf_counter()
    nodes = graph.nodes
    asked: dict[int, bool] = {}

    def crashed(index: int) -> bool:
        if index not in asked:
            asked[index] = crashes(nodes[index].value)
        return asked[index]

    if not nodes or not crashed(len(nodes) - 1):
        return None
    good, bad = -1, len(nodes) - 1
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (good, middle) if crashed(middle) else (middle, bad)
    node = nodes[bad]
    try:
        case = graph.prefix_case(node.value)
    except Exception:  # noqa: BLE001 - the prefix stands without its script
        case = None
    return CrashPrefix(node.name, node.op, bad, len(nodes), len(asked), time.perf_counter() - start, case)


def probe_prefix(source: ModelFile, inputs: Mapping[str, np.ndarray], target: TargetSpec, value: str) -> Any:
    """Build and run the graph up to ``value`` (in the sandbox worker, where it may crash)."""
    from pytest_tvmdeploy.build.compile import compile_module
    from pytest_tvmdeploy.vm import flatten_outputs, relax_vm, tvm_tensors

    graph = opened_graph(source, inputs)
    executable = compile_module(graph.traced_module([value]), target)
    return len(flatten_outputs(relax_vm(executable)["main"](*tvm_tensors(graph.user_inputs))))


#: :func:`probe_prefix` as the sandbox worker calls it.
PREFIX_FILE = "pytest_tvmdeploy.checks.localize.crash_prefix:probe_prefix"
