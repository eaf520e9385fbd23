"""The conformance kit's own options, validated at start-up (a plugin module of the kit)."""

from __future__ import annotations

import pytest

from pytest_tvmdeploy.kit.catalogue import select
from pytest_tvmdeploy.plugin.session import add_options, option_value


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, "kit")


def pytest_configure(config: pytest.Config) -> None:
    try:
        select(option_value(config, "tvm_kit_models"))
    except ValueError as exc:
        raise pytest.UsageError(f"pytest-tvmdeploy: {exc}") from exc
