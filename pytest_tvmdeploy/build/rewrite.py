"""Walking and rewriting the Relax functions of a module with our expression visitors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm


def op_name(expr: Any) -> str | None:
    """The operator ``expr`` calls (``"relax.nn.conv2d"``), or ``None`` when it calls a function or
    is not a call at all."""
    from tvm import relax

    if not isinstance(expr, relax.Call):
        return None
    return getattr(expr.op, "name", None)


def visit_relax_functions(visitor: Any, module: tvm.IRModule) -> None:
    """Run ``visitor`` (a ``relax.PyExprVisitor``) over every Relax function of ``module``."""
    from tvm import relax

    for function in module.functions.values():
        if isinstance(function, relax.Function):
            visitor.visit_expr(function)


def rewrite_relax_functions(rewriter: Any, module: tvm.IRModule) -> tvm.IRModule:
    """``module`` with every Relax function replaced by ``rewriter``'s visit of it (``rewriter``:
    a ``relax.PyExprMutator`` made for ``module``); TIR functions stay as they are."""
    from tvm import relax

    for global_var, function in module.functions_items():
        if isinstance(function, relax.Function):
            rewriter.builder_.update_func(global_var, rewriter.visit_expr(function))
    return rewriter.builder_.get()
