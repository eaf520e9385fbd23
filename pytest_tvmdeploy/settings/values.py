"""Parsers of option, ini and marker values: each turns text (or a Python value) into one typed
value, or raises :class:`ConfigError` naming where the value came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_tvmdeploy.errors import ConfigError

#: Values of --tvm-cpp / tvm_cpp / cpp=.
CPP_MODES = ("auto", "on", "off")


def switch(value: Any, where: str) -> bool:
    """``on``/``off`` (or true/false, a bool) → bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{where}: {value!r} is not on or off")


def cpp_mode(value: Any, where: str) -> str:
    """A C++ switch (``auto``/``on``/``off`` or a bool), normalised."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text not in CPP_MODES:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(CPP_MODES)}")
    return text


def whole_number(value: Any, minimum: int) -> int | None:
    """``value`` as an int if it is a whole number >= ``minimum``, else ``None``."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        return None
    return count if count >= minimum else None


#: The trial budget of a time-only limit (``--tvm-tune=15m``): the clock ends the run first.
TIME_ONLY_TRIALS = 100_000
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def tuning_budget(value: Any, where: str) -> tuple[int, float | None]:
    """A tuning budget: trials (``2000``), a time limit per run (``15m``, ``90s``, ``1h``) or
    both (``2000/15m``), as ``(trials, seconds or None)``."""
    text = str(value).strip().lower()
    trials_text, _, time_text = text.partition("/")
    if not time_text and text[-1:] in _UNITS:
        trials_text, time_text = str(TIME_ONLY_TRIALS), text
    seconds = None
    if time_text or text.endswith("/"):
        try:
            seconds = float(time_text[:-1]) * _UNITS[time_text[-1]]
        except (ValueError, KeyError, IndexError):
            seconds = -1.0
    count = whole_number(trials_text, 0)
    if count is None or (seconds is not None and not seconds > 0):
        raise ConfigError(f"{where}: {value!r} is not a number of trials (a whole number >= 0), a time "
                          f"limit (15m, 90s, 1h) or both (2000/15m)")
    return count, seconds


def repeat(value: Any, where: str) -> int:
    """A count of timed calls: a whole number >= 1."""
    count = whole_number(value, 1)
    if count is None:
        raise ConfigError(f"{where}: {value!r} is not a positive whole number")
    return count


def thread_count(value: Any, where: str) -> int | None:
    """A thread count: a whole number >= 1, or ``None`` when not given."""
    if value is None or str(value).strip() == "":
        return None
    return repeat(value, where)


def tolerance(value: Any, where: str) -> float | None:
    """A tolerance >= 0, or ``None`` when not given."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    if number < 0:
        raise ConfigError(f"{where}: {number} must be >= 0")
    return number


def growth_factor(value: Any, where: str) -> float:
    """A factor > 1."""
    number = tolerance(value, where)
    if number is None or number <= 1:
        raise ConfigError(f"{where}: {value!r} must be a number greater than 1")
    return number


def seconds(value: Any, where: str) -> float:
    """A time limit in seconds, >= 0."""
    number = tolerance(value, where)
    if number is None:
        raise ConfigError(f"{where}: a number of seconds is needed")
    return number


def text_or_none(value: Any, where: str) -> str | None:
    """Stripped text, or ``None`` when empty."""
    text = str(value).strip() if value is not None else ""
    return text or None


def module_names(value: Any, where: str) -> tuple[str, ...]:
    """Dotted module names, from a list (one per line or option) or comma-separated text."""
    items = value if isinstance(value, list | tuple) else [value] if value else []
    names = tuple(name.strip() for item in items for name in str(item).split(",") if name.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"{where}: {name!r} is not a module name (e.g. my_project.tvm_setup)")
    return names


def folder(value: Any, rootdir: Path | None) -> Path | None:
    """A folder, relative to ``rootdir`` unless absolute; ``None`` when empty."""
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() or rootdir is None else rootdir / path


def size(value: Any, where: str) -> int | None:
    """A memory size: ``8G``, ``512M``, ``1.5G`` or bytes; ``None`` when not given."""
    text = str(value).strip().upper().removesuffix("B") if value is not None else ""
    if not text:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1], 1)
    try:
        number = int(float(text[:-1] if scale != 1 else text) * scale)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a size (e.g. 8G, 512M)") from None
    if number <= 0:
        raise ConfigError(f"{where}: {value!r} must be a positive size")
    return number
