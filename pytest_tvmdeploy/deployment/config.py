"""How to deploy: one frozen :class:`DeployConfig` instead of a long list of keyword arguments."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.runners.rpc_devices import RPC_TIMEOUT, RemoteSpec
from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec, parse_target

#: What a function without a tuning record gets (see ``DeployConfig.schedule``).
SCHEDULES = ("sampled", "none")
Calibration = Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]


@dataclass(frozen=True)
class DeployConfig:
    """Where and how a model is built and run.

    ``target`` also takes a string or dict, ``quantize`` a mode name or a dict of
    :class:`QuantConfig` fields. ``tuning_dir`` is this target's MetaSchedule database folder
    (its records are applied to the build); ``tune=N`` first tunes the model until it holds ``N``
    trials for it (``tune_seconds`` ends each tuning run earlier).
    ``cc`` is the compiler ``export_library`` links with (a cross compiler for
    another ``mtriple``). ``static_shapes`` builds for the inputs' sizes even where the model or
    its inputs name a dimension (one artifact per shape). ``remote`` runs the ``.so`` on an RPC
    device; ``cpp_runner`` (see :func:`pytest_tvmdeploy.runners.cpp_build.build_cpp_runner`) also
    runs it from C++. ``schedule`` is what functions without a tuning record get: ``"sampled"``
    (a schedule drawn from MetaSchedule's rules and ranked by the shipped cost model, see
    :mod:`pytest_tvmdeploy.tuning.sampled`) or ``"none"`` (TVM's plain loops).
    """

    target: TargetSpec | str | dict[str, Any] = DEFAULT_TARGET
    cache_dir: Path | None = None
    seed: int = 0
    base_dir: Path | None = None
    repeat: int = 1
    cpp_runner: Path | None = None
    cpp_timeout: float = 600.0
    quantize: QuantConfig | str | Mapping[str, Any] | None = None
    cc: str | None = None
    tuning_dir: Path | None = None
    tune: int = 0
    tune_seconds: float | None = None
    remote: RemoteSpec | None = None
    remote_timeout: float = RPC_TIMEOUT
    static_shapes: bool = False
    schedule: str = "sampled"

    def __post_init__(self) -> None:
        if not isinstance(self.target, TargetSpec):
            object.__setattr__(self, "target", parse_target(self.target))
        if self.quantize is not None and not isinstance(self.quantize, QuantConfig):
            object.__setattr__(self, "quantize", QuantConfig.from_value(self.quantize))
        if self.tune < 0:
            raise ConfigError(f"tune={self.tune} must be >= 0 (trials)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.tune and self.tuning_dir is None:
            raise ConfigError(f"tune={self.tune} needs a tuning_dir to keep the records in")
        for name in ("cache_dir", "base_dir", "cpp_runner", "tuning_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "cc", self.cc or None)

    @property
    def spec(self) -> TargetSpec:
        """The target, parsed (``target`` always holds a :class:`TargetSpec` after construction)."""
        assert isinstance(self.target, TargetSpec)
        return self.target

    @property
    def quant(self) -> QuantConfig | None:
        assert self.quantize is None or isinstance(self.quantize, QuantConfig)
        return self.quantize


def calibration_samples(calibration: Calibration | None) -> list[dict[str, np.ndarray]] | None:
    """Materialize calibration data (a callable is called first) as a list of name -> array dicts."""
    if calibration is None:
        return None
    data = calibration() if callable(calibration) else calibration
    samples = []
    for index, sample in enumerate(data):
        if not isinstance(sample, Mapping):
            raise ConfigError(f"calibration sample {index}: expected a dict input name -> array, "
                              f"got {type(sample).__name__}")
        samples.append({str(k): np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, order="C")
                        for k, v in sample.items()})
    return samples


def needed_samples(config: DeployConfig, calibration: Calibration | None,
                   model: str) -> list[dict[str, np.ndarray]] | None:
    """The calibration samples the config's quantization needs (``None`` when it needs none)."""
    quant = config.quant
    if quant is None or not quant.needs_calibration:
        return None
    samples = calibration_samples(calibration)
    if not samples:
        raise ConfigError(
            f"{model}: quantize {quant.calibration_purpose} needs calibration data "
            f"(calibration= in the marker, or the tvm_calibration_data fixture); none was given"
        )
    return samples
