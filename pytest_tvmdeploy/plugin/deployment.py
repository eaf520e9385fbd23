"""The ``tvm_deployment`` fixture: a marked test's model deployed by the plain :func:`deploy`."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.deployment.pipeline import FrameworkSide, deploy
from pytest_tvmdeploy.deployment.result import Deployment
from pytest_tvmdeploy.errors import SandboxError, TvmDeployError
from pytest_tvmdeploy.inputs import seed_for
from pytest_tvmdeploy.plugin.cpp import cpp_runner_for
from pytest_tvmdeploy.plugin.isolation import sandbox_of
from pytest_tvmdeploy.plugin.records import record_of
from pytest_tvmdeploy.plugin.session import SESSION_KEY, reproducer_folder
from pytest_tvmdeploy.report.crash_reproducer import crash_prefix_lines, write_crash_reproducer
from pytest_tvmdeploy.report.record import TestRecord
from pytest_tvmdeploy.settings.marker import ModelTestSettings, model_test_settings
from pytest_tvmdeploy.settings.options import MARKER
from pytest_tvmdeploy.settings.session import SessionSettings
from pytest_tvmdeploy.shapes import shape_id
from pytest_tvmdeploy.sources.base import unsupported_operators
from pytest_tvmdeploy.targets import TargetSpec

DEPLOYMENT_KEY = pytest.StashKey[Deployment]()
SETTINGS_KEY = pytest.StashKey[ModelTestSettings]()


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """A marked test uses ``tvm_deployment`` even when its signature does not ask for it."""
    marks = getattr(obj, "pytestmark", [])
    marked = any(getattr(m, "name", None) == MARKER for m in marks) or collector.get_closest_marker(MARKER)
    if marked and inspect.isfunction(obj) and collector.funcnamefilter(name):
        pytest.mark.usefixtures("tvm_deployment")(obj)


@pytest.fixture
def tvm_deployment(request: pytest.FixtureRequest, tvm_target: TargetSpec,
                   tvm_shape: dict[str, int] | None) -> Deployment:
    """The deployed model of a ``tvm_model`` test: artifact, inputs, reference, TVM outputs, timings."""
    item = request.node
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        pytest.fail(f"{item.nodeid}: tvm_deployment needs @pytest.mark.{MARKER}(model=..., inputs=...)", pytrace=False)
    record = record_of(item, tvm_target.label)
    record.case = _case_id(item)
    try:
        deployment: Deployment | None = _deploy(request, marker, tvm_target, tvm_shape, record)
    except TvmDeployError as exc:
        error: TvmDeployError | None = exc
    else:
        error = None
    if error is not None:  # failing outside the except block keeps the report to our message
        record.stopped(error.stage, str(error))
        if error.stage == "import":
            record.unsupported = list(getattr(error, "operators", ()) or unsupported_operators(str(error))) or None
        message = f"{item.nodeid}: {error}{_crash_reproducer(item, error, record)}"
        if isinstance(error, SandboxError):
            raise CrashedDeployment(message, error)
        pytest.fail(message, pytrace=False)
    assert deployment is not None
    _fill(record, deployment)
    if deployment.not_run is not None:
        record.stopped("run", deployment.not_run)
        pytest.skip(f"{item.nodeid}: {deployment.not_run}")
    item.stash[DEPLOYMENT_KEY] = deployment
    return deployment


class CrashedDeployment(pytest.fail.Exception, SandboxError):
    """A test's failure when TVM's worker crashed: reported like ``pytest.fail`` (our message, no
    traceback), and still a :class:`SandboxError`, so ``xfail(raises=SandboxError)`` accepts it."""

    def __init__(self, message: str, crash: SandboxError) -> None:
        pytest.fail.Exception.__init__(self, msg=message, pytrace=False)
        self.stage, self.cause, self.stderr, self.job = crash.stage, crash.cause, crash.stderr, crash.job


def _deploy(request: pytest.FixtureRequest, marker: pytest.Mark, target: TargetSpec, shape: dict[str, int] | None,
            record: TestRecord) -> Deployment:
    item = request.node
    if marker.args:
        raise TvmDeployError(f"@pytest.mark.{MARKER} takes keyword arguments only")
    session = request.config.stash[SESSION_KEY]
    settings = model_test_settings(marker.kwargs, session, Path(str(item.fspath)))
    item.stash[SETTINGS_KEY] = settings
    record.model = settings.name or model_name(settings.model)
    config = deploy_config(session, settings, target, seed_for(_seed_id(item)),
                           cpp_runner_for(request.config, settings.cpp, target, record))
    if shape is None and settings.shapes:
        if len(settings.shapes) > 1:
            raise TvmDeployError(f"@pytest.mark.{MARKER}(shapes=) gives {len(settings.shapes)} shapes but this test "
                                 f"runs at none of them: give one shape per test when the marker sits on a "
                                 f"pytest.param, or request the tvm_shape fixture")
        shape = settings.shapes[0]
    if shape is not None:
        record.shape = shape_id(shape)
    return deploy(settings.model, settings.inputs, config, shape=shape, dims=settings.dims,
                  calibration=_calibration(request, settings), progress=_progress_writer(request.config),
                  sandbox=sandbox_of(request.config), on_framework=_model_into(record, session.coverage))


def _model_into(record: TestRecord, operators: bool) -> Callable[[FrameworkSide], None]:
    """Note the model's source kind in ``record`` once it is open (also when TVM then fails), and
    with ``operators`` the operators its frontend sees (for the coverage table)."""

    def note(framework: FrameworkSide) -> None:
        record.source = framework.source.kind
        if not operators:
            return
        try:
            record.operators = framework.source.operators(framework.shapes)
        except Exception:  # noqa: BLE001 - coverage must not fail the test
            record.operators = None

    return note


def _crash_reproducer(item: pytest.Item, error: TvmDeployError, record: TestRecord) -> str:
    """For a crashed, hung or oversized TVM worker: its reproducer folder, as lines of the failure."""
    if not isinstance(error, SandboxError):
        return ""
    record.crash = error.cause
    if error.job is None:
        return ""
    folder = write_crash_reproducer(reproducer_folder(item), test_id=item.nodeid, error=error, job=error.job)
    lines = f"\n  reproducer: {folder}\n  replay it with: python -m pytest_tvmdeploy.replay {folder}"
    return lines + _crash_prefix(item, error, folder)


def _crash_prefix(item: pytest.Item, error: SandboxError, folder: Path) -> str:
    """The smallest crashing prefix of the graph, searched in the session's sandbox when the
    session localizes failures (lines of the failure; empty otherwise)."""
    sandbox = sandbox_of(item.config)
    if sandbox is None or not item.config.stash[SESSION_KEY].localize:
        return ""
    return crash_prefix_lines(sandbox, error, folder)


def deploy_config(session: SessionSettings, settings: ModelTestSettings, target: TargetSpec, seed: int,
                  cpp_runner: Path | None) -> DeployConfig:
    """What the session and the marker say about one deployment."""
    return DeployConfig(
        target=target, cache_dir=session.cache_dir, seed=seed, base_dir=settings.base_dir,
        repeat=session.repeat, cpp_runner=cpp_runner, cpp_timeout=session.cpp_timeout,
        quantize=settings.quantize, cc=session.cc, tuning_dir=session.tuning_dir(target), tune=settings.tune,
        tune_seconds=settings.tune_seconds,
        remote=session.remote, remote_timeout=session.remote_timeout, static_shapes=settings.static_shapes,
        schedule=session.schedule,
    )


def _fill(record: TestRecord, deployment: Deployment) -> None:
    """The record's fields from a finished deployment (its source kind was noted when the model opened)."""
    record.reference_name = deployment.reference_name
    record.reference_note = deployment.reference_note or None
    record.cache_hit = deployment.cache_hit
    record.timings = deployment.timings.as_dict()
    record.artifact = str(deployment.artifact_path)
    record.tuned = deployment.tuned
    record.sampled = deployment.sampled
    record.threads = deployment.threads
    record.device = deployment.device
    if deployment.sizes and record.shape is None:  # the test's own shape names it best (torch renames)
        record.shape = shape_id(deployment.sizes)


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


def _without_target(text: str, item: pytest.Item, shape: bool = False) -> str:
    """``text`` with the target label (and with ``shape``, the shape's id) taken out of its
    parametrization id, if the test has them."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    labels = [params["tvm_target"].label] if "tvm_target" in params else []
    if shape and params.get("tvm_shape"):
        labels.append(shape_id(params["tvm_shape"]))
    for label in labels:
        text = re.sub(rf"(?<=[\[-]){re.escape(label)}(?=[\]-])", "", text)
    return text


def _seed_id(item: pytest.Item) -> str:
    """What the seeded data derive from: file name and test id, without folders, the target or
    the shape.

    Without folders, the data stay the same when pytest runs from another directory; without
    the target, every target sees the same data; without the shape, a model factory builds the
    same weights at every shape, so its shapes share one artifact.
    """
    path, _, test = item.nodeid.partition("::")
    return _without_target(f"{Path(path).name}::{test}", item, shape=True)


def _case_id(item: pytest.Item) -> str | None:
    """The test's parametrization id without the target label (``None`` if it has none)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    case = _without_target(f"[{callspec.id}]", item)[1:-1].strip("-")
    return case or None
