"""A marked test's numbers as flat (name, value) properties: what JUnit XML and CI systems show."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TIMINGS = (("import", "tvm_import_s", 1.0), ("quantize", "tvm_quantize_s", 1.0), ("compile", "tvm_compile_s", 1.0),
            ("run", "tvm_run_ms", 1000.0), ("cpp_run", "tvm_cpp_run_ms", 1000.0), ("reference", "tvm_reference_ms", 1000.0))


def junit_properties(record: Mapping[str, Any]) -> list[tuple[str, object]]:
    """Flat properties of one test's record (only those it has)."""
    properties: list[tuple[str, object]] = [("tvm_target", record.get("target", ""))]
    if "source" in record:
        properties.append(("tvm_source", record["source"]))
    if "cache_hit" in record:
        properties.append(("tvm_artifact", "cached" if record["cache_hit"] else "built"))
    timings = record.get("timings", {})
    properties += [(name, round(timings[key] * factor, 6)) for key, name, factor in _TIMINGS if key in timings]
    for key, name in (("cpp", "tvm_cpp"), ("snapshot", "tvm_snapshot"), ("max_abs_error", "tvm_max_abs_error")):
        if record.get(key) is not None:
            properties.append((name, record[key]))
    quant = record.get("quant") or {}
    for key in ("cosine", "sqnr_db"):
        if quant.get(key) is not None:
            properties.append((f"tvm_int8_{key}", quant[key]))
    return properties
