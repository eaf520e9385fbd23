"""int8 convolutions in the form x86 VNNI runs fast: uint8 activations, 16-channel blocks.

The realized module's convs multiply int8 data by int8 weights in NCHW. x86's ``vpdpbusd``
multiplies *unsigned* bytes by signed ones, and MetaSchedule tensorizes with it only on
channel-blocked layouts (data NCHW16c, weights OIHW4i16o4i). :func:`use_vnni_convs` rewrites
each eligible conv to

    u8 = int8 + 128  ->  padded NCHW16c (zero in int8 = 128 in uint8)  ->  blocked u8 x i8 conv
    ->  NCHW, minus 128 * sum(weights of the output channel)

which is the same int32 result, exactly: ``sum((x + 128) * w) = sum(x * w) + 128 * sum(w)``.
Everything after the ``+ 128`` is one TIR function, layout changes included: MetaSchedule places
them inside the conv's tiles, and the requantization that follows fuses into the function,
instead of separate passes over memory (mobilenet_v2: 47 tuning tasks instead of 89).
Channel counts that are not multiples of 16 are padded to the next block: zero weights for the
missing input and output channels (so the padded data channels add nothing), and only the real
output channels are read back. A conv reading fewer than :data:`MIN_IN_CHANNELS` channels (a
network's first conv on an RGB image) blocks its input in 4 channels instead (3 real + 1 zero):
padded to 16, three quarters of its products would be zeros. Depthwise/grouped convs keep their form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax import op as R
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.topi.utils import get_const_tuple

from pytest_tvmdeploy.quantize.graph import is_constant

if TYPE_CHECKING:
    from pytest_tvmdeploy.targets import TargetSpec

BLOCK = 16  #: channels per block, data and output
LANES = 4  #: uint8 x int8 products one ``vpdpbusd`` lane sums
SHIFT = 128  #: int8 -> uint8 offset
MIN_IN_CHANNELS = 8  #: fewer input channels are blocked in 4s (or 8s), not 16s: see the module docstring


def blocks(channels: int, block: int = BLOCK) -> int:
    """``block``-channel blocks that hold ``channels`` (the last one padded)."""
    return -(-channels // block)


def input_block(in_channels: int) -> int:
    """Input channels per block of a conv reading ``in_channels``: 16, or for fewer than
    :data:`MIN_IN_CHANNELS` the multiple of :data:`LANES` that holds them."""
    return BLOCK if in_channels >= MIN_IN_CHANNELS else blocks(in_channels, LANES) * LANES


def target_has_vnni(target: TargetSpec) -> bool:
    """Whether ``target``'s CPU has AVX-512 VNNI (by its ``-mcpu`` / ``-mattr``, as LLVM knows them)."""
    if target.as_dict.get("kind") != "llvm":
        return False
    from tvm.target import codegen

    return bool(codegen.target_has_features("avx512vnni", target.to_tvm()))


def use_vnni_convs(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with every eligible int8 conv2d in the VNNI form (see the module docstring), and
    how many convs were rewritten."""
    rewriter = _VnniConvs(mod)
    return rewriter.transform(), rewriter.rewritten


def pack_weights(weights: np.ndarray) -> np.ndarray:
    """OIHW int8 weights as ``conv2d_NCHWc_int8`` reads them: ``[O/16, I/B, KH, KW, B/4, 16, 4]``
    (``B``: :func:`input_block`) with ``packed[o, i, y, x, j, ob, k] = weights[16 o + ob, B i + 4 j + k, y, x]``
    (0 for the channels that pad O and I to whole blocks)."""
    out_channels, in_channels, height, width = weights.shape
    in_block = input_block(in_channels)
    in_chunks = blocks(in_channels, in_block)
    padded = np.zeros((blocks(out_channels) * BLOCK, in_chunks * in_block, height, width), weights.dtype)
    padded[:out_channels, :in_channels] = weights
    blocked = padded.reshape(blocks(out_channels), BLOCK, in_chunks, in_block // LANES, LANES, height, width)
    return np.ascontiguousarray(blocked.transpose(0, 2, 5, 6, 3, 1, 4))


def eligible(call: relax.Call) -> bool:
    """An int8 x int8 -> int32 NCHW/OIHW conv2d with constant weights, not grouped."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return False
    data, weights = call.args
    attrs = call.attrs
    if not is_constant(weights) or attrs.groups != 1 or str(attrs.out_dtype) != "int32":
        return False
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return False
    data_type = data.ty
    return getattr(data_type, "dtype", None) == "int8" and str(weights.value.dtype) == "int8" \
        and data_type.shape is not None


def vnni_conv(data: te.Tensor, kernel: te.Tensor, offsets: te.Tensor, strides: list[int], padding: list[int],
              dilation: list[int]) -> te.Tensor:
    """TE: NCHW uint8 ``data`` padded and blocked (pad value: the one that means int8 zero), the
    blocked uint8 x int8 -> int32 conv, then its NCHW result minus ``offsets`` (per output channel).

    Written here rather than taken from TOPI: TOPI's block carries a ``schedule_rule``
    annotation, and MetaSchedule applies none of its generic rules (tiling, tensorization)
    to an annotated block."""
    top, left, bottom, right = padding
    (stride_h, stride_w), (dilation_h, dilation_w) = strides, dilation
    batch, in_channels, height, width = get_const_tuple(data.shape)
    out_chunks, in_chunks, kernel_h, kernel_w, lane_groups, _, _ = get_const_tuple(kernel.shape)  # pack_weights' layout
    in_block = lane_groups * LANES
    (out_channels,) = get_const_tuple(offsets.shape)
    padded = te.compute(
        (batch, in_chunks, height + top + bottom, width + left + right, in_block),
        lambda n, c, y, x, cb: te.if_then_else(
            te.all(y >= top, y < top + height, x >= left, x < left + width, c * in_block + cb < in_channels),
            data[n, te.min(c * in_block + cb, in_channels - 1), y - top, x - left],
            te.const(SHIFT, "uint8"),  # int8 zero; in a padding channel it meets zero weights
        ),
        name="pad_u8_nchw16c",
    )
    out_h = (height + top + bottom - (kernel_h - 1) * dilation_h - 1) // stride_h + 1
    out_w = (width + left + right - (kernel_w - 1) * dilation_w - 1) // stride_w + 1
    ry, rx = te.reduce_axis((0, kernel_h), "ry"), te.reduce_axis((0, kernel_w), "rx")
    rc = te.reduce_axis((0, in_chunks), "rc")
    rj, rk = te.reduce_axis((0, lane_groups), "rj"), te.reduce_axis((0, LANES), "rk")
    blocked = te.compute(
        (batch, out_chunks, out_h, out_w, BLOCK),
        lambda n, o, y, x, ob: te.sum(
            padded[n, rc, y * stride_h + ry * dilation_h, x * stride_w + rx * dilation_w,
                   rj * LANES + rk].astype("int32")
            * kernel[o, rc, ry, rx, rj, ob, rk].astype("int32"),
            axis=[ry, rx, rc, rj, rk],
        ),
        name="conv2d_nchw16c_u8i8",
    )
    return te.compute(
        (batch, out_channels, out_h, out_w),
        lambda n, c, y, x: blocked[n, c // BLOCK, y, x, c % BLOCK] - offsets[c],
        name="conv2d_nchw16c_u8i8_nchw",
    )


@mutator
class _VnniConvs(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod = mod
        self.rewritten = 0

    def transform(self) -> tvm.IRModule:
        for global_var, func in self.mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(global_var, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not eligible(call):
            return call
        self.rewritten += 1
        data, weights = call.args
        attrs = call.attrs
        bb = self.builder_
        unsigned = bb.emit(R.astype(R.add(R.astype(data, "int16"), relax.const(SHIFT, "int16")), "uint8"))
        values = weights.value.numpy()
        kernel = relax.const(pack_weights(values))
        offsets = relax.const((SHIFT * values.astype(np.int32).sum(axis=(1, 2, 3))).astype("int32"))
        padding = [int(p) for p in attrs.padding]
        return bb.emit_te(vnni_conv, unsigned, kernel, offsets, [int(s) for s in attrs.strides], padding,
                          [int(d) for d in attrs.dilation], primfunc_name_hint="conv2d_nchw16c_u8i8")
