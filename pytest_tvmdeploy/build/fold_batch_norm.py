"""Fold an inference BatchNorm into the convolution before it, with NumPy.

``batch_norm(conv2d(x, W) [+ b], gamma, beta, mean, var)[0]`` with every parameter constant becomes
``conv2d(x, W * s) + (beta - (mean - b) * s)`` where ``s = gamma / sqrt(var + eps)``, per output channel:
the form ONNX exporters and ONNX Runtime give a Conv+BatchNorm pair. The conv's epilogue loses four
element-wise operators (subtract, divide, multiply, add), and a network imported from PyTorch gets
the same tuning tasks as its ONNX export. The result differs from the unfolded one by rounding only
(the weights are rescaled before the sums instead of the sums after).

TVM 0.27's ``FoldBatchnormToConv2D`` does the same for ``OIHW`` kernels with Relax operators, but
its epsilon as a ``PrimValue`` later crashes ``ConvertLayout``; here the new weights are constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_tvmdeploy.build.fold_arithmetic import constant_array, evaluate
from pytest_tvmdeploy.build.rewrite import op_name

if TYPE_CHECKING:
    import tvm


def fold_batch_norm() -> tvm.transform.Pass:
    """The pass: every Relax function, each conv2d (plus bias) whose only user is an inference batch_norm."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        uses: dict[Any, int]  # how often each variable of the function being rewritten is used

        def visit_tuple_getitem_(self, item: Any) -> Any:
            item = super().visit_tuple_getitem_(item)
            folded = self._fold(item) if item.index == 0 and isinstance(item.tuple_value, relax.Var) else None
            return folded if folded is not None else item

        def _fold(self, item: Any) -> Any | None:
            norm = self.lookup_binding(item.tuple_value)
            if op_name(norm) != "relax.nn.batch_norm" or bool(norm.attrs.training) \
                    or self.uses.get(norm.args[0], 0) != 1:
                return None
            conv, bias = self._conv_and_bias(norm.args[0])
            if conv is None:
                return None
            parameters = [constant_array(arg) for arg in (conv.args[1], *norm.args[1:])]
            if any(p is None for p in parameters):
                return None
            folded = fold_arrays(*parameters, epsilon=float(norm.attrs.epsilon), axis=int(norm.attrs.axis),
                                 conv=conv.attrs, center=bool(norm.attrs.center), scale=bool(norm.attrs.scale),
                                 conv_bias=bias)
            if folded is None:
                return None
            weight, shift = folded
            output = self.builder_.emit(relax.Call(conv.op, [conv.args[0], relax.const(weight)], conv.attrs))
            return relax.op.add(output, relax.const(shift))

        def _conv_and_bias(self, data: Any) -> tuple[Any | None, np.ndarray | None]:
            """The conv2d (with a constant weight) computing ``data``, and the constant bias added
            to its output if any; ``(None, None)`` when ``data`` is not that, or the conv has
            another user."""
            value = self._bound(data)
            bias = None
            if op_name(value) == "relax.add":
                bias = self._constant(value.args[1])
                if bias is None or self.uses.get(value.args[0], 0) != 1:
                    return None, None
                value = self._bound(value.args[0])
            if op_name(value) != "relax.nn.conv2d" or constant_array(value.args[1]) is None:
                return None, None
            return value, bias

        def _bound(self, expr: Any) -> Any:
            return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

        def _constant(self, expr: Any) -> np.ndarray | None:
            """``expr``'s value when it is a constant, or a reshape of one."""
            value = self._bound(expr)
            if isinstance(value, relax.Call):
                return evaluate(value, [self._bound(arg) for arg in value.args])
            return constant_array(value)

    @tvm.transform.module_pass(opt_level=0, name="FoldBatchNormIntoConv")
    def run(module: tvm.IRModule, _context: Any) -> tvm.IRModule:
        folder = Folder(module)
        for global_var, function in module.functions_items():
            if isinstance(function, relax.Function):
                folder.uses = _var_uses(function)
                rewritten = relax.analysis.remove_all_unused(folder.visit_expr(function))
                folder.builder_.update_func(global_var, rewritten)
        return folder.builder_.get()

    return run


def fold_arrays(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, *,
                epsilon: float, axis: int, conv: Any, center: bool = True, scale: bool = True,
                conv_bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The conv's new weights and the bias to add to its output (shaped to broadcast over it), or
    ``None`` when the layouts, axis, shapes or dtypes do not allow the fold. ``conv_bias`` is a
    bias the conv's output already had before the BatchNorm."""
    out_layout = str(conv.out_layout or conv.data_layout)
    kernel_layout = str(conv.kernel_layout)
    if out_layout.upper() != out_layout or kernel_layout.upper() != kernel_layout:  # blocked layouts (NCHW16c)
        return None
    if "C" not in out_layout or "O" not in kernel_layout or axis != out_layout.index("C"):
        return None
    channels = weight.shape[kernel_layout.index("O")]
    bias_shape = [1] * len(out_layout)
    bias_shape[axis] = channels
    if conv_bias is not None:
        if conv_bias.size != channels or conv_bias.shape not in ((channels,), tuple(bias_shape)):
            return None
        conv_bias = conv_bias.reshape(channels)
    parameters = (gamma, beta, mean, var) + ((conv_bias,) if conv_bias is not None else ())
    if weight.dtype.kind != "f" or any(p.dtype != weight.dtype or p.shape != (channels,) for p in parameters):
        return None
    dtype = weight.dtype.type
    factor = (gamma if scale else np.ones_like(gamma)) / np.sqrt(var + dtype(epsilon))
    offset = mean if conv_bias is None else mean - conv_bias
    shift = (beta if center else np.zeros_like(beta)) - offset * factor
    along = [1] * weight.ndim
    along[kernel_layout.index("O")] = channels
    return (weight * factor.reshape(along)).astype(weight.dtype), shift.reshape(bias_shape).astype(weight.dtype)


def _var_uses(function: Any) -> dict[Any, int]:
    """How often each variable of ``function`` is used (as an argument, in a tuple, as a result)."""
    from tvm import relax

    uses: dict[Any, int] = {}

    @relax.expr_functor.visitor
    class Counter(relax.PyExprVisitor):
        def visit_var_(self, var: Any) -> None:
            uses[var] = uses.get(var, 0) + 1

        def visit_dataflow_var_(self, var: Any) -> None:
            uses[var] = uses.get(var, 0) + 1

    Counter().visit_expr(function)
    return uses
