"""The kit's scoreboard at the end of a kit run (a plugin module of the kit): in the terminal and,
with ``--tvm-report=DIR``, as ``DIR/scoreboard.json``; a scoreboard already in ``DIR`` from an
earlier run is the baseline the terminal compares against (newly passing / newly failing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.files import write_atomic
from pytest_tvmdeploy.kit.onnx_node import SUITE as ONNX_NODE
from pytest_tvmdeploy.kit.onnx_node import node_cases
from pytest_tvmdeploy.kit.scoreboard import Describe, changes, scoreboard, scoreboard_lines
from pytest_tvmdeploy.kit.update_expected import kit_case
from pytest_tvmdeploy.plugin.session import option_value

SCOREBOARD = "scoreboard.json"
BASELINE_KEY = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    """Read the baseline before this run's report replaces it."""
    folder = config.getoption("tvm_report", None)
    path = Path(folder) / SCOREBOARD if folder else None
    try:
        config.stash[BASELINE_KEY] = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        config.stash[BASELINE_KEY] = None  # a damaged baseline only loses the comparison


def describer(suite: str) -> tuple[Describe, str]:
    """How the scoreboard names a kit case's unit: ONNX's node cases by their operator and opset,
    the catalogue's by their model."""
    if suite == ONNX_NODE:
        known = {case.name: (case.operator, case.opset) for case in node_cases()}
        return known.get, "operator"
    return (lambda model: (model, 0)), "model"


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    recorder = config.pluginmanager.get_plugin("tvmdeploy-summary")
    records = [r for r in getattr(recorder, "records", []) if kit_case(r) is not None]
    if not records or hasattr(config, "workerinput"):
        return
    suite = option_value(config, "tvm_kit_suite")
    describe, unit = describer(suite)
    board = scoreboard(suite, records, describe, unit)
    terminalreporter.write_sep("-", "tvmdeploy kit scoreboard")
    lines = scoreboard_lines(board)
    baseline = config.stash.get(BASELINE_KEY, None)
    if baseline is not None and baseline.get("suite") == suite:
        lines += changes(baseline, board)
    for line in lines:
        terminalreporter.write_line(line)
    folder = config.getoption("tvm_report", None)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(folder) / SCOREBOARD, json.dumps(board.to_json(), indent=1) + "\n")
