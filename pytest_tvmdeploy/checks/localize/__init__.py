"""Localise a divergence: name the first operator whose TVM output leaves tolerance.

>>> from pytest_tvmdeploy.checks.localize import localize_divergence          # doctest: +SKIP
>>> d = localize_divergence(source, inputs, parse_target("llvm"), rules)  # doctest: +SKIP
>>> print(d.describe() if d else "every intermediate is within tolerance")  # doctest: +SKIP
"""

from pytest_tvmdeploy.checks.localize.divergence import Divergence
from pytest_tvmdeploy.checks.localize.graph import LocalizationError
from pytest_tvmdeploy.checks.localize.search import localize_divergence

__all__ = ["Divergence", "LocalizationError", "localize_divergence"]
