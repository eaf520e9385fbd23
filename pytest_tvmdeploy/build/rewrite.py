"""Running one of our Relax expression mutators over a whole module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm


def rewrite_relax_functions(rewriter: Any, module: tvm.IRModule) -> tvm.IRModule:
    """``module`` with every Relax function replaced by ``rewriter``'s visit of it (``rewriter``:
    a ``relax.PyExprMutator`` made for ``module``); TIR functions stay as they are."""
    from tvm import relax

    for global_var, function in module.functions_items():
        if isinstance(function, relax.Function):
            rewriter.builder_.update_func(global_var, rewriter.visit_expr(function))
    return rewriter.builder_.get()
