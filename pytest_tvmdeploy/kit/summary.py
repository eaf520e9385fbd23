"""The kit's scoreboard at the end of a kit run (a plugin module of the kit): in the terminal, and
as the ``scoreboard`` section of ``report.json`` / ``report.html`` with ``--tvm-report=DIR``. An
earlier run's report (``--tvm-kit-baseline``, else the ``report.json`` already in ``DIR``) is the
baseline: its records are tallied the same way, and what newly passes or fails is listed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.kit.onnx_node import SUITE as ONNX_NODE
from pytest_tvmdeploy.kit.onnx_node import node_cases
from pytest_tvmdeploy.kit.scoreboard import Describe, Scoreboard, change_lines, changes, scoreboard, scoreboard_lines
from pytest_tvmdeploy.kit.torch_opinfo import SUITE as TORCH_OPINFO
from pytest_tvmdeploy.kit.torch_opinfo import describe_case
from pytest_tvmdeploy.kit.update_expected import kit_case
from pytest_tvmdeploy.plugin.records import REPORT_SECTIONS_KEY
from pytest_tvmdeploy.plugin.session import option_value
from pytest_tvmdeploy.report.record import TestRecord

#: The explicit baseline, read; or where a previous run's report may be, not read yet.
BASELINE_KEY = pytest.StashKey["Baseline | Path | None"]()
LINES_KEY = pytest.StashKey[list[str]]()


@dataclass(frozen=True)
class Baseline:
    """An earlier run's report: where it was read from, and its records."""

    path: Path
    records: list[TestRecord]


def read_baseline(path: Path) -> Baseline:
    """The records of ``path`` (a ``report.json``, or a folder holding one); ``UsageError`` names
    the file and the cause when it cannot be read."""
    path = path / "report.json" if path.is_dir() else path
    try:
        tests = json.loads(path.read_text())["tests"]
        return Baseline(path, [TestRecord.from_json(test) for test in tests])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise pytest.UsageError(f"--tvm-kit-baseline: cannot read {path} as a report.json: "
                                f"{type(exc).__name__}: {exc}") from exc


def pytest_configure(config: pytest.Config) -> None:
    """An explicit baseline is read now (a bad one stops the run before any work); the report.json
    already in ``--tvm-report``'s folder is read at the end, before this run's report replaces it."""
    explicit = option_value(config, "tvm_kit_baseline")
    folder = config.getoption("tvm_report", None)
    config.stash[BASELINE_KEY] = read_baseline(Path(explicit)) if explicit else \
        (Path(folder) / "report.json" if folder else None)


def _baseline(config: pytest.Config) -> Baseline | None:
    found = config.stash.get(BASELINE_KEY, None)
    if not isinstance(found, Path):
        return found
    try:  # a previous run's report: a damaged one only loses the comparison
        return read_baseline(found) if found.is_file() else None
    except pytest.UsageError:
        return None


def describer(suite: str) -> tuple[Describe, str]:
    """How the scoreboard names a kit case's unit: ONNX's node cases by their operator and opset,
    the catalogue's by their model."""
    if suite == ONNX_NODE:
        known = {case.name: (case.operator, case.opset) for case in node_cases()}
        return known.get, "operator"
    if suite == TORCH_OPINFO:  # PyTorch's OpInfo cases by their operator (no opsets)
        return describe_case, "operator"
    return (lambda model: (model, 0)), "model"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Tally the kit's cases before the report is written, so that it carries the scoreboard."""
    config = session.config
    recorder = config.pluginmanager.get_plugin("tvmdeploy-summary")
    records = [r for r in getattr(recorder, "records", []) if kit_case(r) is not None]
    if not records or hasattr(config, "workerinput"):
        return
    suite = option_value(config, "tvm_kit_suite")
    describe, unit = describer(suite)
    board = scoreboard(suite, records, describe, unit)
    lines = scoreboard_lines(board)
    section = board.to_json()
    baseline = _baseline(config)
    before = _baseline_board(baseline, suite, describe, unit)
    if before is not None:
        change = changes(before, board)
        lines += change_lines(change, board, str(baseline.path))
        section["changes"] = {"baseline": str(baseline.path), **change}
    config.stash[LINES_KEY] = lines
    config.stash.setdefault(REPORT_SECTIONS_KEY, {})["scoreboard"] = section


def _baseline_board(baseline: Baseline | None, suite: str, describe: Describe, unit: str) -> Scoreboard | None:
    """The baseline's tally of the same suite (``None`` when it ran another suite or nothing)."""
    if baseline is None:
        return None
    board = scoreboard(suite, [r for r in baseline.records if kit_case(r) is not None], describe, unit)
    return board if board.overall.total else None


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(LINES_KEY, None)
    if not lines:
        return
    terminalreporter.write_sep("-", "tvmdeploy kit scoreboard")
    for line in lines:
        terminalreporter.write_line(line)
