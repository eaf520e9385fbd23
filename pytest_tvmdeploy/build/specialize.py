"""Give a module with symbolic dimensions static copies of ``main`` that tuning can schedule.

MetaSchedule tunes fixed shapes only. :func:`specialize` adds, beside the symbolic function, one
copy of ``main`` per representative size (``main_batch_1``, ``main_batch_4``, ...) and makes ``main``
a dispatcher: it calls the copy whose sizes match its inputs and the symbolic one otherwise. The
artifact still takes every size, from Python and from C++, and the copies' kernels are ordinary
static tuning tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.shapes import ShapeSignature

if TYPE_CHECKING:
    import tvm

#: The symbolic function's name once ``main`` dispatches.
GENERIC = "main_generic"


def specialized_name(sizes: Mapping[str, int]) -> str:
    """``main_batch_1_seq_64``: the copy of ``main`` for these sizes."""
    return "main_" + "_".join(f"{name}_{size}" for name, size in sizes.items())


def specialize(module: tvm.IRModule, signature: ShapeSignature, shapes: Sequence[Mapping[str, int]]) -> tvm.IRModule:
    """``module`` with a static copy of ``main`` per entry of ``shapes`` (sizes of ``signature``'s
    named dimensions) and a dispatching ``main``; unchanged when ``main`` takes anything but
    tensors of known rank, or has no symbolic dimension."""
    from tvm import relax, tirx

    main = module["main"]
    if not shapes or not all(isinstance(p.ty, relax.TensorType) and p.ty.shape is not None for p in main.params):
        return module
    symbols = {d.name for p in main.params for d in p.ty.shape.values if isinstance(d, tirx.Var)}
    named = _module_names(main, signature)  # a frontend may rename dimensions (torch: batch -> s77)
    if not symbols or symbols - set(named.values()):
        return module
    builder = relax.BlockBuilder(_without_main(module))
    generic = builder.add_func(main.without_attr("global_symbol"), GENERIC)
    copies = []
    for declared in shapes:
        sizes = {named[name]: size for name, size in declared.items() if name in named}
        if set(sizes) == symbols:
            copy = main.bind_symbolic_vars(sizes).without_attr("global_symbol")
            copies.append((sizes, builder.add_func(copy, specialized_name(declared))))
    fresh = {name: tirx.Var(name, "int64") for name in symbols}  # the dispatcher's own dimensions
    params = [relax.Var(p.name, relax.TensorType([fresh[d.name] if isinstance(d, tirx.Var) else d
                                                  for d in p.ty.shape.values], p.ty.dtype)) for p in main.params]
    fallback, generic_type = _call(builder, generic, main, params, None)
    body = fallback
    for sizes, copy in reversed(copies):
        matches = tirx.all(*(fresh[name] == sizes[name] for name in symbols))
        body = relax.If(relax.prim_value(matches), _call(builder, copy, main, params, sizes)[0], body)
    with builder.function("main", params):
        dispatched = builder.emit(body)
        builder.emit_func_output(builder.match_cast(dispatched, generic_type))
    result = builder.get()
    result["main"] = result["main"].with_attrs(main.attrs) if main.attrs is not None else result["main"]
    return result


def _module_names(main: Any, signature: ShapeSignature) -> dict[str, str]:
    """Each named dimension of ``signature`` → the symbolic variable at its place in ``main``'s
    parameters (inputs in order)."""
    from tvm import tirx

    names = {}
    for param, spec in zip(main.params, signature.inputs):
        for dim, value in zip(spec.dims, param.ty.shape.values):
            if isinstance(dim, str) and isinstance(value, tirx.Var):
                names[dim] = value.name
    return names


def _without_main(module: tvm.IRModule) -> tvm.IRModule:
    import tvm

    return tvm.IRModule({gv: f for gv, f in module.functions.items() if gv.name_hint != "main"},
                        attrs=module.attrs)


def _call(builder: Any, function: Any, main: Any, params: list[Any],
          sizes: Mapping[str, int] | None) -> tuple[Any, Any]:
    """A branch calling ``function`` on ``params`` (cast to ``sizes`` when given); also its type."""
    from tvm import relax, tirx

    bindings, args = [], []
    for param, original in zip(params, main.params):
        if sizes is None:
            args.append(param)
            continue
        static = relax.TensorType([tirx.IntImm("int64", sizes[d.name]) if isinstance(d, tirx.Var) else d
                                   for d in original.ty.shape.values], original.ty.dtype)
        cast = relax.Var(f"{param.name}_static", static)
        bindings.append(relax.MatchCast(cast, param, static))
        args.append(cast)
    call = builder.normalize(relax.Call(function, args))
    result = relax.Var("result", call.ty)
    bindings.append(relax.VarBinding(result, call))
    return relax.SeqExpr([relax.BindingBlock(bindings)], result), call.ty
