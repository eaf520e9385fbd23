"""Runners execute a built artifact and return named outputs with timings."""

from pytest_tvmdeploy.runners.base import RunResult

__all__ = ["RunResult"]
