"""Small HTML helpers every section of the report page uses."""

from __future__ import annotations

import html
from typing import Any


def text(value: Any) -> str:
    """``value`` as text safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def number(value: Any, spec: str, scale: float = 1.0) -> str:
    """``value * scale`` formatted by ``spec``; ``-`` for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return spec.format(value * scale)
