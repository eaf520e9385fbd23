"""When TVM and the reference disagree, a third reference says which of the two it sides with.

For ONNX files the third one is ONNX's reference evaluator: written from the operator
specifications, independent of ONNX Runtime and of TVM. Its verdict tells a TVM bug (it sides
with ONNX Runtime) from a reference that is wrong or reads the specification otherwise (it sides
with TVM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.outputs import TVM_PYTHON, NamedArrays

#: What :attr:`Arbitration.sides_with` holds besides a runner's name.
BOTH, NEITHER = "both", "neither"


@dataclass(frozen=True)
class Arbitration:
    """The third reference's verdict: ``sides_with`` is the reference's name, TVM's, ``both``,
    ``neither``, or empty when it could not run (``error`` says why)."""

    arbiter: str
    reference: str
    sides_with: str
    error: str = ""

    def describe(self) -> str:
        """One paragraph of the failure message."""
        if self.error:
            return f"{self.arbiter} could not settle it: {self.error}"
        if self.sides_with == BOTH:
            return (f"{self.arbiter} is within tolerance of both {self.reference} and {TVM_PYTHON}: "
                    "the two differ by more than the tolerance while each stays within it of a third")
        if self.sides_with == NEITHER:
            return (f"{self.arbiter} sides with neither: its outputs differ from both {self.reference}'s "
                    f"and {TVM_PYTHON}'s")
        other = TVM_PYTHON if self.sides_with == self.reference else self.reference
        return (f"{self.arbiter} sides with {self.sides_with}: its outputs are within tolerance of "
                f"{self.sides_with}'s, not of {other}'s")

    def to_json(self) -> dict[str, str]:
        data = {"arbiter": self.arbiter, "sides_with": self.sides_with}
        return {**data, "error": self.error} if self.error else data


def arbitrate(deployment: Any, judge: Any) -> Arbitration | None:
    """Ask the source's third reference (if it has one) about ``deployment``'s disagreement;
    ``judge(expected, actual, expected_name, actual_name)`` applies the test's tolerances."""
    source, reference = deployment.source, deployment.reference_name
    if source is None or not source.arbiter_name or source.arbiter_name == reference:
        return None  # no third reference, or it already is the reference (ONNX Runtime could not run)
    try:
        third = source.arbiter(dict(deployment.inputs))
    except TvmDeployError as exc:
        return Arbitration(source.arbiter_name, reference, "", str(exc))
    if third is None:
        return None
    outputs = NamedArrays(third.outputs)
    with_reference = bool(judge(outputs, deployment.reference, third.runner, reference))
    with_tvm = bool(judge(outputs, deployment.outputs, third.runner, TVM_PYTHON))
    sides = {(True, True): BOTH, (True, False): reference, (False, True): TVM_PYTHON, (False, False): NEITHER}
    return Arbitration(third.runner, reference, sides[with_reference, with_tvm])
