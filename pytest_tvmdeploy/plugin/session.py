"""Session settings: the deploy, tuning and remote options, targets, the marker, the header line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_tvmdeploy.errors import TvmDeployError
from pytest_tvmdeploy.settings.marker import marker_shapes
from pytest_tvmdeploy.settings.options import MARKER, MARKER_NAMES, Option, options_of
from pytest_tvmdeploy.settings.session import OptionValues, SessionSettings, session_settings
from pytest_tvmdeploy.shapes import shape_id
from pytest_tvmdeploy.targets import TargetSpec
from pytest_tvmdeploy.threads import configure_threads, runtime_threads
from pytest_tvmdeploy.versions import report_header

SESSION_KEY = pytest.StashKey[SessionSettings]()
GROUP = ("tvmdeploy", "TVM deployment checks (pytest-tvmdeploy)")


def add_options(parser: pytest.Parser, *features: str) -> None:
    """Register the option-table rows of ``features`` (command line, and ini where they have one)."""
    group = parser.getgroup(*GROUP)
    for feature in features:
        for row in options_of(feature):
            _add(parser, group, row)


def _add(parser: pytest.Parser, group: pytest.OptionGroup, row: Option) -> None:
    extra = {"choices": row.choices} if row.choices else {}
    if row.many:
        group.addoption(row.flag, action="append", dest=row.name, default=None, metavar=row.metavar,
                        help=row.help, **extra)
    else:
        group.addoption(row.flag, dest=row.name, default=None, metavar=row.metavar, help=row.help, **extra)
    if row.ini:
        parser.addini(row.name, f"{row.help.split(':')[0].split('(')[0].strip()} (see {row.flag})",
                      type="linelist" if row.many else None, default=[] if row.many else "")


def option_value(config: pytest.Config, name: str) -> Any:
    """An option's value as the option table resolves and parses it (command line, ini, default)."""
    return OptionValues(config.getoption, config.getini)[name]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, "deploy", "tuning", "remote")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}({', '.join(f'{name}=' for name in MARKER_NAMES)}): deploy the model with TVM, run it "
        f"and compare every output with the PyTorch / ONNX Runtime reference (pytest-tvmdeploy)",
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
    configure_threads(config.stash[SESSION_KEY].threads, processes=_processes_sharing_cores(config))


def _processes_sharing_cores(config: pytest.Config) -> int:
    """How many pytest processes run models at once: the xdist workers (set before they start,
    so they inherit the thread count), else one."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT") or getattr(config.option, "numprocesses", None)
    try:
        return max(1, int(workers or 1))
    except ValueError:  # "auto" not yet resolved
        return os.cpu_count() or 1


def _pytest_cache_dir(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("tvmdeploy-root")).parent
    return config.rootpath / ".pytest_cache" / "d"


def reproducer_folder(item: pytest.Item) -> Path:
    """Where a failing test's reproducer goes: one folder per test id."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")
    return item.config.stash[SESSION_KEY].repro_dir / name


def pytest_report_header(config: pytest.Config) -> list[str]:
    targets = ", ".join(t.label for t in config.stash[SESSION_KEY].targets)
    return [*report_header(), f"tvmdeploy targets: {targets}; TVM runtime threads: {runtime_threads()}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that uses tvm_deployment (directly, through the marker, or with the marker on
    # one pytest.param of its parametrization) runs once per target.
    targets = metafunc.config.stash[SESSION_KEY].targets
    if "tvm_target" in metafunc.fixturenames and len(targets) > 1:
        metafunc.parametrize("tvm_target", targets, ids=[t.label for t in targets], indirect=True)
    # A marker with shapes= runs once per shape (one artifact for them all)
    marker = metafunc.definition.get_closest_marker(MARKER)
    if "tvm_shape" in metafunc.fixturenames and marker is not None and marker.kwargs.get("shapes") is not None:
        try:
            shapes, _ = marker_shapes(marker.kwargs)
        except TvmDeployError:
            return  # the test itself reports it, as every marker error
        if len(shapes) > 1:
            metafunc.parametrize("tvm_shape", shapes, ids=[shape_id(s) for s in shapes], indirect=True)


@pytest.fixture
def tvm_target(request: pytest.FixtureRequest) -> TargetSpec:
    """The TVM target this test deploys to (one of ``--tvm-target``)."""
    param = getattr(request, "param", None)
    return param if param is not None else request.config.stash[SESSION_KEY].targets[0]


@pytest.fixture
def tvm_shape(request: pytest.FixtureRequest) -> dict[str, int] | None:
    """The sizes of the named input dimensions this test runs at (one of the marker's ``shapes=``),
    or ``None`` when its inputs name none."""
    return getattr(request, "param", None)
