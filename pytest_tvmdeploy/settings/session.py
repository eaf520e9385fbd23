"""Command-line options, ini values and the environment → one frozen :class:`SessionSettings`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.checks.ratchet import Ratchet
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.runners.rpc_devices import RemoteSpec, parse_remote
from pytest_tvmdeploy.settings import values
from pytest_tvmdeploy.settings.options import TARGETS_VARIABLE, Option, option
from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec, parse_target


@dataclass(frozen=True)
class SessionSettings:
    """What the command line, the ini file and the environment say for the whole session."""

    targets: tuple[TargetSpec, ...]
    rtol: float | None
    atol: float | None
    cache_dir: Path
    repro_dir: Path
    cpp: str = "auto"
    cpp_timeout: float = 600.0
    snapshot: bool = True
    ratchet: Ratchet = Ratchet()
    quantize: str | None = None
    repeat: int = 1
    localize: bool = True
    bisect: bool = True
    tuning_root: Path = Path("tuning")   # per-target database folders below it
    tune: int = 0
    tune_seconds: float | None = None    # the time limit of --tvm-tune=N/15m
    cc: str | None = None
    remote: RemoteSpec | None = None
    remote_timeout: float = 600.0
    static_shapes: bool = False
    coverage: bool = False
    schedule: str = "sampled"            # --tvm-schedule: what functions without a record get
    threads: int | None = None           # --tvm-threads; None: the environment's or the default

    def tuning_dir(self, target: TargetSpec) -> Path:
        """This target's tuning database folder."""
        return self.tuning_root / target.label


class OptionValues:
    """Looks settings up by their :class:`Option` row: the command line, then the ini file, then
    the row's default, parsed by the row's parser (errors name the option)."""

    def __init__(self, command_line: Callable[[str], Any], ini: Callable[[str], Any]) -> None:
        self._command_line, self._ini = command_line, ini

    def raw(self, row: Option) -> Any:
        given = self._command_line(row.name)
        if given is None and row.ini:
            given = self._ini(row.name)
        if given is None or (isinstance(given, str) and not given.strip()) or given == []:
            return row.default
        return given

    def __getitem__(self, name: str) -> Any:
        row = option(name)
        return row.parse(self.raw(row), row.where)


def session_settings(
    command_line: Callable[[str], Any], ini: Callable[[str], Any], *, cache_dir: Path, repro_dir: Path,
    rootdir: Path | None = None, environ: Mapping[str, str] | None = None,
) -> SessionSettings:
    """Merge command-line options, ini values and ``$TVM_TEST_TARGETS`` and parse them.

    ``command_line`` and ``ini`` look values up by name (pytest's ``config.getoption`` / ``getini``).
    """
    given = OptionValues(command_line, ini)
    return SessionSettings(
        targets=session_targets(command_line("tvm_target"), ini("tvm_target"),
                                os.environ if environ is None else environ),
        rtol=given["tvm_rtol"],
        atol=given["tvm_atol"],
        cache_dir=cache_dir,
        repro_dir=repro_dir,
        cpp=given["tvm_cpp"],
        cpp_timeout=given["tvm_cpp_timeout"],
        snapshot=given["tvm_snapshot"],
        ratchet=Ratchet(given["tvm_ratchet"], given["tvm_ratchet_factor"]),
        quantize=_checked_quantize(given["tvm_quantize"]),
        repeat=given["tvm_repeat"],
        localize=given["tvm_localize"],
        bisect=given["tvm_bisect"],
        tuning_root=values.folder(given.raw(option("tvm_tuning_dir")), rootdir) or cache_dir / "tuning",
        tune=given["tvm_tune"][0],
        tune_seconds=given["tvm_tune"][1],
        cc=given["tvm_cc"],
        remote=_remote(given["tvm_rpc"], given["tvm_rpc_tracker"], given["tvm_rpc_key"]),
        remote_timeout=given["tvm_rpc_timeout"],
        static_shapes=given["tvm_static_shapes"],
        coverage=given["tvm_coverage"],
        threads=given["tvm_threads"],
        schedule=given["tvm_schedule"],
    )


def session_targets(command_line: list[str] | None, ini: list[str] | None,
                    environ: Mapping[str, str]) -> tuple[TargetSpec, ...]:
    """``--tvm-target`` values, else ``$TVM_TEST_TARGETS``, else ini ``tvm_target``, else llvm;
    targets whose labels collide are numbered."""
    from_environment = [t for t in environ.get(TARGETS_VARIABLE, "").split(";") if t.strip()]
    texts = command_line or from_environment or [t for t in ini or [] if t.strip()] or [DEFAULT_TARGET]
    targets = tuple(parse_target(t) for t in texts)
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        # two targets that differ only in options the label leaves out: number them
        targets = tuple(TargetSpec(t.json, f"{t.label}-{i}") for i, t in enumerate(targets))
    return targets


def _remote(server: str | None, tracker: str | None, key: str | None) -> RemoteSpec | None:
    if server is None and tracker is None:
        if key:
            raise ConfigError("--tvm-rpc-key needs --tvm-rpc or --tvm-rpc-tracker")
        return None
    return parse_remote(server, tracker=tracker, key=key)


def _checked_quantize(value: str | None) -> str | None:
    if value is None or value.lower() in ("off", "none"):
        return None
    QuantConfig.from_value(value)  # a bad mode is a usage error at start-up
    return value
