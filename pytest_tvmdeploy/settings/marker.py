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
from pytest_tvmdeploy.shapes import Range, SymbolicDims, parse_ranges, parse_shapes, symbols_of


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
    bisect: bool = True
    tune: int = 0
    tune_seconds: float | None = None
    shapes: tuple[dict[str, int], ...] = ()   # the sizes of the named dimensions, one test each
    ranges: dict[str, Range] | None = None     # the declared range of each named dimension
    static_shapes: bool = False

    @property
    def dims(self) -> SymbolicDims:
        """What the test declares about its named dimensions (ranges, export sizes)."""
        return SymbolicDims.declare(self.shapes, self.ranges)

    @property
    def budget(self) -> QuantBudget | None:
        """The budget that judges the outputs, or ``None`` when they are judged elementwise."""
        return self.quant_budget if self.quantize is not None or self.budget_given else None


def model_test_settings(marker_kwargs: Mapping[str, Any], session: SessionSettings,
                        test_file: Path) -> ModelTestSettings:
    """Validate the marker's arguments and apply session defaults (the marker wins)."""
    _check_names(marker_kwargs)
    given = _MarkerValues(marker_kwargs)
    shapes, ranges = marker_shapes(marker_kwargs)
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
        bisect=session.bisect,
        tune=given.get("tune", lambda value, where: values.tuning_budget(value, where)[0], session.tune),
        tune_seconds=given.get("tune", lambda value, where: values.tuning_budget(value, where)[1],
                               session.tune_seconds),
        shapes=tuple(shapes),
        ranges=ranges,
        static_shapes=given.get("static_shapes", values.switch, session.static_shapes),
    )


def marker_shapes(marker_kwargs: Mapping[str, Any]) -> tuple[list[dict[str, int]], dict[str, Range]]:
    """The shapes (``shapes=``) and ranges (``ranges=``, or those ``shapes=`` gives as ranges)
    of a marker; a shape outside its range is caught when the test makes its inputs."""
    where = f"@pytest.mark.{MARKER}"
    shapes, ranges = [], {}
    if marker_kwargs.get("shapes") is not None:
        shapes, ranges = parse_shapes(marker_kwargs["shapes"], f"{where}(shapes=)")
    if marker_kwargs.get("ranges") is not None:
        ranges = {**ranges, **parse_ranges(marker_kwargs["ranges"], f"{where}(ranges=)")}
    named = symbols_of(marker_kwargs.get("inputs") or {})
    unsized = [name for name in named if not shapes or any(name not in shape for shape in shapes)]
    unknown = sorted({name for shape in shapes for name in shape} - set(named))
    if unknown:
        raise ConfigError(f"{where}(shapes=) sizes {', '.join(map(repr, unknown))}, which no input of inputs= names "
                          f"(name it in a spec's shape, e.g. (({unknown[0]!r}, 3, 224, 224), 'float32'))")
    if unsized:
        raise ConfigError(f"{where}: inputs name the dimension(s) {', '.join(map(repr, unsized))}: give "
                          f"shapes= with a size for each, e.g. shapes=[{{{unsized[0]!r}: 1}}, {{{unsized[0]!r}: 8}}]")
    return shapes, ranges


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
