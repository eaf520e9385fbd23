"""Input shapes with named (symbolic) dimensions: what one artifact is built for, and each run's sizes.

A spec may name a dimension instead of sizing it, ``(("batch", 3, 224, 224), "float32")``. The
artifact is then built once for every ``batch`` and each run binds the name to a size
(``{"batch": 8}``). :class:`SymbolicDims` holds what a test declares about its names (the range
each may take, the sizes a program is exported at); :class:`ShapeSignature` is what an artifact
is built for and checks every run's arrays against it.

>>> specs = bind_specs({"x": (("batch", 3), "float32")}, {"batch": 8})
>>> specs["x"][0]
(8, 3)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_tvmdeploy.errors import ConfigError, InputSpecError
from pytest_tvmdeploy.inputs import is_spec

#: A dimension: a size, or the name of a symbolic size.
Dim = int | str
#: A symbol's declared sizes ``(low, high)``, both included; ``high`` ``None`` when unbounded.
Range = tuple[int, int | None]


@dataclass(frozen=True)
class SymbolicDims:
    """What a test declares about its named dimensions: ``ranges`` (the sizes the artifact must
    accept), ``example`` (the sizes a torch program is exported at: never 0 or 1, which
    torch.export would specialise to) and ``shapes`` (the sizes tests run at: a tuned artifact
    gets static, tuned code for each)."""

    ranges: Mapping[str, Range] = field(default_factory=dict)
    example: Mapping[str, int] = field(default_factory=dict)
    shapes: tuple[Mapping[str, int], ...] = ()

    @classmethod
    def declare(cls, shapes: Sequence[Mapping[str, int]], ranges: Mapping[str, Range] | None = None) -> SymbolicDims:
        """From the shapes tests run at and the declared ranges: each name is exported at the
        largest size it is run at (2 when that is smaller, if its range allows)."""
        ranges = dict(ranges or {})
        names = {name for shape in shapes for name in shape} | set(ranges)
        example = {}
        for name in sorted(names):
            size = max([shape[name] for shape in shapes if name in shape], default=ranges.get(name, (2, None))[0])
            high = ranges.get(name, (0, None))[1]
            example[name] = max(size, 2) if high is None or high >= 2 else size
        return cls(ranges, example, tuple(dict(shape) for shape in shapes if shape))

    def range_of(self, name: str) -> Range:
        return self.ranges.get(name, (1, None))


@dataclass(frozen=True)
class InputShape:
    """One input of a signature: its name, dimensions (sizes or names) and dtype."""

    name: str
    dims: tuple[Dim, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.name}: ({', '.join(map(str, self.dims))}) {self.dtype}"


@dataclass(frozen=True)
class ShapeSignature:
    """The inputs an artifact is built for: sizes where fixed, names where symbolic, with the
    declared range and export size of every name."""

    inputs: tuple[InputShape, ...]
    dims: SymbolicDims = field(default_factory=SymbolicDims)

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> ShapeSignature:
        """The static signature of these arrays (every dimension fixed)."""
        return cls(tuple(InputShape(name, tuple(a.shape), str(a.dtype)) for name, a in arrays.items()))

    @property
    def symbols(self) -> tuple[str, ...]:
        """The names of the symbolic dimensions, in order of first use."""
        return tuple(dict.fromkeys(d for i in self.inputs for d in i.dims if isinstance(d, str)))

    @property
    def is_dynamic(self) -> bool:
        return bool(self.symbols)

    def key(self) -> list[Any]:
        """What a built artifact depends on: ``(name, dims, dtype)`` per input, and the ranges."""
        inputs = [(i.name, i.dims, i.dtype) for i in self.inputs]
        if not self.is_dynamic:
            return inputs
        return [*inputs, {name: list(self.dims.range_of(name)) for name in self.symbols}]

    def bind(self, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Each symbol's size in these arrays; raises :class:`InputSpecError` naming the input,
        dimension and range when a size is outside its declared range or two inputs disagree."""
        sizes: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            shape = arrays[spec.name].shape if spec.name in arrays else ()
            if len(shape) != len(spec.dims):
                continue  # the framework's reference run names a rank mismatch
            for axis, (dim, size) in enumerate(zip(spec.dims, shape)):
                if not isinstance(dim, str):
                    continue
                where = f"input {spec.name!r}: dimension {axis} ({dim!r}) is {size}"
                low, high = self.dims.range_of(dim)
                if size < low or (high is not None and size > high):
                    raise InputSpecError(f"{where}, outside its declared range [{low}, {_bound(high)}]")
                if dim in sizes and sizes[dim][0] != size:
                    raise InputSpecError(f"{where}, but {sizes[dim][1]} gives {dim!r} = {sizes[dim][0]}")
                sizes.setdefault(dim, (size, f"input {spec.name!r}"))
        return {name: size for name, (size, _) in sizes.items()}

    def example_arrays(self) -> dict[str, np.ndarray]:
        """Zeros of every input at the export sizes (a program is traced, not computed, on them)."""
        example = self.dims.example
        return {
            i.name: np.zeros(tuple(example.get(d, 2) if isinstance(d, str) else d for d in i.dims), i.dtype)
            for i in self.inputs
        }

    def renamed(self, names: Sequence[str]) -> ShapeSignature:
        """The same signature with its inputs named ``names``, in order."""
        inputs = tuple(InputShape(name, i.dims, i.dtype) for name, i in zip(names, self.inputs))
        return ShapeSignature(inputs, self.dims)

    def describe(self) -> str:
        return "; ".join(i.describe() for i in self.inputs)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values; :meth:`from_json` reads them back."""
        return {"inputs": [[i.name, list(i.dims), i.dtype] for i in self.inputs],
                "ranges": {name: list(bounds) for name, bounds in self.dims.ranges.items()},
                "example": dict(self.dims.example), "shapes": [dict(shape) for shape in self.dims.shapes]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShapeSignature:
        inputs = tuple(InputShape(name, tuple(dims), dtype) for name, dims, dtype in data["inputs"])
        ranges = {name: (low, high) for name, (low, high) in data.get("ranges", {}).items()}
        shapes = tuple(dict(shape) for shape in data.get("shapes", []))
        return cls(inputs, SymbolicDims(ranges, dict(data.get("example", {})), shapes))


def _bound(high: int | None) -> str:
    return "unbounded" if high is None else str(high)


def symbols_of(inputs: Mapping[str, Any] | Sequence[Any]) -> tuple[str, ...]:
    """The names used as dimensions in the ``(shape, dtype)`` specs of ``inputs``."""
    return tuple(dict.fromkeys(d for _, spec in _items(inputs) if _is_symbolic_spec(spec)
                               for d in spec[0] if isinstance(d, str)))


def bind_specs(inputs: Mapping[str, Any] | Sequence[Any], sizes: Mapping[str, int]) -> Any:
    """``inputs`` with every named dimension of its specs replaced by its size in ``sizes``."""
    missing = [name for name in symbols_of(inputs) if name not in sizes]
    if missing:
        raise ConfigError(f"inputs name the dimension(s) {', '.join(map(repr, missing))}, which the shape "
                          f"{dict(sizes)} does not size: give shapes= with a size for each")

    def bound(spec: Any) -> Any:
        if not _is_symbolic_spec(spec):
            return spec
        return (tuple(sizes[d] if isinstance(d, str) else d for d in spec[0]), *spec[1:])

    if isinstance(inputs, Mapping):
        return {name: bound(spec) for name, spec in inputs.items()}
    return [bound(spec) for spec in inputs]


def declared_signature(inputs: Mapping[str, Any] | Sequence[Any], arrays: Mapping[str, np.ndarray],
                       dims: SymbolicDims) -> ShapeSignature:
    """The signature of ``arrays`` with the dimensions ``inputs`` names kept symbolic (a list of
    specs is matched to ``arrays`` by position, a dict by name)."""
    specs = inputs if isinstance(inputs, Mapping) else dict(zip(arrays, [spec for _, spec in _items(inputs)]))
    shapes = []
    for name, array in arrays.items():
        spec = specs.get(name)
        shape = tuple(spec[0]) if _is_symbolic_spec(spec) else tuple(array.shape)
        shapes.append(InputShape(name, shape, str(array.dtype)))
    return ShapeSignature(tuple(shapes), dims)


def shape_id(sizes: Mapping[str, int]) -> str:
    """A test id for a binding: ``batch=8`` or ``batch=1-seq=64``."""
    return "-".join(f"{name}={size}" for name, size in sizes.items())


def parse_shapes(value: Any, where: str) -> tuple[list[dict[str, int]], dict[str, Range]]:
    """``shapes=`` of a marker: a list of ``{name: size}``, or ``{name: (low, high)}`` ranges (run at
    both ends, and declared as the range) → the shapes and the ranges they declare."""
    if isinstance(value, Mapping):
        ranges = parse_ranges(value, where)
        ends = [{name: low for name, (low, _) in ranges.items()}]
        if all(high is not None for _, high in ranges.values()):
            ends.append({name: high for name, (_, high) in ranges.items()})
        return [dict(e) for e in dict.fromkeys(tuple(e.items()) for e in ends)], ranges
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a list of {{dimension name: size}} or a dict of ranges "
                          f"{{name: (low, high)}}, got {value!r}")
    shapes = []
    for shape in value:
        if not isinstance(shape, Mapping) or not shape or not all(
                isinstance(k, str) and _is_size(v, 0) for k, v in shape.items()):
            raise ConfigError(f"{where}: each shape must map dimension names to sizes >= 0, e.g. "
                              f"{{'batch': 8}}; got {shape!r}")
        shapes.append({k: int(v) for k, v in shape.items()})
    return shapes, {}


def parse_ranges(value: Any, where: str) -> dict[str, Range]:
    """``ranges=`` of a marker: ``{name: (low, high)}``, ``high`` ``None`` for unbounded."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected {{dimension name: (low, high)}}, got {value!r}")
    ranges = {}
    for name, bounds in value.items():
        if (not isinstance(name, str) or not isinstance(bounds, Sequence) or len(bounds) != 2
                or not _is_size(bounds[0], 0) or not (bounds[1] is None or _is_size(bounds[1], bounds[0]))):
            raise ConfigError(f"{where}: {name!r}: {bounds!r} is not a range (low, high) of sizes with "
                              f"0 <= low <= high (high None: unbounded)")
        ranges[name] = (int(bounds[0]), None if bounds[1] is None else int(bounds[1]))
    return ranges


def _is_size(value: Any, minimum: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum


def _is_symbolic_spec(value: Any) -> bool:
    """An input spec (see :func:`~pytest_tvmdeploy.inputs.is_spec`) that names a dimension."""
    return is_spec(value) and any(isinstance(d, str) for d in value[0])


def _items(inputs: Mapping[str, Any] | Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    if isinstance(inputs, Mapping):
        return inputs.items()
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        return enumerate(inputs)
    return ()
