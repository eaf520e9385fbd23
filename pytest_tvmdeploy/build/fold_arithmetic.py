"""Fold arithmetic on constants with NumPy before ``LegalizeOps``.

Relax's ``FoldConstant`` evaluates an operator on constants by compiling its legalized TIR
function with LLVM and running it: ~80 ms per distinct function. A decomposed BatchNorm leaves six
such operators on its parameters (``expand_dims`` of mean, variance, scale and shift, ``add`` of
epsilon, ``sqrt``), so densenet121 spent 27 of its 29 s of preparation compiling them. This pass
computes the exactly rounded operators (IEEE ``+ - * /`` and ``sqrt``), ``dequantize`` of integer
weights (one rounding, as TVM legalizes it) and the pure data movements with NumPy instead, giving
the same bits, and leaves everything else to ``FoldConstant``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.build.rewrite import op_name, rewrite_relax_functions

if TYPE_CHECKING:
    import tvm

#: Exactly rounded in IEEE arithmetic, so NumPy and LLVM agree bit for bit.
_ARITHMETIC: dict[str, Callable[..., np.ndarray]] = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.sqrt": np.sqrt,
    "relax.negative": np.negative,
}
#: Integer to float: ``float32(int32(q) - int32(zero_point)) * scale``, one rounding, as TVM legalizes it.
_DEQUANTIZE = "relax.dequantize"
#: Data movement: no arithmetic at all.
_MOVEMENT = ("relax.expand_dims", "relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.layout_transform")
_FLOATS = ("float16", "float32", "float64")
#: Operands larger than this stay for ``FoldConstant`` (the memory of a NumPy copy of a big weight).
MAX_ELEMENTS = 1 << 24


def fold_constant_arithmetic() -> tvm.transform.Pass:
    """The pass: a module pass over every Relax function."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            folded = evaluate(call, [self._constant(arg) for arg in call.args])
            return relax.const(folded, str(folded.dtype)) if folded is not None else call

        def _constant(self, arg: Any) -> Any:
            if isinstance(arg, relax.Var):
                bound = self.lookup_binding(arg)
                return bound if bound is not None else arg
            return arg

    @tvm.transform.module_pass(opt_level=0, name="FoldConstantArithmetic")
    def run(module: tvm.IRModule, _context: Any) -> tvm.IRModule:
        return rewrite_relax_functions(Folder(module), module)

    return run


def evaluate(call: Any, args: list[Any]) -> np.ndarray | None:
    """``call``'s value computed with NumPy when it is one of the folded operators and ``args``
    are all constants (``None`` otherwise); the result has exactly the call's shape and dtype."""
    import tvm

    name = op_name(call)
    if name not in _ARITHMETIC and name not in _MOVEMENT and name != _DEQUANTIZE:
        return None
    if not args or not isinstance(args[0], tvm.ir.expr.Constant):
        return None
    arrays = [constant_array(arg) for arg in (args[:1] if name in _MOVEMENT else args)]
    if any(a is None or a.size > MAX_ELEMENTS for a in arrays):
        return None
    expected = _static_type(call)
    if expected is None:
        return None
    shape, dtype = expected
    if name in _ARITHMETIC:
        if dtype not in _FLOATS or any(str(a.dtype) != dtype for a in arrays):
            return None
        with np.errstate(all="ignore"):  # inf and nan fold as LLVM computes them
            result = _ARITHMETIC[name](*arrays)
    elif name == _DEQUANTIZE:
        result = _dequantize(*arrays, axis=int(call.attrs.axis)) if dtype == "float32" else None
    else:
        result = _move(name, arrays[0], call.attrs, shape)
    if result is None or result.shape != shape or str(result.dtype) != dtype:
        return None
    return np.asarray(result, order="C")


def _dequantize(data: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray | None:
    if data.dtype.kind not in "iu" or scale.dtype != np.float32 or zero_point.dtype.kind not in "iu":
        return None

    def along_axis(parameter: np.ndarray) -> np.ndarray | None:
        if parameter.size == 1:
            return parameter.reshape(())
        if parameter.ndim != 1 or parameter.shape[0] != data.shape[axis]:
            return None
        shape = [1] * data.ndim
        shape[axis] = parameter.shape[0]
        return parameter.reshape(shape)

    scale, zero_point = along_axis(scale), along_axis(zero_point)
    if scale is None or zero_point is None:
        return None
    return (data.astype(np.int32) - zero_point.astype(np.int32)).astype(np.float32) * scale


def _move(name: str, array: np.ndarray, attrs: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if name == "relax.reshape":
        return array.reshape(shape) if array.size == int(np.prod(shape, dtype=np.int64)) else None
    if name == "relax.expand_dims":
        return np.expand_dims(array, tuple(int(a) for a in attrs.axis))
    if name == "relax.permute_dims":
        return np.transpose(array, None if attrs.axes is None else [int(a) for a in attrs.axes])
    if name == "relax.layout_transform":  # packing weights for a blocked layout; padded ones stay
        return None if attrs.pad_value is not None else _layout_transform(array, attrs.index_map, shape)
    if name == "relax.squeeze":
        return np.squeeze(array, None if attrs.axis is None else tuple(int(a) for a in attrs.axis))
    return None


def _layout_transform(array: np.ndarray, index_map: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """``array`` moved to ``shape`` by ``index_map`` (an affine map of ``+ - * // %``), or ``None``."""
    if array.size != int(np.prod(shape, dtype=np.int64)):
        return None  # padded or cropped
    grid = dict(zip((v.name for v in index_map.initial_indices), np.indices(array.shape, sparse=True)))
    targets = [_index(expr, grid) for expr in index_map.final_indices]
    if any(t is None for t in targets):
        return None
    result = np.empty(shape, dtype=array.dtype)
    result[tuple(np.broadcast_arrays(*targets))] = array
    return result


def _index(expr: Any, grid: dict[str, np.ndarray]) -> Any:
    """An index expression evaluated over ``grid`` (broadcastable index arrays by variable name)."""
    from tvm import tirx

    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.Var):
        return grid.get(expr.name)
    operations = {tirx.Add: np.add, tirx.Sub: np.subtract, tirx.Mul: np.multiply,
                  tirx.FloorDiv: np.floor_divide, tirx.FloorMod: np.mod}
    operation = operations.get(type(expr))
    if operation is None:
        return None
    a, b = _index(expr.a, grid), _index(expr.b, grid)
    return None if a is None or b is None else operation(a, b)


def constant_array(arg: Any) -> np.ndarray | None:
    """A tensor constant's value (``None`` for a string, a scalar of another kind...)."""
    value = getattr(arg, "value", None)
    return value.numpy() if hasattr(value, "numpy") else None


def _static_type(call: Any) -> tuple[tuple[int, ...], str] | None:
    """The call's result shape and dtype, when both are known numbers."""
    from tvm import relax, tirx

    ty = call.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(d, tirx.IntImm) for d in ty.shape.values):
        return None
    return tuple(int(d) for d in ty.shape.values), str(ty.dtype)
