"""Find the quantizable ops of a Relax module and fold per-channel affine chains into them.

A *site* is a ``nn.conv2d`` or ``matmul`` with a constant weight. The elementwise chain that
the frontends leave after it (bias add, decomposed batch norm: subtract / divide / multiply /
add with per-channel constants) is folded into the site's weights and bias, so that the whole
chain becomes one integer op plus an int32 bias.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

CONV = "nn.conv2d"
MATMUL = "matmul"
_AFFINE = {"add", "subtract", "multiply", "divide"}


@dataclass
class Site:
    """One quantizable op: its float input, the folded weight/bias, and the var that ends its chain."""

    index: int                      # position among all sites, in program order
    kind: str                       # CONV or MATMUL
    ordinal: int                    # n-th op of this kind (skip_conv_layers counts convs)
    call: relax.Call                # the original conv2d / matmul call
    input: relax.Expr               # its float data input
    output: relax.Var               # the binding var that ends the folded chain
    weight: np.ndarray              # conv: OIHW; matmul: (in, out)
    bias: np.ndarray                # per output channel
    chain: list[relax.Var] = field(default_factory=list)  # vars whose bindings are folded away
    activation: relax.Call | None = None  # a relu / clip applied right after the chain, absorbed

    @property
    def channel_axis(self) -> int:
        """The weight axis of output channels (per-channel scales run along it)."""
        return 0 if self.kind == CONV else 1


def is_constant(expr: relax.Expr) -> bool:
    """A literal tensor (TVM 0.27 calls Relax constants ``GenericConst``)."""
    return isinstance(expr, tvm.ir.expr.GenericConst)


def prepare(mod: tvm.IRModule) -> tvm.IRModule:
    """Decompose batch norm for inference, fold constants, drop dead bindings."""
    for transform in (
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
        relax.transform.CanonicalizeBindings(),
    ):
        mod = transform(mod)
    return mod


def main_block(mod: tvm.IRModule) -> tuple[relax.Function, list[relax.Binding]]:
    """``main`` and the live bindings of its single dataflow block (what every frontend emits).

    Bindings nothing reads are left out (batch norm's decomposition leaves an unused tuple of
    the running statistics behind, which would otherwise pin a float copy of its input).
    """
    func = mod["main"]
    blocks = func.body.blocks
    if len(blocks) != 1 or not isinstance(blocks[0], relax.DataflowBlock):
        raise ValueError(f"expected main to hold one dataflow block, found {len(blocks)} block(s)")
    live = set(vars_in(func.body.body))
    kept = []
    for binding in reversed(list(blocks[0].bindings)):
        if binding.var in live or not isinstance(binding.var, relax.DataflowVar):
            kept.append(binding)
            live.update(vars_in(binding.value))
    return func, kept[::-1]


def find_sites(mod: tvm.IRModule) -> list[Site]:
    """Every conv2d (NCHW/OIHW, float32) and matmul with a constant weight, chains folded."""
    func, bindings = main_block(mod)
    uses = use_counts(bindings, func.body.body)
    producer = {b.var: b.value for b in bindings}
    consumers: dict[relax.Var, list[relax.Binding]] = {}
    for binding in bindings:
        for var in vars_in(binding.value):
            consumers.setdefault(var, []).append(binding)
    sites: list[Site] = []
    counts: Counter[str] = Counter()
    for binding in bindings:
        value = binding.value
        kind = _site_kind(value)
        if kind is None:
            continue
        weight = _constant(value.args[1], producer)
        if weight is None:
            continue
        weight = weight.astype(np.float64)
        channels = weight.shape[0] if kind == CONV else weight.shape[-1]
        scale, shift = np.ones(channels), np.zeros(channels)
        end, chain = binding.var, []
        while uses.get(end, 0) == 1 and len(consumers.get(end, [])) == 1:
            step = consumers[end][0]
            folded = _fold_step(step.value, end, scale, shift, kind, channels)
            if folded is None:
                break
            scale, shift = folded
            chain.append(end)
            end = step.var
        activation = None
        if uses.get(end, 0) == 1 and len(consumers.get(end, [])) == 1 and _is_activation(consumers[end][0].value, end):
            # The output's scale must fit what the activation lets through (ReLU6 keeps [0, 6] of
            # a conv whose raw range may be ten times wider): absorb it into the site.
            chain.append(end)
            activation, end = consumers[end][0].value, consumers[end][0].var
        sites.append(Site(
            index=len(sites), kind=kind, ordinal=counts[kind], call=value, input=value.args[0],
            output=end, weight=_scale_weight(weight, scale, kind), bias=shift, chain=chain,
            activation=activation,
        ))
        counts[kind] += 1
    return sites


def _is_activation(value: relax.Expr, data: relax.Var) -> bool:
    """``relu(data)`` or ``clip(data, low, high)`` with constant bounds."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or not value.args[0].same_as(data):
        return False
    return value.op.name in ("relax.nn.relu", "relax.clip")


def activation_bounds(call: relax.Call) -> tuple[float, float]:
    """The float interval an absorbed activation clamps to."""
    if call.op.name == "relax.nn.relu":
        return 0.0, float("inf")
    low, high = (float(bound.value) for bound in call.args[1:3])
    return low, high


def _site_kind(value: relax.Expr) -> str | None:
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return None
    name = value.op.name.removeprefix("relax.")
    data = value.args[0].ty if value.args else None
    if getattr(data, "dtype", None) != "float32":
        return None
    if name == CONV:
        attrs = value.attrs
        if attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW":
            return CONV
    if name == MATMUL and value.args[1].ty.ndim == 2:
        return MATMUL
    return None


def _constant(expr: relax.Expr, producer: dict[relax.Var, relax.Expr]) -> np.ndarray | None:
    """The value of a constant argument, looking through one ``permute_dims`` of a constant."""
    if is_constant(expr):
        return expr.value.numpy()
    value = producer.get(expr) if isinstance(expr, relax.Var) else None
    if isinstance(value, relax.Call) and value.op.name == "relax.permute_dims" and is_constant(value.args[0]):
        axes = value.attrs.axes
        order = [int(a) for a in axes] if axes is not None else None
        return np.transpose(value.args[0].value.numpy(), order)
    return None


def _fold_step(value: relax.Expr, current: relax.Var, scale: np.ndarray, shift: np.ndarray,
               kind: str, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Fold ``current (op) constant`` into ``y = scale * site + shift``; None if it does not fold."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return None
    op = value.op.name.removeprefix("relax.")
    if op not in _AFFINE or len(value.args) != 2:
        return None
    lhs, rhs = value.args
    if lhs.same_as(current) and is_constant(rhs):
        constant, current_first = rhs.value.numpy(), True
    elif rhs.same_as(current) and is_constant(lhs) and op in ("add", "multiply"):
        constant, current_first = lhs.value.numpy(), False
    else:
        return None
    per_channel = _per_channel(constant, kind, channels, value.ty.ndim)
    if per_channel is None:
        return None
    if op == "add":
        return scale, shift + per_channel
    if op == "subtract" and current_first:
        return scale, shift - per_channel
    if op == "multiply":
        return scale * per_channel, shift * per_channel
    if op == "divide" and current_first:
        return scale / per_channel, shift / per_channel
    return None


def _per_channel(constant: np.ndarray, kind: str, channels: int, ndim: int) -> np.ndarray | None:
    """A constant that varies at most along the output-channel axis, as a (channels,) vector."""
    if constant.ndim > ndim:
        return None
    shape = (1,) * (ndim - constant.ndim) + constant.shape
    axis = 1 if kind == CONV else ndim - 1
    if any(size != 1 for i, size in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1).astype(np.float64), (channels,)).copy()


def _scale_weight(weight: np.ndarray, scale: np.ndarray, kind: str) -> np.ndarray:
    if kind == CONV:
        return weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return weight * scale.reshape(1, -1)


def use_counts(bindings: list[relax.Binding], result: relax.Expr) -> Counter:
    """How often each variable is read by ``bindings`` and ``result``."""
    counts: Counter = Counter()
    for binding in bindings:
        counts.update(vars_in(binding.value))
    counts.update(vars_in(result))
    return counts


def vars_in(expr: relax.Expr) -> Iterator[relax.Var]:
    """Vars an expression refers to directly (the forms the frontends emit)."""
    if isinstance(expr, relax.Var):
        yield expr
    elif isinstance(expr, relax.Tuple):
        for field_ in expr.fields:
            yield from vars_in(field_)
    elif isinstance(expr, relax.TupleGetItem):
        yield from vars_in(expr.tuple_value)
    elif isinstance(expr, relax.Call):
        for arg in expr.args:
            yield from vars_in(arg)


def substitute(expr: relax.Expr, lookup: Callable[[relax.Var], relax.Expr]) -> relax.Expr:
    """``expr`` with every var it refers to replaced by ``lookup(var)``."""
    if isinstance(expr, relax.Var):
        return lookup(expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, lookup) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, lookup), expr.index)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [substitute(a, lookup) for a in expr.args], expr.attrs, expr.ty_args)
    return expr


def site_call(site: Site, data: relax.Expr, weight: np.ndarray | relax.Expr, out_dtype: str, *,
              padded: bool = False) -> relax.Call:
    """The site's op on new data/weight (a constant or an expression), with its original
    attributes and ``out_dtype`` (``padded``: ``data`` is already padded, so the conv pads nothing)."""
    weight = relax.const(weight) if isinstance(weight, np.ndarray) else weight
    if site.kind == CONV:
        attrs = site.call.attrs
        return relax.op.nn.conv2d(
            data, weight, strides=attrs.strides, padding=0 if padded else attrs.padding,
            dilation=attrs.dilation, groups=attrs.groups, out_dtype=out_dtype,
        )
    return relax.op.matmul(data, weight, out_dtype=out_dtype)


def bias_shape(site: Site, ndim: int) -> tuple[int, ...]:
    """How a per-channel vector broadcasts over the site's output."""
    channels = site.bias.shape[0]
    return (1, channels) + (1,) * (ndim - 2) if site.kind == CONV else (channels,)


SiteEmitter = Callable[[relax.BlockBuilder, Site, relax.Expr], relax.Expr]


def emit_float(mod: tvm.IRModule, sites: list[Site], *, observe: Sequence[relax.Expr] = (),
               emit_site: SiteEmitter | None = None, extra_params: tuple[relax.Var, ...] = ()) -> tvm.IRModule:
    """The module with every site's chain folded (float). With ``observe`` (values of ``mod``, such
    as sites' inputs and outputs), ``main`` returns ``(original result, (those values, in order))``.
    ``emit_site`` (default :func:`float_site`) makes each site's value from its data; ``main``
    takes ``extra_params`` after the model's own inputs."""
    emit_site = emit_site or float_site
    func, bindings = main_block(mod)
    by_call = {site.call: site for site in sites}
    replaced = {var for site in sites for var in (*site.chain, site.output)}
    remap: dict[Any, relax.Expr] = {}
    lookup = lambda var: remap.get(var, var)  # noqa: E731
    bb = relax.BlockBuilder()
    with bb.function("main", [*func.params, *extra_params]):
        with bb.dataflow():
            for binding in bindings:
                site = by_call.get(binding.value)
                if site is None and binding.var in replaced:
                    continue  # folded into its site
                if site is not None:
                    remap[site.output] = _emit(bb, site.output, emit_site(bb, site, substitute(site.input, lookup)))
                    continue
                remap[binding.var] = _emit(bb, binding.var, substitute(binding.value, lookup))
            result = substitute(func.body.body, lookup)
            if observe:
                watched = [substitute(value, lookup) for value in observe]
                result = bb.emit_output(relax.Tuple([result, relax.Tuple(watched)]))
        bb.emit_func_output(result)
    return bb.get()


def float_site(bb: relax.BlockBuilder, site: Site, data: relax.Expr, weight: relax.Expr | None = None,
               bias: relax.Expr | None = None) -> relax.Expr:
    """The folded site in float: op with folded weights, bias, absorbed activation (not emitted).
    ``weight`` / ``bias`` (bias shaped as :func:`bias_shape`) replace the folded constants."""
    if weight is None:
        weight = relax.const(site.weight.astype(np.float32))
    if bias is None:
        bias = relax.const(site.bias.reshape(bias_shape(site, site.output.ty.ndim)).astype(np.float32))
    out = relax.op.add(bb.emit(site_call(site, data, weight, "float32")), bias)
    if site.activation is not None:
        out = relax.Call(site.activation.op, [bb.emit(out), *site.activation.args[1:]], site.activation.attrs,
                         site.activation.ty_args)
    return out


def _emit(bb: relax.BlockBuilder, var: relax.Var, value: relax.Expr) -> relax.Var:
    if isinstance(var, relax.DataflowVar):
        return bb.emit(value)
    return bb.emit_output(value)
