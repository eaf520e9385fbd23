"""Convolutions in a channel-blocked layout (``NCHW16c``), the form x86 vector units run fastest.

In ``NCHW`` a convolution's innermost loop runs along image rows (7 values wide in ResNet's last
stage) and its weights are read with strides; in ``NCHW16c`` it runs along a block of 16 channels,
one AVX-512 register, with weights pre-packed to match (``OIHW16i16o``). Tuned with equal trials,
ResNet's 3x3 conv on 56x56x64 reached 247 GFLOP/s blocked against 123 plain.

:func:`block_convolutions` converts every convolution whose channels divide into blocks (Relax's
``ConvertLayout``, which carries the layout through the element-wise operators, pooling and
additions in between, so only the model's edges change layout; a ``clip`` becomes ``maximum`` and
``minimum`` for that) and packs the weights;
:data:`LEGALIZE_BLOCKED` tells ``LegalizeOps`` how to compute a blocked convolution (TOPI's
``conv2d_NCHWc`` for ordinary ones, :func:`depthwise_conv2d_nchwc` for depthwise ones). A network
the conversion would leave changing layout inside (channel counts that do not divide, grouped
convolutions other than depthwise ones) stays as it is: see :data:`MAX_LAYOUT_CHANGES`; so does one
whose conversion TVM cannot make (its layout rule for ``split`` fails a check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.build.rewrite import op_name, rewrite_relax_functions, visit_relax_functions

if TYPE_CHECKING:
    import tvm

#: Channels per block: one AVX-512 register of float32.
BLOCK = 16
#: A network is blocked only if it changes layout at most this often (into the blocked layout
#: after the stem and out of it before the head): each change more copies an activation, and
#: MobileNetV2 (24-channel layers stay plain, ~10 changes), tuned 15 minutes, ran 7.4-8.8 ms
#: blocked against 5.6 ms plain; blocked in 8 channels throughout (two changes) it still ran 8.8 ms.
MAX_LAYOUT_CHANGES = 2
DATA_LAYOUT = f"NCHW{BLOCK}c"
#: How ConvertLayout packs every convolution's weights (the depthwise form; ordinary ones are repacked).
_CONVERTED_KERNEL = f"OIHW1i{BLOCK}o"
_KERNEL = f"OIHW{BLOCK}i{BLOCK}o"


def block_convolutions() -> tvm.transform.Pass:
    """The pass: convolutions to ``NCHW16c`` where their channels allow, weights packed to match,
    unless that leaves more than :data:`MAX_LAYOUT_CHANGES` layout changes."""
    import tvm
    from tvm import relax

    convert = relax.transform.ConvertLayout({"relax.nn.conv2d": [DATA_LAYOUT, _CONVERTED_KERNEL]})
    merge_copies = relax.transform.EliminateCommonSubexpr()  # ConvertLayout changes a value once per use
    # A value nobody reads would still be converted back to NCHW, two layout changes more: PyTorch's
    # max pooling leaves one (a zeros_like of its result, for the indices it does not return, in a
    # tuple of which only the result is read).
    drop_unused = tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                            relax.transform.DeadCodeElimination()])

    @relax.expr_functor.mutator
    class Repack(relax.PyExprMutator):
        blocked_grouped = False  # a grouped conv that is not depthwise has no blocked form here

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if op_name(call) != "relax.nn.conv2d" or call.attrs.data_layout != DATA_LAYOUT:
                return call
            if call.attrs.groups == 1:
                return _ordinary(call)
            self.blocked_grouped |= not _is_depthwise(call)
            return call

    @relax.expr_functor.mutator
    class ForConversion(relax.PyExprMutator):
        """What ConvertLayout needs first (see :data:`_REWRITES`)."""

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            rewrite = _REWRITES.get(op_name(call))
            return rewrite(call) if rewrite else call

    @tvm.transform.module_pass(opt_level=0, name="BlockConvolutions")
    def run(module: tvm.IRModule, _context: Any) -> tvm.IRModule:
        if not _has_conv2d(module):  # nothing to gain
            return module
        try:
            used = drop_unused(module)
            converted = merge_copies(convert(rewrite_relax_functions(ForConversion(used), used)))
        except tvm.error.InternalError:  # ConvertLayout's rules fail on some operators (split): stay plain
            return module
        repack = Repack(converted)
        blocked = rewrite_relax_functions(repack, converted)
        if repack.blocked_grouped or layout_changes(blocked) > MAX_LAYOUT_CHANGES:
            return module
        return blocked

    return run


def _has_conv2d(module: tvm.IRModule) -> bool:
    """Whether any Relax function of ``module`` calls ``relax.nn.conv2d``."""
    from tvm import relax

    found = False

    @relax.expr_functor.visitor
    class Finder(relax.PyExprVisitor):
        def visit_call_(self, call: Any) -> None:
            nonlocal found
            super().visit_call_(call)
            found |= op_name(call) == "relax.nn.conv2d"

    visit_relax_functions(Finder(), module)
    return found


def layout_changes(module: tvm.IRModule) -> int:
    """How many activations the module's functions move between layouts (a value computed from
    constants alone, a weight or a bias, does not count: it is folded before the build)."""
    import tvm
    from tvm import relax

    count = 0

    @relax.expr_functor.visitor
    class Changes(relax.PyExprVisitor):
        folded: set[Any]  # variables bound to values of constants alone

        def visit_var_binding_(self, binding: Any) -> None:
            value = binding.value
            if self._constant(value) or (isinstance(value, relax.Call)
                                         and all(self._constant(arg) for arg in value.args)):
                self.folded.add(binding.var)
            self.visit_expr(value)

        def visit_call_(self, call: Any) -> None:
            nonlocal count
            super().visit_call_(call)
            if op_name(call) == "relax.layout_transform" and not self._constant(call.args[0]):
                count += 1

        def _constant(self, expr: Any) -> bool:
            return isinstance(expr, (tvm.ir.expr.Constant, relax.ShapeExpr)) or expr in self.folded

    changes = Changes()
    changes.folded = set()  # a variable is bound once in a module: one set serves all functions
    visit_relax_functions(changes, module)
    return count


def _min_max(call: Any) -> Any:
    """``clip(x, lo, hi)`` as ``minimum(maximum(x, lo), hi)``: ConvertLayout cannot carry a layout
    through ``clip`` (ReLU6 in MobileNets), but through element-wise binary operators it can."""
    from tvm import relax

    x, low, high = call.args
    dtype = call.ty.dtype
    return relax.op.minimum(relax.op.maximum(x, relax.const(_number(low), dtype)),
                            relax.const(_number(high), dtype))


def _positive_axes(call: Any) -> Any:
    """``squeeze`` with its negative axes counted from the front: ConvertLayout's layout rule for
    ``squeeze`` indexes a string with the axes as given, and a negative one made it fail with
    ``std::bad_alloc`` (a transformer's ``squeeze(x, axis=[-2])``)."""
    from tvm import relax

    axes = call.attrs.axis
    if axes is None or all(int(axis) >= 0 for axis in axes):
        return call
    rank = len(call.args[0].ty.shape.values)
    return relax.op.squeeze(call.args[0], axis=[int(axis) % rank for axis in axes])


#: Rewrites before ConvertLayout, by operator: ``clip`` so ReLU6 does not hold the layout back,
#: ``squeeze`` so the conversion does not crash.
_REWRITES = {"relax.clip": _min_max, "relax.squeeze": _positive_axes}


def _number(bound: Any) -> float:
    """A clip bound (a ``PrimValue``) as a Python number."""
    value = bound.value
    return value if isinstance(value, (int, float)) else value.value


def _ordinary(call: Any) -> Any:
    """A groups=1 convolution with its ``OIHW1i16o`` weights repacked to ``OIHW16i16o``."""
    from tvm import relax

    kernel = relax.op.layout_transform(
        call.args[1], index_map=lambda o, i, h, w, _one, ob: (o, i // BLOCK, h, w, i % BLOCK, ob))
    return relax.op.nn.conv2d(call.args[0], kernel, **_conv_attrs(call, kernel_layout=_KERNEL))


def _is_depthwise(call: Any) -> bool:
    """One input channel per group and as many output channels as groups (the multiplier is 1)."""
    kernel_shape = [int(d) for d in call.args[1].ty.shape.values]  # O/16, I, H, W, 1, 16
    return kernel_shape[1] == 1 and kernel_shape[0] * BLOCK == int(call.attrs.groups)


def _conv_attrs(call: Any, *, kernel_layout: str) -> dict[str, Any]:
    """``call``'s convolution attributes with another kernel layout."""
    attrs = call.attrs
    return {"strides": attrs.strides, "padding": attrs.padding, "dilation": attrs.dilation, "groups": attrs.groups,
            "data_layout": attrs.data_layout, "kernel_layout": kernel_layout, "out_layout": attrs.out_layout,
            "out_dtype": attrs.out_dtype}


def legalize_conv2d(bb: Any, call: Any) -> Any:
    """``LegalizeOps``' rule for ``relax.nn.conv2d``: blocked layouts here, plain ones as TVM does."""
    import tvm
    from tvm import topi

    attrs = call.attrs
    if attrs.data_layout != DATA_LAYOUT:
        return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
    out_dtype = attrs.out_dtype or call.ty.dtype
    if attrs.groups == 1:
        return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], attrs.strides, attrs.padding,
                          attrs.dilation, DATA_LAYOUT, DATA_LAYOUT, out_dtype, primfunc_name_hint="conv2d_NCHWc")
    return bb.call_te(depthwise_conv2d_nchwc, call.args[0], call.args[1], attrs.strides, attrs.padding,
                      attrs.dilation, out_dtype, primfunc_name_hint="depthwise_conv2d_NCHWc")


#: The ``customize_legalize_map`` every ``LegalizeOps`` of a build gets.
LEGALIZE_BLOCKED = {"relax.nn.conv2d": legalize_conv2d}


def depthwise_conv2d_nchwc(data: Any, kernel: Any, strides: Any, padding: Any, dilation: Any, out_dtype: str) -> Any:
    """Depthwise convolution of ``NCHW16c`` data with ``OIHW1i16o`` weights, as a TE compute."""
    from tvm import te, topi

    batch, chunks, height, width, block = (int(d) for d in data.shape)
    kernel_h, kernel_w = int(kernel.shape[2]), int(kernel.shape[3])
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    padded = topi.nn.pad(data, (0, 0, top, left, 0), (0, 0, bottom, right, 0), name="padded")
    ry = te.reduce_axis((0, kernel_h), name="ry")
    rx = te.reduce_axis((0, kernel_w), name="rx")
    return te.compute(
        (batch, chunks, out_h, out_w, block),
        lambda n, c, y, x, b: te.sum(
            padded[n, c, y * stride_h + ry * dilation_h, x * stride_w + rx * dilation_w, b].astype(out_dtype)
            * kernel[c, 0, ry, rx, 0, b].astype(out_dtype), axis=[ry, rx]),
        name="depthwise_conv2d_NCHWc",
    )
