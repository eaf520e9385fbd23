"""The ``tvm_model`` marker's arguments, merged with the session's → one :class:`ModelTestSettings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.checks.quant_budget import QuantBudget
from pytest_tvmdeploy.checks.tolerances import ToleranceRules
from pytest_tvmdeploy.errors import ConfigError
from pytest_tvmdeploy.quantize.config import QuantConfig
from pytest_tvmdeploy.settings import values
from pytest_tvmdeploy.settings.options import MARKER, MARKER_ARGUMENTS, MARKER_NAMES
from pytest_tvmdeploy.settings.session import SessionSettings


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


def model_test_settings(marker_kwargs: Mapping[str, Any], session: SessionSettings,
                        test_file: Path) -> ModelTestSettings:
    """Validate the marker's arguments and apply session defaults (the marker wins)."""
    _check_names(marker_kwargs)
    given = _MarkerValues(marker_kwargs)
    return ModelTestSettings(
        model=marker_kwargs["model"],
        inputs=marker_kwargs["inputs"],
        tolerances=ToleranceRules(
            rtol=given.get("rtol", values.tolerance, session.rtol),
            atol=given.get("atol", values.tolerance, session.atol),
            per_output=_per_output(marker_kwargs.get("tolerances")),
        ),
        base_dir=test_file.parent,
        cpp=given.get("cpp", values.cpp_mode, session.cpp),
        snapshot=given.get("snapshot", values.switch, session.snapshot),
        quantize=_quant_config(marker_kwargs["quantize"] if "quantize" in marker_kwargs else session.quantize),
        calibration=marker_kwargs.get("calibration"),
        quant_budget=QuantBudget.from_value(marker_kwargs.get("quant_budget") or {}),
        name=str(marker_kwargs["name"]) if marker_kwargs.get("name") else None,
        budget_given=marker_kwargs.get("quant_budget") is not None,
        localize=session.localize,
        tune=given.get("tune", values.trials, session.tune),
    )


class _MarkerValues:
    """A marker keyword parsed by an option's parser, or the session's value when not given."""

    def __init__(self, kwargs: Mapping[str, Any]) -> None:
        self._kwargs = kwargs

    def get(self, name: str, parse: Any, default: Any) -> Any:
        if name not in self._kwargs or self._kwargs[name] is None:
            return default
        return parse(self._kwargs[name], f"@pytest.mark.{MARKER}({name}=)")


def _check_names(marker_kwargs: Mapping[str, Any]) -> None:
    unknown = set(marker_kwargs) - set(MARKER_NAMES)
    if unknown:
        raise ConfigError(
            f"@pytest.mark.{MARKER}: unknown argument(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(MARKER_NAMES)}"
        )
    for argument in MARKER_ARGUMENTS:
        if argument.required and argument.name not in marker_kwargs:
            raise ConfigError(f"@pytest.mark.{MARKER}: '{argument.name}=' is required")


def _per_output(value: Any) -> dict[Any, Any]:
    per_output = value or {}
    if not isinstance(per_output, Mapping) or not all(isinstance(v, Mapping) for v in per_output.values()):
        raise ConfigError(f"@pytest.mark.{MARKER}: tolerances= must map output name/index to {{'rtol':..,'atol':..}}")
    return dict(per_output)


def _quant_config(value: Any) -> QuantConfig | None:
    if value is None or value is False:
        return None
    return QuantConfig.from_value(value)
