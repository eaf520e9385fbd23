"""How a test's TVM latency compares with its reference framework's, for the report tables."""

from __future__ import annotations

from pytest_tvmdeploy.report.record import TestRecord


def tvm_to_reference(record: TestRecord) -> float | None:
    """TVM's median call time over the reference's (PyTorch or ONNX Runtime), or ``None`` when
    either was not timed (a test that stopped early, or a device that did not run the model)."""
    tvm, reference = record.timings.get("run"), record.timings.get("reference")
    if not all(isinstance(value, (int, float)) and value > 0 for value in (tvm, reference)):
        return None
    return tvm / reference


def ratio_text(record: TestRecord) -> str:
    """``tvm_to_reference`` as ``"0.37x"``, or ``"-"``."""
    ratio = tvm_to_reference(record)
    return "-" if ratio is None else f"{ratio:.2f}x"
