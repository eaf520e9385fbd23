"""The verdict of localisation: the first operator whose TVM output leaves tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pytest_tvmdeploy.checks.localize.operator_case import OperatorCase

#: How prose names the frameworks that compute references.
_FRAMEWORKS = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}


@dataclass(frozen=True)
class Divergence:
    """The first intermediate (in topological order) whose TVM value leaves tolerance.

    ``index`` is its 0-based position among the graph's ``total`` tensor-valued intermediates;
    ``compared_before`` of the intermediates before it were compared and all were within
    tolerance (every one of them, unless the graph was too large to compare in one build).
    ``own_*`` describe the same operator computed by TVM from the framework's values of its
    inputs: outside tolerance means the operator itself computes differently; within means
    it only carries (and amplifies) differences from earlier operators. ``first_own_*`` name
    the first operator up to it that is outside tolerance on its own.
    """

    node: str
    op: str
    module_path: str | None
    tensor: str
    index: int
    total: int
    compared_before: int
    shape: tuple[int, ...]
    dtype: str
    tolerance: str
    mismatched: int
    elements: int
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...] | None = None
    worst_reference: Any = None
    worst_actual: Any = None
    problem: str | None = None  # shape or dtype differs: no elementwise statistics
    previous_node: str | None = None
    previous_op: str | None = None
    previous_max_abs_error: float | None = None
    own_max_abs_error: float | None = None
    own_within_tolerance: bool | None = None
    first_own_node: str | None = None
    first_own_op: str | None = None
    own_unchecked_reason: str | None = None  # why the own check did not run, if it did not
    reference_name: str = "reference"
    seconds: float = field(default=0.0, compare=False)
    upstream: OperatorCase | None = field(default=None, compare=False, repr=False)  # the operator to report

    @property
    def label(self) -> str:
        """``conv2d_3 (aten.conv2d.default, layer1.0.conv1)``."""
        details = ", ".join(part for part in (self.op, self.module_path) if part)
        return f"{self.node} ({details})"

    @property
    def summary(self) -> str:
        """One line: the operator and how far off it is."""
        if self.problem is not None:
            return f"first diverging operator: {self.label}: {self.problem}"
        return (f"first diverging operator: {self.label}: max abs error {self.max_abs_error:.3g}, "
                f"max rel error {self.max_rel_error:.3g}")

    def describe(self) -> str:
        """A paragraph for a failure message."""
        return " ".join(part for part in (
            self._where(), self._how_far(), self._before(), self._own()) if part)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, for reports."""
        data = asdict(replace(self, upstream=None))
        data["upstream"] = self.upstream.op if self.upstream is not None else None
        data["shape"] = list(self.shape)
        data["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
        data["summary"] = self.summary
        return data

    @property
    def _framework(self) -> str:
        return _FRAMEWORKS.get(self.reference_name, self.reference_name)

    def _where(self) -> str:
        tensor = f", value {self.tensor}" if self.tensor != self.node else ""
        return (f"first diverging operator: {self.label}{tensor}, intermediate {self.index + 1} of "
                f"{self.total}, {self.dtype} {list(self.shape)}:")

    def _how_far(self) -> str:
        if self.problem is not None:
            return f"{self.problem}."
        text = (f"{self.mismatched} of {self.elements} element(s) outside {self.tolerance}; "
                f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}")
        if self.worst_index is not None:
            text += (f"; worst element {list(self.worst_index)}: {self.reference_name}="
                     f"{self.worst_reference!r}, tvm={self.worst_actual!r}")
        return text + "."

    def _before(self) -> str:
        if self.index == 0:
            return "It is the first intermediate of the graph."
        if self.compared_before == self.index:
            head = "Everything before it is within tolerance"
        else:
            head = (f"The {self.compared_before} intermediates compared before it (of {self.index}) "
                    f"are within tolerance")
        if self.previous_node is None:
            return head + "."
        return (f"{head} (last compared: {self.previous_node} ({self.previous_op}), max abs error "
                f"{self.previous_max_abs_error:.3g}).")

    def _own(self) -> str:
        if self.own_within_tolerance is None:
            reason = f" ({self.own_unchecked_reason})" if self.own_unchecked_reason else ""
            return f"Not checked on {self._framework}'s values of its inputs{reason}."
        given = f"Computed by TVM from {self._framework}'s values of its inputs, it is"
        if not self.own_within_tolerance:
            return (f"{given} still outside tolerance (max abs error {self.own_max_abs_error:.3g}): "
                    f"the operator itself computes differently in TVM.")
        text = (f"{given} within tolerance (max abs error {self.own_max_abs_error:.3g}): it carries "
                f"differences from earlier operators")
        if self.first_own_node is not None:
            return text + (f"; the first operator outside tolerance on its own is {self.first_own_node} "
                           f"({self.first_own_op}).")
        return text + "; no operator up to it is outside tolerance on its own (accumulated rounding)."
