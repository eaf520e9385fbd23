"""Crash isolation: one sandbox worker per pytest process (per xdist worker too) does all TVM
work, so a crash, hang or memory blow-up in TVM fails one test and the session goes on."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.checks.localize.search import LOCALIZE_FILE
from pytest_tvmdeploy.checks.stages.bisect import BISECT_FILE
from pytest_tvmdeploy.deployment.sandbox import Sandbox
from pytest_tvmdeploy.deployment.worker import Job, import_setup
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.plugin.session import SESSION_KEY, add_options, option_value
from pytest_tvmdeploy.settings.options import MARKER
from pytest_tvmdeploy.shapes import ShapeSignature

SANDBOX_KEY = pytest.StashKey["Sandbox | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, "isolation")


#: Live sandboxes of this process by (timeout, memory limit, setup modules): sessions run one after another in
#: one process (pytest.main called twice, pytester) share a worker instead of starting another.
_SHARED: dict[tuple[float, int | None, tuple[str, ...]], Sandbox] = {}


def pytest_configure(config: pytest.Config) -> None:
    setup = option_value(config, "tvm_setup")
    if not option_value(config, "tvm_isolate"):
        config.stash[SANDBOX_KEY] = None
        try:
            import_setup(setup)  # TVM work happens in this process
        except ConfigError as exc:
            raise pytest.UsageError(f"pytest-tvmdeploy: {exc}") from exc
        return
    limits = (option_value(config, "tvm_timeout"), option_value(config, "tvm_memory_limit"), setup)
    if limits not in _SHARED:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        _SHARED[limits] = Sandbox(timeout=limits[0], memory_limit=limits[1], setup=setup,
                                  log_dir=config.stash[SESSION_KEY].cache_dir / "sandbox" / f"{worker}-{os.getpid()}")
        atexit.register(_SHARED[limits].close)
    config.stash[SANDBOX_KEY] = _SHARED[limits]


def sandbox_of(config: pytest.Config) -> Sandbox | None:
    """The session's sandbox, or ``None`` with ``--tvm-isolate=off``."""
    return config.stash.get(SANDBOX_KEY, None)


def localizer_of(config: pytest.Config) -> Any:
    """A localiser for :func:`~pytest_tvmdeploy.check` that runs its builds in the sandbox."""
    return _diagnostic(config, LOCALIZE_FILE, lambda deployment: {})


def bisector_of(config: pytest.Config) -> Any:
    """A stage bisector for :func:`~pytest_tvmdeploy.check` that runs its builds in the sandbox."""
    return _diagnostic(config, BISECT_FILE, lambda deployment: {"reference": dict(deployment.reference),
                                                                "tuning_dir": deployment.tuning_dir,
                                                                "sampled": deployment.sampled > 0})


def _diagnostic(config: pytest.Config, function: str, extra: Callable[[Any], dict[str, Any]]) -> Any:
    """``diagnose(deployment, rules)`` running ``function`` in the sandbox on the deployment's model
    file, inputs, target and rules (plus ``extra(deployment)``); ``None`` without a sandbox."""
    sandbox = sandbox_of(config)
    if sandbox is None:
        return None

    def diagnose(deployment: Any, rules: Any) -> Any:
        payload = {"source": _model_file(config, deployment), "inputs": dict(deployment.inputs),
                   "target": deployment.target, "rules": rules, **extra(deployment)}
        return sandbox.run(Job(function, payload))

    return diagnose


def _model_file(config: pytest.Config, deployment: Any) -> Any:
    """The deployment's model as a file the worker opens, at this run's sizes."""
    folder = config.stash[SESSION_KEY].cache_dir / "models"
    shapes = ShapeSignature.of(deployment.inputs)
    return deployment.source.model_file(shapes, folder, deployment.model_fingerprint)


def pytest_collectstart(collector: pytest.Collector) -> None:
    # A test module that marks models: start the worker before the module's own imports run
    # (torchvision, the user's models), so that it imports TVM (seconds) meanwhile.
    if isinstance(collector, pytest.Module) and _marks_models(collector.path):
        sandbox = sandbox_of(collector.config)
        if sandbox is not None:
            sandbox.start()


def _marks_models(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Start the worker as soon as a marked test is known: it imports TVM and torch while this
    # process loads the first model and runs its reference.
    sandbox = sandbox_of(config)
    if sandbox is not None and any(item.get_closest_marker("tvm_model") for item in items):
        sandbox.start()
