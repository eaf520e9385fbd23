"""Command-line options, ini values and ``tvm_model`` marker arguments → one frozen settings object."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.targets import DEFAULT_TARGET, TargetSpec, parse_target
from pytest_tvmdeploy.check.quantized import QuantBudget
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.runners.rpc_devices import RPC_TIMEOUT, RemoteSpec, parse_remote
from pytest_tvmdeploy.check.tolerances import ToleranceRules

MARKER = "tvm_model"

#: Marker keyword → what it means (also the marker's help line).
MARKER_ARGUMENTS: dict[str, str] = {
    "model": "nn.Module, zero-argument callable returning one, or path (.onnx/.pt/.pt2) relative to the test file",
    "inputs": "dict name -> array/tensor or (shape, dtype[, (low, high)]) spec, or a list in positional order",
    "rtol": "relative tolerance for every floating output",
    "atol": "absolute tolerance for every floating output",
    "tolerances": "per-output overrides: {name or index: {'rtol': .., 'atol': ..}}",
    "cpp": "also run the .so from C++: 'auto', 'on'/True, 'off'/False (default: --tvm-cpp)",
    "snapshot": "keep the reference outputs as a syrupy snapshot: True/False (default: --tvm-snapshot)",
    "quantize": "deploy the int8 model: a calibrate mode name, a QuantConfig or a dict of its fields (default: --tvm-quantize)",
    "calibration": "calibration data for quantize=: an iterable of input dicts, or a callable returning one",
    "quant_budget": "budgets of a quantized model against fp32: a QuantBudget or a dict of its fields; "
                    "given without quantize= (an int8 model file), outputs are judged by it, not elementwise",
    "name": "the model's name in reports (default: the file name or the module's class)",
    "tune": "MetaSchedule trials this model should have in the tuning database, stored ones included "
            "(default: --tvm-tune, 0)",
}

#: Values of --tvm-cpp / tvm_cpp / cpp=.
CPP_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class SessionSettings:
    """What the command line and ini file say for the whole session."""

    targets: tuple[TargetSpec, ...]
    rtol: float | None
    atol: float | None
    cache_dir: Path
    repro_dir: Path
    cpp: str = "auto"
    cpp_timeout: float = 600.0
    snapshot: bool = True
    quantize: str | None = None
    repeat: int = 1
    localize: bool = True
    tuning_root: Path = Path("tuning")   # per-target database folders below it
    tune: int = 0
    cc: str | None = None
    remote: RemoteSpec | None = None
    remote_timeout: float = RPC_TIMEOUT

    def tuning_dir(self, target: TargetSpec) -> Path:
        """This target's tuning database folder."""
        return self.tuning_root / target.label


@dataclass(frozen=True)
class ModelTestSettings:
    """Everything one marked test needs to deploy and check its model."""

    model: Any
    inputs: Any
    tolerances: ToleranceRules
    base_dir: Path
    cpp: str = "auto"
    snapshot: bool = True
    quantize: QuantConfig | None = None
    calibration: Any = None
    quant_budget: QuantBudget = QuantBudget()
    name: str | None = None
    budget_given: bool = False
    localize: bool = True
    tune: int = 0

    @property
    def budget(self) -> QuantBudget | None:
        """The budget that judges the outputs, or ``None`` when they are judged elementwise."""
        return self.quant_budget if self.quantize is not None or self.budget_given else None


def session_settings(
    option: Callable[[str], Any], ini: Callable[[str], Any], *, cache_dir: Path, repro_dir: Path,
    rootdir: Path | None = None,
) -> SessionSettings:
    """Merge command-line options and ini values (the command line wins) and parse the targets.

    ``option`` and ``ini`` look values up by name (pytest's ``config.getoption`` / ``getini``).
    """
    def either(name: str, default: str) -> str:
        return option(name) or ini(name) or default

    texts = option("tvm_target") or [t for t in ini("tvm_target") if t.strip()] or [DEFAULT_TARGET]
    targets = tuple(parse_target(t) for t in texts)
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        # two targets that differ only in options the label leaves out: number them
        targets = tuple(TargetSpec(t.json, f"{t.label}-{i}") for i, t in enumerate(targets))
    return SessionSettings(
        targets=targets,
        rtol=_tolerance("tvm_rtol", option, ini),
        atol=_tolerance("tvm_atol", option, ini),
        cache_dir=cache_dir,
        repro_dir=repro_dir,
        cpp=cpp_mode(either("tvm_cpp", "auto"), "--tvm-cpp / tvm_cpp"),
        cpp_timeout=option("tvm_cpp_timeout"),
        snapshot=switch(either("tvm_snapshot", "on"), "--tvm-snapshot / tvm_snapshot"),
        quantize=_checked_quantize(option("tvm_quantize")),
        repeat=_repeat(option("tvm_repeat") or ini("tvm_repeat") or "1"),
        localize=switch(either("tvm_localize", "on"), "--tvm-localize / tvm_localize"),
        tuning_root=_folder(either("tvm_tuning_dir", ""), rootdir) or cache_dir / "tuning",
        tune=trials(option("tvm_tune") or 0, "--tvm-tune"),
        cc=either("tvm_cc", "") or None,
        remote=_remote(option("tvm_rpc"), option("tvm_rpc_tracker"), option("tvm_rpc_key")),
        remote_timeout=_given(option("tvm_rpc_timeout"), RPC_TIMEOUT),
    )


def _folder(text: str, rootdir: Path | None) -> Path | None:
    if not text.strip():
        return None
    path = Path(text.strip())
    return path if path.is_absolute() or rootdir is None else rootdir / path


def _given(value: Any, default: Any) -> Any:
    """``value`` unless the option was not given (``None``); 0 stays 0."""
    return default if value is None else value


def _whole_number(value: Any, minimum: int) -> int | None:
    """``value`` as an int if it is a whole number >= ``minimum``, else ``None``."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        return None
    return count if count >= minimum else None


def trials(value: Any, where: str) -> int:
    """A tuning budget: a whole number of trials >= 0, or :class:`ConfigError`."""
    count = _whole_number(value, 0)
    if count is None:
        raise ConfigError(f"{where}: {value!r} is not a number of trials (a whole number >= 0)")
    return count


def _remote(server: str | None, tracker: str | None, key: str | None) -> RemoteSpec | None:
    if server is None and tracker is None:
        if key:
            raise ConfigError("--tvm-rpc-key needs --tvm-rpc or --tvm-rpc-tracker")
        return None
    return parse_remote(server, tracker=tracker, key=key)


def _repeat(value: Any) -> int:
    count = _whole_number(value, 1)
    if count is None:
        raise ConfigError(f"--tvm-repeat / tvm_repeat: {value!r} is not a positive whole number")
    return count


def _tolerance(name: str, option: Callable[[str], Any], ini: Callable[[str], Any]) -> float | None:
    value = option(name)
    return value if value is not None else _float_or_none(name, ini(name))


def _checked_quantize(value: str | None) -> str | None:
    if value is None or value.strip().lower() in ("", "off", "none"):
        return None
    QuantConfig.from_value(value.strip())  # a bad mode is a usage error at start-up
    return value.strip()


def switch(value: Any, where: str) -> bool:
    """``on``/``off`` (or true/false, a bool) → bool, or :class:`ConfigError`."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{where}: {value!r} is not on or off")


def cpp_mode(value: Any, where: str) -> str:
    """Normalise a C++ switch (``auto``/``on``/``off`` or a bool) or raise :class:`ConfigError`."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text not in CPP_MODES:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(CPP_MODES)}")
    return text


def model_test_settings(marker_kwargs: Mapping[str, Any], session: SessionSettings, test_file: Path) -> ModelTestSettings:
    """Validate the marker's arguments and apply session defaults (the marker wins)."""
    unknown = set(marker_kwargs) - set(MARKER_ARGUMENTS)
    if unknown:
        raise ConfigError(
            f"@pytest.mark.{MARKER}: unknown argument(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(MARKER_ARGUMENTS)}"
        )
    for required in ("model", "inputs"):
        if required not in marker_kwargs:
            raise ConfigError(f"@pytest.mark.{MARKER}: '{required}=' is required")
    per_output = marker_kwargs.get("tolerances") or {}
    if not isinstance(per_output, Mapping) or not all(isinstance(v, Mapping) for v in per_output.values()):
        raise ConfigError(f"@pytest.mark.{MARKER}: tolerances= must map output name/index to {{'rtol':..,'atol':..}}")
    rules = ToleranceRules(
        rtol=_marker_float(marker_kwargs, "rtol", session.rtol),
        atol=_marker_float(marker_kwargs, "atol", session.atol),
        per_output=dict(per_output),
    )
    return ModelTestSettings(
        model=marker_kwargs["model"],
        inputs=marker_kwargs["inputs"],
        tolerances=rules,
        base_dir=test_file.parent,
        cpp=cpp_mode(marker_kwargs["cpp"], f"@pytest.mark.{MARKER}(cpp=)") if "cpp" in marker_kwargs else session.cpp,
        snapshot=(switch(marker_kwargs["snapshot"], f"@pytest.mark.{MARKER}(snapshot=)")
                  if "snapshot" in marker_kwargs else session.snapshot),
        quantize=_quant_config(marker_kwargs["quantize"] if "quantize" in marker_kwargs else session.quantize),
        calibration=marker_kwargs.get("calibration"),
        quant_budget=QuantBudget.from_value(marker_kwargs.get("quant_budget") or {}),
        name=str(marker_kwargs["name"]) if marker_kwargs.get("name") else None,
        budget_given=marker_kwargs.get("quant_budget") is not None,
        localize=session.localize,
        tune=trials(marker_kwargs["tune"], f"@pytest.mark.{MARKER}(tune=)") if "tune" in marker_kwargs else session.tune,
    )


def _quant_config(value: Any) -> QuantConfig | None:
    if value is None or value is False:
        return None
    return QuantConfig.from_value(value)


def _marker_float(kwargs: Mapping[str, Any], name: str, default: float | None) -> float | None:
    if name not in kwargs or kwargs[name] is None:
        return default
    try:
        value = float(kwargs[name])
    except (TypeError, ValueError):
        raise ConfigError(f"@pytest.mark.{MARKER}: {name}={kwargs[name]!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"@pytest.mark.{MARKER}: {name}={value} must be >= 0")
    return value


def _float_or_none(option: str, text: str) -> float | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"ini option {option} = {text!r} is not a number") from None
