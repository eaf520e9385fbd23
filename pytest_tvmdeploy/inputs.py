"""Turn the ``inputs=`` of a marker into named, reproducible numpy arrays.

Accepted forms, per input: a numpy array, a torch tensor, a Python scalar/list,
or a spec ``(shape, dtype)`` / ``(shape, dtype, (low, high))`` for seeded random data.
The whole ``inputs`` is a dict ``name -> value`` or a list in positional order.

>>> arrays = make_inputs({"x": ((1, 3), "float32")}, seed=0)
>>> arrays["x"].shape
(1, 3)
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import InputSpecError

#: Dtypes accepted in a ``(shape, dtype)`` spec.
SUPPORTED_DTYPES = (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "bool",
)

# Default value ranges of random integer data: small enough to be valid indices
# into most embedding tables and gather axes, wide enough to exercise arithmetic.
_DEFAULT_INT_RANGE = {"int8": (-128, 128), "uint8": (0, 256)}
_DEFAULT_WIDE_INT_RANGE = (0, 100)


def seed_for(test_id: str) -> int:
    """A stable 32-bit seed derived from a test id (same id → same data, on any machine)."""
    return zlib.crc32(test_id.encode("utf-8"))


def make_inputs(
    inputs: Mapping[str, Any] | Sequence[Any],
    *,
    seed: int,
    names: Sequence[str] | None = None,
    optional: frozenset[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """Materialize ``inputs`` into ``name -> array`` (in positional order).

    ``names`` gives the model's input names, used when ``inputs`` is a list;
    without them the names are ``input0``, ``input1``, ... Names in ``optional``
    (parameters with defaults) may be left out.
    """
    if isinstance(inputs, Mapping):
        items = list(inputs.items())
        if names is not None:
            if not set(names) - optional <= set(inputs) <= set(names):
                raise InputSpecError(
                    f"inputs {sorted(map(str, inputs))} do not match the model's inputs {list(names)}"
                )
            items = [(name, inputs[name]) for name in names if name in inputs]
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        required = len([n for n in names if n not in optional]) if names is not None else 0
        if names is not None and not required <= len(inputs) <= len(names):
            raise InputSpecError(
                f"inputs: {len(inputs)} values given but the model takes {len(names)} "
                f"inputs ({', '.join(names)})"
            )
        labels = list(names) if names is not None else [f"input{i}" for i in range(len(inputs))]
        items = list(zip(labels, inputs))
    else:
        raise InputSpecError(
            f"inputs: expected a dict name -> value or a list, got {type(inputs).__name__}"
        )
    if not items and not (names is not None and not names):  # a model of constants alone takes none
        raise InputSpecError("inputs: no inputs given")
    rng = np.random.default_rng(seed)
    return {str(name): _materialize(str(name), value, rng) for name, value in items}


def _materialize(name: str, value: Any, rng: np.random.Generator) -> np.ndarray:
    if is_spec(value):
        return _random_array(name, value, rng)
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, order="C")  # keeps 0-d values 0-d, unlike ascontiguousarray
    except Exception as exc:  # noqa: BLE001 - any conversion failure is a spec error
        raise InputSpecError(f"input {name!r}: cannot convert {type(value).__name__} to an array: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise InputSpecError(
            f"input {name!r}: {value!r} is neither an array (numeric or bool) nor a (shape, dtype) spec"
        )
    return array


def is_spec(value: Any) -> bool:
    """Whether ``value`` describes an input rather than giving it: ``(shape, dtype)`` or
    ``(shape, dtype, (low, high))``."""
    return (
        isinstance(value, tuple)
        and len(value) in (2, 3)
        and isinstance(value[0], (tuple, list))
        and isinstance(value[1], str)
    )


def _random_array(name: str, spec: tuple, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = tuple(spec[0]), spec[1]
    if dtype not in SUPPORTED_DTYPES:
        raise InputSpecError(
            f"input {name!r}: unsupported dtype {dtype!r} (supported: {', '.join(SUPPORTED_DTYPES)})"
        )
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputSpecError(f"input {name!r}: shape {shape!r} must be non-negative integers")
    value_range = spec[2] if len(spec) == 3 else None
    if value_range is not None and not value_range[0] < value_range[1]:
        raise InputSpecError(f"input {name!r}: empty value range [{value_range[0]}, {value_range[1]})")
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.startswith("float"):
        if value_range is None:
            return rng.standard_normal(shape).astype(dtype)
        return rng.uniform(value_range[0], value_range[1], shape).astype(dtype)
    low, high = value_range if value_range is not None else _DEFAULT_INT_RANGE.get(dtype, _DEFAULT_WIDE_INT_RANGE)
    return rng.integers(low, high, shape).astype(dtype)


def signature(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` per input: what a compiled artifact depends on."""
    return [(name, tuple(a.shape), str(a.dtype)) for name, a in arrays.items()]

