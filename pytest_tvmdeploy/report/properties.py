"""A marked test's numbers as flat (name, value) properties: what JUnit XML and CI systems show."""

from __future__ import annotations

from pytest_tvmdeploy.report.record import TestRecord

_TIMINGS = (("import", "tvm_import_s", 1.0), ("quantize", "tvm_quantize_s", 1.0), ("compile", "tvm_compile_s", 1.0),
            ("run", "tvm_run_ms", 1000.0), ("cpp_run", "tvm_cpp_run_ms", 1000.0),
            ("reference", "tvm_reference_ms", 1000.0))


def junit_properties(record: TestRecord) -> list[tuple[str, object]]:
    """Flat properties of one test's record (only those it has)."""
    properties: list[tuple[str, object]] = [("tvm_target", record.target)]
    if record.source is not None:
        properties.append(("tvm_source", record.source))
    if record.cache_hit is not None:
        properties.append(("tvm_artifact", "cached" if record.cache_hit else "built"))
    timings = record.timings
    properties += [(name, round(timings[key] * factor, 6)) for key, name, factor in _TIMINGS if key in timings]
    optional = (("tvm_stage", record.stage), ("tvm_crash", record.crash), ("tvm_cpp", record.cpp),
                ("tvm_cpp_note", record.cpp_note), ("tvm_snapshot", record.snapshot),
                ("tvm_max_abs_error", record.max_abs_error))
    properties += [(name, value) for name, value in optional if value is not None]
    quant = record.quant or {}
    for key in ("cosine", "sqnr_db"):
        if quant.get(key) is not None:
            properties.append((f"tvm_int8_{key}", quant[key]))
    return properties
