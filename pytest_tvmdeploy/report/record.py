"""One typed record per marked test: what the plugin fills and every report reads.

The record travels as JSON (in the test report's user properties under xdist, and in
``report.json``), so it carries a schema version; :meth:`TestRecord.from_json` refuses a newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1

#: Test outcomes, as pytest reports them (``xpassed``: a strict expected failure that passed).
OUTCOMES = ("passed", "failed", "xfailed", "xpassed", "error", "skipped")

#: Values of :attr:`TestRecord.cpp`: what the C++ check found (``cpp_note`` says why for skipped/failed).
CPP_STATES = ("bitwise", "differs", "failed", "skipped", "off")


@dataclass
class TestRecord:
    """What one marked test did: where it stopped, how long each stage took, how close it came."""

    __test__ = False  # not a test class, whatever pytest's name patterns say

    test: str                              # pytest node id
    target: str                            # target label (``llvm``, ``llvm-znver4``)
    case: str | None = None                # parametrization id without the target label
    model: str | None = None               # the model's report name
    shape: str | None = None               # the sizes of the named input dimensions (batch=8), if any
    outcome: str | None = None             # one of OUTCOMES, once the test has finished
    stage: str | None = None               # where a test that did not pass stopped (import, build, compare, ...)
    reason: str | None = None              # the first line of why
    source: str | None = None              # source kind: torch, torchscript, onnx, exported_program
    reference_name: str | None = None      # pytorch, onnxruntime, or onnx-reference standing in for it
    reference_note: str | None = None      # why a stand-in computed the reference
    cache_hit: bool | None = None          # None: no artifact was reached
    tuned: bool = False
    sampled: int = 0                       # functions built with a sampled schedule (no tuning record)
    threads: int | None = None             # the threads TVM's runtime ran the model with
    artifact: str | None = None            # the .so's path
    device: str | None = None              # the runner that produced the TVM outputs (tvm, rpc:<key>)
    timings: dict[str, float] = field(default_factory=dict)
    cpp: str | None = None                 # one of CPP_STATES
    cpp_note: str | None = None            # why the C++ check was skipped or failed
    snapshot: str | None = None            # written, matched, failed, damaged
    max_abs_error: float | None = None
    quant: dict[str, float | None] | None = None          # int8 metrics: cosine, sqnr_db
    sensitivity: dict[str, Any] | None = None             # each int8 site's cost alone, a budget's choice
    error_histogram: dict[str, Any] | None = None
    divergence: dict[str, Any] | None = None              # the first diverging operator, or {"error": ...}
    compiler_stage: dict[str, Any] | None = None          # the stage bisection's verdict, or {"error": ...}
    arbitration: dict[str, str] | None = None             # which side a third reference took in a mismatch
    crash: str | None = None               # the TVM worker died (signal name), hung (timeout) or exited
    operators: dict[str, int] | None = None  # the frontend's operators and their counts (with --tvm-coverage)
    unsupported: list[str] | None = None   # operators the frontend said it cannot import
    schema: int = SCHEMA_VERSION

    @property
    def ran_cpp(self) -> bool:
        """Whether the C++ runner produced outputs (its times mean something)."""
        return self.cpp in ("bitwise", "differs")

    @property
    def model_name(self) -> str:
        """The model a record belongs to: its ``model``, else its test id."""
        return self.model or self.test

    def stopped(self, stage: str, reason: str) -> None:
        """Record where the test stopped and why (the first line of ``reason``, shortened)."""
        self.stage, self.reason = stage, first_line(reason)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (what ``report.json`` holds)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestRecord:
        """Read :meth:`to_json`'s dict back; unknown keys of an older writer are ignored."""
        schema = data.get("schema", SCHEMA_VERSION)
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise ValueError(f"test record schema {schema!r} is newer than this reader's ({SCHEMA_VERSION})")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
