"""Runners execute a built artifact and return named outputs with timings."""

from pytest_tvmdeploy.outputs import RunResult

__all__ = ["RunResult"]
