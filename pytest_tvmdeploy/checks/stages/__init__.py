"""Stage bisection: which compiler stage, pass or tuning record puts a model's outputs out of tolerance.

>>> from pytest_tvmdeploy.checks.stages import bisect_stages              # doctest: +SKIP
>>> print(bisect_stages(module, inputs, reference, parse_target("llvm")).describe())  # doctest: +SKIP
"""

from pytest_tvmdeploy.checks.stages.bisect import bisect_model_file, bisect_stages
from pytest_tvmdeploy.checks.stages.verdict import Probe, StageVerdict

__all__ = ["Probe", "StageVerdict", "bisect_model_file", "bisect_stages"]
