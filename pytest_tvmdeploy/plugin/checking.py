"""The standard checks of a marked test, run before its body by the plain :func:`check`: a
mismatch fails the test and leaves a reproducer folder. Also owns the snapshot options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.checks import CheckResult, check
from pytest_tvmdeploy.checks.snapshot_extension import SyrupySnapshot
from pytest_tvmdeploy.deployment.result import Deployment
from pytest_tvmdeploy.plugin.deployment import DEPLOYMENT_KEY, SETTINGS_KEY
from pytest_tvmdeploy.plugin.isolation import bisector_of, localizer_of
from pytest_tvmdeploy.plugin.records import RECORD_KEY
from pytest_tvmdeploy.plugin.session import SESSION_KEY, add_options, reproducer_folder
from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.report.reproducer import write_reproducer
from pytest_tvmdeploy.report.sensitivity import site_costs
from pytest_tvmdeploy.report.upstream import FOLDER as UPSTREAM_FOLDER
from pytest_tvmdeploy.report.upstream import SCRIPT as UPSTREAM_SCRIPT
from pytest_tvmdeploy.settings.marker import ModelTestSettings

SNAPSHOT_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, "check", "snapshot")


@pytest.fixture(autouse=True)
def _tvm_snapshot_assertion(request: pytest.FixtureRequest) -> None:
    """Keep syrupy's ``snapshot`` assertion of a marked test for its snapshot check."""
    if request.node.get_closest_marker("tvm_model") is not None:
        request.node.stash[SNAPSHOT_KEY] = request.getfixturevalue("snapshot")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Run the standard checks of a marked test before its body: a mismatch fails the test."""
    deployment = item.stash.get(DEPLOYMENT_KEY, None)
    if deployment is None:
        return
    settings = item.stash[SETTINGS_KEY]
    record = item.stash[RECORD_KEY]
    result = check(deployment, settings.tolerances, budget=settings.budget, localize=settings.localize,
                   snapshot=_snapshot_store(item, settings), localizer=localizer_of(item.config),
                   bisect=settings.bisect, bisector=bisector_of(item.config))
    _fill(record, result, deployment)
    if result.verdict is None:  # the test's own settings do not fit the model
        pytest.fail(f"{item.nodeid}: {result.describe()}", pytrace=False)
    if not result:
        # the Python VM within tolerance: what failed is the C++ program (it could not load or run
        # the module, or its outputs differ from the Python VM's)
        record.stopped("cpp" if result.verdict and result.cpp in ("failed", "differs") else "compare",
                       result.failures[0])
        folder = reproducer_folder(item)
        write_reproducer(folder, test_id=item.nodeid, deployment=deployment, rules=settings.tolerances,
                         actual=result.actual, budget=settings.budget, operator_case=result.operator_case)
        pytest.fail(_failure_message(result, deployment, folder), pytrace=False)


def _snapshot_store(item: pytest.Item, settings: ModelTestSettings) -> SyrupySnapshot | None:
    if not settings.snapshot:
        return None
    updating = bool(item.config.getoption("update_snapshots", False))
    return SyrupySnapshot(item.stash[SNAPSHOT_KEY], updating=updating, test_id=item.nodeid,
                          ratchet=item.config.stash[SESSION_KEY].ratchet)


def _fill(record: TestRecord, result: CheckResult, deployment: Deployment) -> None:
    summary = result.summary()
    record.max_abs_error = summary.get("max_abs_error")
    record.quant = summary.get("quant")
    record.sensitivity = site_costs(deployment.quantization)
    record.error_histogram = result.error_histogram
    record.divergence = result.divergence
    record.compiler_stage = result.compiler_stage
    record.arbitration = result.arbitration
    record.snapshot = result.snapshot
    if result.cpp is not None:
        record.cpp = result.cpp
        if result.cpp == "failed":
            record.cpp_note = deployment.cpp_error


def _failure_message(result: CheckResult, deployment: Deployment, folder: Path) -> str:
    upstream = ""
    if result.operator_case is not None:
        needs = "torch" if result.operator_case.framework == "pytorch" else "onnx"
        upstream = (f"\n  upstream reproducer of {result.operator_case.op} (needs only {needs}, numpy and tvm): "
                    f"python {folder / UPSTREAM_FOLDER / UPSTREAM_SCRIPT}")
    return (
        f"{result.describe()}\n"
        f"  model: {deployment.model} ({deployment.source_kind}), target: {deployment.target.json}\n"
        f"  reproducer: {folder}\n"
        f"  replay it with: python -m pytest_tvmdeploy.replay {folder}"
        f"{upstream}"
    )
