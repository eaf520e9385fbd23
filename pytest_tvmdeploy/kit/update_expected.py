"""Rewrite the kit's expected failures from a run's report:
``python -m pytest_tvmdeploy.kit.update_expected REPORT_JSON [--file expected_failures.json]``.

For every kit case the report ran on a target: failing or erroring cases are listed with their
stage and reason, those that crashed TVM's worker apart from them (with the signal, ``timeout``
or ``memory-limit`` too), passing ones are removed from both. Cases and targets the run did not
cover stay as they were, so a partial run (``--tvm-kit-models=...``) updates just its part. The
file is written in the split format (see :mod:`pytest_tvmdeploy.kit.expected`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.kit.catalogue import CATALOGUE, QDQ, SOURCES
from pytest_tvmdeploy.kit.expected import (
    CRASHES,
    EXPECTED_FAILURES,
    FAILURES,
    SUITE_FILES,
    Expected,
    Listing,
    count,
    dump_expected,
    empty_listing,
    listed_as,
    parse_expected,
    read_expected,
    shape_case,
    whole_case,
)
from pytest_tvmdeploy.kit.onnx_node import SUITE as ONNX_NODE
from pytest_tvmdeploy.kit.torch_opinfo import SUITE as TORCH_OPINFO
from pytest_tvmdeploy.report.record import TestRecord

#: The file the kit's tests live in (a record from another file is not a kit case).
KIT_FILE = "test_kit.py"
#: Every source form a kit case can have (an operator suite's case has its suite's name).
KIT_SOURCES = frozenset((*SOURCES, QDQ, ONNX_NODE, TORCH_OPINFO))


def updated(expected: Mapping[str, Any], records: Sequence[TestRecord]) -> Expected:
    """``expected`` (either format) with the outcomes of ``records`` applied."""
    result = parse_expected(expected)
    for record in records:
        case = kit_case(record)
        if case is not None:
            _apply(result.setdefault(record.target, empty_listing()), case, record)
    return result


def _apply(listing: Listing, case: str, record: TestRecord) -> None:
    """One record's outcome on its target's sets: a case is listed in one set at most."""
    _per_shape(listing, case)
    if record.outcome in ("passed", "xpassed"):
        _drop(listing, case)
    elif record.outcome == "xfailed" and listed_as(listing, case) is not None:
        pass  # an expected failure keeps the set and the reason it was listed with
    elif record.outcome in ("failed", "error", "xfailed"):
        _drop(listing, case)
        kind = CRASHES if record.crash else FAILURES
        listing[kind][case] = _reason(record)


def _per_shape(listing: Listing, case: str) -> None:
    """A model listed at every shape (``gru_seq/onnx``) becomes listed at each shape, so one
    shape's outcome changes only its own line."""
    whole = whole_case(case)
    listed = listed_as(listing, whole) if whole != case else None
    if listed is None:
        return
    kind, reason = listed
    _drop(listing, whole)
    entry = next((e for e in CATALOGUE if whole.startswith(f"{e.name}/")), None)
    for shape in entry.shape_ids if entry is not None else ():
        listing[kind][shape_case(whole, shape)] = reason


def _drop(listing: Listing, case: str) -> None:
    for cases in listing.values():
        cases.pop(case, None)


def kit_case(record: TestRecord) -> str | None:
    """``"<model>/<source>"`` (``"<model>/<source>[<shape>]"`` at one shape of a model with named
    dimensions) of a kit test's record, or ``None`` for any other test."""
    if not record.case or not record.model or not _in_kit_file(record.test):
        return None
    prefix, suffix = f"{record.model}-", f"-{record.shape}" if record.shape else ""
    if not record.case.startswith(prefix) or not record.case.endswith(suffix):
        return None
    source = record.case[len(prefix):len(record.case) - len(suffix)]
    return shape_case(f"{record.model}/{source}", record.shape) if source in KIT_SOURCES else None


def report_suite(records: Sequence[TestRecord]) -> str | None:
    """The operator suite (``onnx-node``, ``torch-opinfo``) whose kit cases the records hold: a
    suite's case has the suite's name as its source (``abs-float32/torch-opinfo``); ``None``
    for the catalogue's models."""
    for record in records:
        source = whole_case(kit_case(record) or "").rpartition("/")[2]
        if source in SUITE_FILES:
            return source
    return None


def _in_kit_file(node_id: str) -> bool:
    """Whether the node id's file part (before the first ``::``) is the kit's test file."""
    return PurePosixPath(node_id.split("::", 1)[0]).name == KIT_FILE


def _reason(record: TestRecord) -> str:
    """``"<stage>: <reason>"`` (``"<stage>: <crash>: <reason>"`` for a crash), with folders cut
    from paths: they differ per machine."""
    text = re.sub(r"/\S*/([^/\s:]+)", r"\1", record.reason or "failed")
    crash = f"{record.crash}: " if record.crash else ""
    return f"{record.stage or 'setup'}: {crash}{text}"


def read_records(report: Path) -> list[TestRecord]:
    """The test records of a ``report.json``."""
    return [TestRecord.from_json(test) for test in json.loads(report.read_text())["tests"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_tvmdeploy.kit.update_expected", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="report.json written by --tvm-report")
    parser.add_argument("--file", type=Path, help="the expected-failures file to rewrite (default: the kit's "
                        "file of the suite the report ran)")
    args = parser.parse_args(argv)
    records = read_records(args.report)
    if args.file is None:
        suite = report_suite(records)
        args.file = SUITE_FILES[suite] if suite is not None else EXPECTED_FAILURES
    expected = read_expected(args.file) if args.file.exists() else {}
    new = updated(expected, records)
    write_atomic(args.file, dump_expected(new))
    print(f"{args.file}: {count(expected, FAILURES)} -> {count(new, FAILURES)} expected failure(s), "
          f"{count(expected, CRASHES)} -> {count(new, CRASHES)} expected crash(es)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
