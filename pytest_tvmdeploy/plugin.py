"""pytest hooks, options, the ``tvm_model`` marker and fixtures: glue over the plain API."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec
from pytest_tvmdeploy.check.elementwise import first_bitwise_difference
from pytest_tvmdeploy.deploy.pipeline import Deployment, deploy
from pytest_tvmdeploy.check.histogram import error_histogram
from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.inputs import seed_for
from pytest_tvmdeploy.check.judge import output_judge, verdict_summary
from pytest_tvmdeploy.kit.catalogue import select as select_kit_models
from pytest_tvmdeploy.report.reproducer import write_reproducer
from pytest_tvmdeploy.report.html import write_html_report
from pytest_tvmdeploy.report.json_report import report_document, write_json_report
from pytest_tvmdeploy.report.properties import junit_properties
from pytest_tvmdeploy.report.terminal import format_table
from pytest_tvmdeploy.runners.cpp import SessionCppRunner
from pytest_tvmdeploy.settings.session import (
    CPP_MODES,
    MARKER,
    MARKER_ARGUMENTS,
    ModelTestSettings,
    SessionSettings,
    model_test_settings,
    session_settings,
)
from pytest_tvmdeploy.check.snapshot_file import check_snapshot

SESSION_KEY = pytest.StashKey[SessionSettings]()
DEPLOYMENT_KEY = pytest.StashKey[Deployment]()
SETTINGS_KEY = pytest.StashKey[ModelTestSettings]()
RECORD_KEY = pytest.StashKey[dict]()
SNAPSHOT_KEY = pytest.StashKey[Any]()
CPP_RUNNER_KEY = pytest.StashKey[SessionCppRunner]()
PROPERTY = "tvmdeploy"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tvmdeploy", "TVM deployment checks (pytest-tvmdeploy)")
    group.addoption(
        "--tvm-target", action="append", dest="tvm_target", default=None, metavar="TARGET",
        help=f"TVM target for tvm_model tests: 'llvm', 'llvm -mcpu=znver4' or JSON "
             f"'{{\"kind\": \"llvm\", \"mcpu\": \"znver4\"}}'. Repeat to run each test per target. "
             f"Default: ini tvm_target, else {DEFAULT_TARGET}.",
    )
    group.addoption("--tvm-rtol", type=float, default=None, metavar="R",
                    help="relative tolerance for floating outputs of tests whose marker sets none")
    group.addoption("--tvm-atol", type=float, default=None, metavar="A",
                    help="absolute tolerance for floating outputs of tests whose marker sets none")
    group.addoption("--tvm-cache-dir", default=None, metavar="DIR",
                    help="artifact cache folder (default: ini tvm_cache_dir, else <pytest cache>/tvmdeploy)")
    group.addoption("--tvm-cpp", default=None, choices=CPP_MODES,
                    help="also run every .so from C++ (cpp_check/, linked to libtvm_runtime) in a child "
                         "process: auto (default; skipped with a reason when CMake or a C++ compiler is "
                         "missing), on (missing toolchain is an error), off")
    group.addoption("--tvm-snapshot", default=None, choices=("on", "off"),
                    help="keep each marked test's reference outputs as a syrupy snapshot under "
                         "__snapshots__/ and check PyTorch and TVM against it (default on; "
                         "--snapshot-update writes them)")
    group.addoption("--tvm-quantize", default=None, metavar="MODE",
                    help="deploy every marked test's model as int8: a calibrate mode (global_scale, "
                         "kl_divergence, max, percentile), optionally +WEIGHT_SCALE (e.g. kl_divergence+max); "
                         "outputs are then judged by the quantization budget, not elementwise")
    group.addoption("--tvm-tune", default=None, metavar="TRIALS",
                    help="tune each marked model with MetaSchedule until its target's tuning database holds "
                         "TRIALS trials for it (records already there count) before building; builds apply "
                         "the database")
    group.addoption("--tvm-tuning-dir", default=None, metavar="DIR",
                    help="tuning databases, one folder per target label (default: ini tvm_tuning_dir, "
                         "else <cache>/tuning); commit it to reuse tuned schedules in CI")
    group.addoption("--tvm-cc", default=None, metavar="COMPILER",
                    help="compiler export_library links the .so with, e.g. aarch64-linux-gnu-g++ for a "
                         "target with another mtriple (default: ini tvm_cc, else the host's g++)")
    group.addoption("--tvm-rpc", default=None, metavar="HOST:PORT",
                    help="run every .so on this TVM RPC server instead of in this process")
    group.addoption("--tvm-rpc-tracker", default=None, metavar="HOST:PORT",
                    help="run every .so on a device leased from this RPC tracker (with --tvm-rpc-key)")
    group.addoption("--tvm-rpc-key", default=None, metavar="KEY", help="the device key: asked of the RPC tracker, or the match key sent to a --tvm-rpc server")
    group.addoption("--tvm-rpc-timeout", type=float, default=None, metavar="SECONDS",
                    help="time limit of one remote run, waiting for a free device included (default 600)")
    group.addoption("--tvm-localize", default=None, choices=("on", "off"),
                    help="when a float model's TVM outputs leave tolerance, compare every intermediate "
                         "result with the framework's and name the first operator that diverges "
                         "(default on; costs one or two extra builds per failing test)")
    group.addoption("--tvm-repeat", default=None, metavar="N",
                    help="time N calls of every runner (TVM Python, C++, the reference) and report the "
                         "median (default: ini tvm_repeat, else 1)")
    group.addoption("--tvm-report", default=None, metavar="DIR",
                    help="write DIR/report.json (every marked test's record: target, source, stage, "
                         "reason, times, errors; merged from all xdist workers) and DIR/report.html "
                         "(the same as a table with plots)")
    group.addoption("--tvm-kit-models", default="default", metavar="NAMES",
                    help="models of the conformance kit (pytest --pyargs pytest_tvmdeploy.kit): "
                         "default (a quick subset), all, or comma-separated catalogue names")
    group.addoption("--tvm-kit-expected", default=None, metavar="JSON",
                    help="the kit's expected failures per target (default: the one shipped with the kit)")
    group.addoption("--tvm-cpp-runner", default=None, metavar="PATH",
                    help="a prebuilt tvm_cpp_check to use instead of building cpp_check/")
    group.addoption("--tvm-cpp-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="time limit of one C++ run (default 600)")
    parser.addini("tvm_target", "TVM target(s), one per line (see --tvm-target)", type="linelist", default=[])
    parser.addini("tvm_rtol", "default relative tolerance for floating outputs", default="")
    parser.addini("tvm_atol", "default absolute tolerance for floating outputs", default="")
    parser.addini("tvm_cache_dir", "artifact cache folder, relative to the rootdir", default="")
    parser.addini("tvm_cpp", "C++ check: auto, on or off (see --tvm-cpp)", default="")
    parser.addini("tvm_tuning_dir", "tuning databases folder (one subfolder per target), relative to the rootdir", default="")
    parser.addini("tvm_cc", "compiler export_library links with (see --tvm-cc)", default="")
    parser.addini("tvm_localize", "name the first diverging operator of a failing test: on or off", default="")
    parser.addini("tvm_repeat", "timed calls per runner (see --tvm-repeat)", default="")
    parser.addini("tvm_snapshot", "snapshots of reference outputs: on or off (see --tvm-snapshot)", default="")


def pytest_configure(config: pytest.Config) -> None:
    args = ", ".join(f"{name}=" for name in MARKER_ARGUMENTS)
    config.addinivalue_line(
        "markers",
        f"{MARKER}({args}): deploy the model with TVM, run it and compare every output with "
        f"the PyTorch / ONNX Runtime reference (pytest-tvmdeploy)",
    )
    cache_root = _pytest_cache_dir(config)
    option = config.getoption("tvm_cache_dir") or config.getini("tvm_cache_dir")
    cache_dir = Path(option) if option else cache_root / "tvmdeploy"
    if not cache_dir.is_absolute():
        cache_dir = config.rootpath / cache_dir
    try:
        config.stash[SESSION_KEY] = session_settings(
            config.getoption, config.getini, cache_dir=cache_dir, repro_dir=cache_root / "tvmdeploy-repro",
            rootdir=config.rootpath,
        )
    except TvmDeployError as exc:
        raise pytest.UsageError(f"pytest-tvmdeploy: {exc}") from exc
    try:
        select_kit_models(config.getoption("tvm_kit_models"))
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-tvmdeploy: {exc}") from exc
    prebuilt = config.getoption("tvm_cpp_runner")
    config.stash[CPP_RUNNER_KEY] = SessionCppRunner(
        cache_dir / "cpp-runner", prebuilt=Path(prebuilt).resolve() if prebuilt else None
    )
    config.pluginmanager.register(SummaryRecorder(), "tvmdeploy-summary")


def _pytest_cache_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("tvmdeploy-root")).parent
    return config.rootpath / ".pytest_cache" / "d"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """A marked test uses ``tvm_deployment`` even when its signature does not ask for it."""
    marks = getattr(obj, "pytestmark", [])
    marked = any(getattr(m, "name", None) == MARKER for m in marks) or collector.get_closest_marker(MARKER)
    if marked and inspect.isfunction(obj) and collector.funcnamefilter(name):
        pytest.mark.usefixtures("tvm_deployment")(obj)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that uses tvm_deployment (directly, through the marker, or with the marker on
    # one pytest.param of its parametrization) runs once per target.
    targets = metafunc.config.stash[SESSION_KEY].targets
    if "tvm_target" in metafunc.fixturenames and len(targets) > 1:
        metafunc.parametrize("tvm_target", targets, ids=[t.label for t in targets], indirect=True)


@pytest.fixture
def tvm_target(request: pytest.FixtureRequest) -> TargetSpec:
    """The TVM target this test deploys to (one of ``--tvm-target``)."""
    param = getattr(request, "param", None)
    return param if param is not None else request.config.stash[SESSION_KEY].targets[0]


@pytest.fixture
def tvm_deployment(request: pytest.FixtureRequest, tvm_target: TargetSpec, snapshot: Any) -> Deployment:
    """The deployed model of a ``tvm_model`` test: artifact, inputs, reference, TVM outputs, timings."""
    item = request.node
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        pytest.fail(f"{item.nodeid}: tvm_deployment needs @pytest.mark.{MARKER}(model=..., inputs=...)", pytrace=False)
    session = request.config.stash[SESSION_KEY]
    record = item.stash.setdefault(RECORD_KEY, {"test": item.nodeid, "target": tvm_target.label})
    try:
        if marker.args:
            raise TvmDeployError(f"@pytest.mark.{MARKER} takes keyword arguments only")
        settings = model_test_settings(marker.kwargs, session, Path(str(item.fspath)))
        item.stash[SETTINGS_KEY] = settings
        record["model"] = settings.name or model_name(settings.model)
        cpp_runner = _cpp_runner(request.config, settings, tvm_target, record)
        deployment = deploy(
            settings.model,
            settings.inputs,
            target=tvm_target,
            cache_dir=session.cache_dir,
            seed=seed_for(_seed_id(item)),
            base_dir=settings.base_dir,
            cpp_runner=cpp_runner,
            cpp_timeout=session.cpp_timeout,
            quantize=settings.quantize,
            calibration=_calibration(request, settings),
            repeat=session.repeat,
            progress=_progress_writer(request.config),
            cc=session.cc,
            tuning_dir=session.tuning_dir(tvm_target),
            tune=settings.tune,
            remote=session.remote,
            remote_timeout=session.remote_timeout,
        )
    except TvmDeployError as exc:
        error: TvmDeployError | None = exc
    else:
        error = None
    if error is not None:  # failing outside the except block keeps the report to our message
        record.update(stage=error.stage, reason=_first_line(str(error)))
        pytest.fail(f"{item.nodeid}: {error}", pytrace=False)
    record.update(
        source=deployment.source_kind,
        reference_name=deployment.reference_name,
        cache_hit=deployment.cache_hit,
        timings=deployment.timings.as_dict(),
        artifact=str(deployment.artifact_path),
        tuned=deployment.tuned,
        device=deployment.device,
    )
    if deployment.not_run is not None:
        record.update(stage="run", reason=deployment.not_run)
        pytest.skip(f"{item.nodeid}: {deployment.not_run}")
    item.stash[DEPLOYMENT_KEY] = deployment
    item.stash[SNAPSHOT_KEY] = snapshot
    return deployment


@pytest.fixture
def tvm_calibration_data() -> Any:
    """Calibration data for quantized tests that give no ``calibration=``: override it in your
    conftest.py to return an iterable of input dicts (or a callable returning one)."""
    return None


def _calibration(request: pytest.FixtureRequest, settings: ModelTestSettings) -> Any:
    if settings.quantize is None or not settings.quantize.needs_calibration:
        return None
    if settings.calibration is not None:
        return settings.calibration
    return request.getfixturevalue("tvm_calibration_data")


def _cpp_runner(config: pytest.Config, settings: ModelTestSettings, target: TargetSpec,
                record: dict[str, Any]) -> Path | None:
    """The C++ runner executable if this test runs the C++ check, else ``None`` (reason recorded)."""
    if settings.cpp == "off":
        record["cpp"] = "off"
        return None
    if not target.runs_here:
        record["cpp"] = f"skipped: the .so is built for {target.architecture}"
        return None
    runner = config.stash[CPP_RUNNER_KEY]
    missing = runner.missing_toolchain()
    if missing is not None:
        if settings.cpp == "on":
            raise TvmDeployError(f"the C++ check is required (cpp=on) but {missing}")
        record["cpp"] = f"skipped: {missing}"
        return None
    return runner.executable()


def _progress_writer(config: pytest.Config) -> Callable[[str], None] | None:
    """With ``-v``, the phase a marked test is in, written after its name as it starts."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if terminal is None or config.getoption("verbose") < 1 or hasattr(config, "workerinput"):
        return None

    def write(phase: str) -> None:
        # outside the test's captured output
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            terminal.write(f"{phase}… ", flush=True)

    return write


def model_name(model: Any) -> str:
    """A report name for a marker's ``model=``: a file's name without suffix, a module's class,
    a factory's name."""
    if isinstance(model, (str, Path)):
        return Path(model).stem
    if callable(model) and not hasattr(model, "forward"):
        return getattr(model, "__qualname__", type(model).__name__)
    return type(model).__name__


def _seed_id(item: pytest.Item) -> str:
    """What the seeded data derive from: file name and test id, without folders or the target.

    Without folders, the data stay the same when pytest runs from another directory; without
    the target, every target sees the same data.
    """
    path, _, test = item.nodeid.partition("::")
    seed_id = f"{Path(path).name}::{test}"
    callspec = getattr(item, "callspec", None)
    if callspec is None or "tvm_target" not in callspec.params:
        return seed_id
    label = callspec.params["tvm_target"].label
    return re.sub(rf"(?<=[\[-]){re.escape(label)}(?=[\]-])", "", seed_id)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Run the standard checks of a marked test before its body: a mismatch fails the test."""
    deployment = item.stash.get(DEPLOYMENT_KEY, None)
    if deployment is None:
        return
    settings = item.stash[SETTINGS_KEY]
    record = item.stash[RECORD_KEY]
    problem = _tolerance_problem(settings, deployment)
    if problem is not None:
        pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)
    failures, actual = _check(deployment, settings, record)
    if settings.snapshot:
        snapshot_failures, record["snapshot"] = check_snapshot(
            item.stash[SNAPSHOT_KEY], deployment, settings.tolerances,
            judge=output_judge(settings.tolerances, settings.budget),
            updating=bool(item.config.getoption("update_snapshots", False)), test_id=item.nodeid,
        )
        failures += snapshot_failures
    if failures:
        record.update(stage="compare", reason=_first_line(failures[0]))
        folder = _reproducer_folder(item)
        write_reproducer(folder, test_id=item.nodeid, deployment=deployment, rules=settings.tolerances, actual=actual,
                         budget=settings.budget)
        pytest.fail(_failure_message(failures, deployment, folder), pytrace=False)


def _check(
    deployment: Deployment, settings: ModelTestSettings, record: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The standard checks: Python VM vs reference; C++ vs Python VM (bitwise) and vs reference."""
    failures = []
    judge = output_judge(settings.tolerances, settings.budget)
    verdict = judge(deployment.reference, deployment.outputs, deployment.reference_name, "tvm")
    record.update(verdict_summary(verdict))
    histogram = error_histogram(deployment.reference, deployment.outputs)
    if histogram is not None:
        record["error_histogram"] = histogram
    actual = {"tvm": deployment.outputs}
    if not verdict:
        failures.append(verdict.describe())
        if settings.localize and settings.budget is None:
            failures.append(_localize(deployment, settings, record))
    if deployment.cpp_error is not None:
        record["cpp"] = "failed"
        failures.append(f"C++ runner: {deployment.cpp_error}")
    elif deployment.cpp_outputs is not None:
        actual["tvm-cpp"] = deployment.cpp_outputs
        difference = first_bitwise_difference(
            deployment.outputs, deployment.cpp_outputs, expected_name="tvm", actual_name="tvm-cpp"
        )
        record["cpp"] = "bitwise" if difference is None else "differs"
        if difference is not None:  # identical outputs would only repeat the Python VM's verdict
            failures.append(f"C++ outputs differ from the Python VM's: {difference}")
            cpp_verdict = judge(deployment.reference, deployment.cpp_outputs, deployment.reference_name, "tvm-cpp")
            if not cpp_verdict:
                failures.append(cpp_verdict.describe())
        elif failures:
            failures.append("tvm-cpp: bitwise identical to the Python VM's outputs (same differences)")
    return failures, actual


def _localize(deployment: Deployment, settings: ModelTestSettings, record: dict[str, Any]) -> str:
    """Where the outputs start to diverge, as a paragraph of the failure (also put in the record)."""
    from pytest_tvmdeploy.check.localize import localize_divergence

    try:
        divergence = localize_divergence(deployment.source, deployment.inputs, deployment.target, settings.tolerances)
    except TvmDeployError as exc:
        record["divergence"] = {"error": str(exc)}
        return f"could not localise the divergence: {exc}"
    if divergence is None:
        return "no intermediate result leaves tolerance in an instrumented (unfused, untuned) build"
    record["divergence"] = divergence.to_json()
    return divergence.describe()


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _tolerance_problem(settings: ModelTestSettings, deployment: Deployment) -> str | None:
    try:
        settings.tolerances.check_names(deployment.output_names)
    except TvmDeployError as exc:
        return str(exc)
    return None


def _reproducer_folder(item: pytest.Item) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")
    return item.config.stash[SESSION_KEY].repro_dir / name


def _failure_message(failures: list[str], deployment: Deployment, folder: Path) -> str:
    return (
        "\n".join(failures) + "\n"
        f"  model: {deployment.model} ({deployment.source_kind}), target: {deployment.target.json}\n"
        f"  reproducer: {folder}\n"
        f"  replay it with: python -m pytest_tvmdeploy.replay {folder}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    record = item.stash.get(RECORD_KEY, None)
    if record is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        if hasattr(report, "wasxfail"):
            record["outcome"] = "xfailed"
        elif report.skipped:
            record["outcome"] = "skipped"
        elif report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
            record["outcome"] = "xpassed"  # expected to fail, but every check passed
        else:
            record["outcome"] = report.outcome if report.when == "call" else "error"
        report.user_properties.append((PROPERTY, dict(record)))
        item.user_properties.extend(junit_properties(record))  # what --junitxml writes
    return report


class SummaryRecorder:
    """Collects each marked test's record from its reports (the controller's view under xdist)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.records.extend(value for name, value in report.user_properties if name == PROPERTY)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        folder = session.config.getoption("tvm_report")
        if folder and not hasattr(session.config, "workerinput"):  # the controller has every record
            report = report_document(self.records, session.config.stash[SESSION_KEY].targets)
            write_json_report(Path(folder), report)
            write_html_report(Path(folder), report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        terminalreporter.write_sep("-", "tvmdeploy")
        for line in format_table(self.records):
            terminalreporter.write_line(line)
