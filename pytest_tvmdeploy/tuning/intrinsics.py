"""Tensor intrinsics for tuning: a fast import of TVM's set, and a ``dot_16x4_vnni`` that builds.

TVM 0.27's ``dot_16x4_vnni`` passes ``int32x16`` operands to ``llvm.x86.avx512.vpdpbusd.512``,
which the wheel's LLVM declares on ``<64 x i8>``: every candidate tensorized with it fails to
build and MetaSchedule silently keeps a slower schedule. :func:`register_working_vnni` replaces
it (same description, operands reinterpreted as bytes) in the process that tunes or replays.
"""

from __future__ import annotations

import importlib
import inspect

VNNI_INTRINSIC = "dot_16x4_vnni"
_U8, _I8, _I32 = "uint8", "int8", "int32"  # names, not literals, in TVMScript annotations: pyflakes reads those

#: Frames of the import machinery have no source file. ``inspect.getmodule`` cannot cache them,
#: so each ``inspect.stack()`` TVMScript's parser makes (one per intrinsic, ~500 while
#: ``tvm.s_tir.tensor_intrin`` is imported) rescans ``sys.modules``: with torch loaded that
#: import took 22-28 s instead of ~3 s.
_FROZEN_IMPORT_MODULES = ("importlib._bootstrap", "importlib._bootstrap_external")


def load_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule needs it to create tuning contexts)."""
    for name in _FROZEN_IMPORT_MODULES:
        inspect.modulesbyfile.setdefault(f"<frozen {name}>", name)
    importlib.import_module("tvm.s_tir.tensor_intrin")


def register_working_vnni() -> None:
    """Register a ``dot_16x4_vnni`` implementation the wheel's LLVM accepts (replaces TVM's)."""
    load_tensor_intrinsics()
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc

    TensorIntrin.register(VNNI_INTRINSIC, dot_product_16x4_u8i8i32_desc, vnni_implementation(), override=True)


def vnni_implementation():
    """``C[0:16] += A[0:4] · B[0:16, 0:4]`` (u8 × i8 → i32) as one ``vpdpbusd`` on 512-bit vectors."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dot_product_16x4_u8i8i32_vnni_bytes(
        A: T.Buffer((4,), _U8, offset_factor=1),
        B: T.Buffer((16, 4), _I8, offset_factor=1),
        C: T.Buffer((16,), _I32, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_as_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_bytes = T.reinterpret(T.broadcast(a_as_i32, 16), dtype="uint8x64")
            b_bytes = B.vload([0, 0], dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                a_bytes,
                b_bytes,
                dtype="int32x16",
            )

    return dot_product_16x4_u8i8i32_vnni_bytes
