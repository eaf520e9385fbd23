"""Check stage: judge a deployment's outputs (tolerances, int8 budgets, C++ bitwise, snapshot
drift) and localise a divergence; :func:`check` runs them all."""

from pytest_tvmdeploy.checks.drift import SnapshotFile
from pytest_tvmdeploy.checks.standard import CheckResult, check

__all__ = ["CheckResult", "SnapshotFile", "check"]
