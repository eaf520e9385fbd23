"""The passes a build runs, as data: every Relax and TIR pass in order, named, and whether a
build can leave it out. Builds run them through :class:`PassPipeline`; the stage bisection
(:mod:`pytest_tvmdeploy.checks.stages`) leaves optional ones out to find the pass that breaks a model.

The lists are those of TVM 0.27's ``tvm.compile`` for CPU (``relax.pipeline.default_build_pipeline``
and ``s_tir.pipeline.default_s_tir_pipeline``), and of its ``static_shape_tuning`` pipeline for the
passes before tuning records apply (``prepare``). A pass TVM needs for a correct build is
``required``; an optional one is either skipped or, with ``skipped_as``, run in its neutral form
(``VectorizeLoop(False)`` lowers vectorized loops without vectorizing them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pytest_tvmdeploy.build.block_layout import LEGALIZE_BLOCKED, block_convolutions
from pytest_tvmdeploy.build.fold_arithmetic import fold_constant_arithmetic
from pytest_tvmdeploy.build.fold_batch_norm import fold_batch_norm

if TYPE_CHECKING:
    import tvm

#: This package's own passes (not TVM's; a script for TVM's developers leaves them out): the first
#: computes what TVM's FoldConstant would, the second folds BatchNorm into convolution weights, the
#: third turns convolutions to a channel-blocked layout.
FOLD_ARITHMETIC = "FoldConstantArithmetic"
FOLD_BATCH_NORM = "FoldBatchNormIntoConv"
BLOCK_CONVOLUTIONS = "BlockConvolutions"
#: The stages a pass belongs to, in the order a build runs them.
PREPARE, LOWER, TIR, CODEGEN = "relax optimization", "relax lowering", "TIR passes", "LLVM code generation"


@dataclass(frozen=True)
class BuildPass:
    """One pass of a build: ``name`` is unique in its pipeline, ``make`` creates it."""

    name: str
    stage: str
    make: Callable[[], Any]
    required: bool = True
    skipped_as: Callable[[], Any] | None = None  # what runs instead when an optional pass is left out
    own: bool = False  # this package's pass, which TVM does not have

    def create(self, skipped: bool) -> Any | None:
        if not skipped:
            return self.make()
        return self.skipped_as() if self.skipped_as is not None else None


def _relax(name: str, stage: str, *, required: bool = True, args: Sequence[Any] = ()) -> BuildPass:
    def make() -> Any:
        from tvm import relax

        return getattr(relax.transform, name)(*args)

    return BuildPass(name, stage, make, required)


def _legalize(stage: str) -> BuildPass:
    """``LegalizeOps``, which also knows how to compute channel-blocked convolutions."""
    def make() -> Any:
        from tvm import relax

        return relax.transform.LegalizeOps(customize_legalize_map=LEGALIZE_BLOCKED)

    return BuildPass("LegalizeOps", stage, make)


def _backend(name: str) -> BuildPass:
    def make() -> Any:
        from tvm.relax import backend

        return getattr(backend, name)()

    return BuildPass(name, LOWER, make)


def _tir(name: str, *, required: bool = True, label: str | None = None, args: Sequence[Any] = (),
         module: str = "s_tir") -> BuildPass:
    def make() -> Any:
        import tvm

        return getattr(getattr(tvm, module).transform, name)(*args)

    return BuildPass(label or name, TIR, make, required)


def prepare_passes(blocked: bool = False) -> list[BuildPass]:
    """What ``static_shape_tuning`` runs before tuning records apply: legalize, fold, fuse; and
    our own: :mod:`~pytest_tvmdeploy.build.fold_batch_norm` (conv weights absorb the BatchNorm
    after them, as ONNX exports have it), :mod:`~pytest_tvmdeploy.build.block_layout` (convolutions
    in ``NCHW16c``; only when ``blocked``, as tuned builds are) and
    :mod:`~pytest_tvmdeploy.build.fold_arithmetic` (the constants FoldConstant would compute, much faster)."""
    return [
        BuildPass(FOLD_BATCH_NORM, PREPARE, fold_batch_norm, required=False, own=True),
        _relax("DecomposeOpsForInference", PREPARE, required=False),
        _relax("CanonicalizeBindings", PREPARE, required=False),
        *([BuildPass(BLOCK_CONVOLUTIONS, PREPARE, block_convolutions, required=False, own=True)] * blocked),
        BuildPass(FOLD_ARITHMETIC, PREPARE, fold_constant_arithmetic, required=False, own=True),
        _legalize(PREPARE),
        _relax("AnnotateTIROpPattern", PREPARE, required=False),
        _relax("FoldConstant", PREPARE, required=False),
        _relax("FuseOps", PREPARE, required=False),
        _relax("FuseTIR", PREPARE, required=False),
    ]


def lowering_passes() -> list[BuildPass]:
    """``tvm.compile``'s default Relax pipeline: legalize what is left, plan memory, lower to the VM."""
    return [
        _backend("DispatchSampling"),
        _backend("DispatchSortScan"),
        _legalize(LOWER),
        _relax("RewriteDataflowReshape", LOWER, required=False),
        _relax("ToNonDataflow", LOWER),
        _relax("RemovePurityChecking", LOWER),
        _relax("CallTIRRewrite", LOWER),
        _relax("StaticPlanBlockMemory", LOWER, required=False),
        _relax("RewriteCUDAGraph", LOWER),
        _relax("LowerAllocTensor", LOWER),
        _relax("KillAfterLastUse", LOWER, required=False),
        _relax("LowerRuntimeBuiltin", LOWER),
        _relax("ComputePrimValue", LOWER),
        _relax("VMShapeLower", LOWER),
        _relax("AttachGlobalSymbol", LOWER),
    ]


def tir_passes(config: Any) -> list[BuildPass]:
    """The default S-TIR pipeline of ``tvm.tirx.build`` under the current pass context's ``config``
    (the same switches TVM reads: ``tirx.disable_vectorize``, ``tirx.disable_storage_rewrite``, ...)."""
    vectorize = not bool(config.get("tirx.disable_vectorize", False))
    passes = [
        _tir("CanonicalizeLoop", required=False),
        _tir("LowerCrossThreadReduction"),
        _tir("LowerInitBlock"),
        _tir("PlanAndUpdateBufferAllocationLocation", required=False),
        _tir("ConvertBlocksToOpaque"),
        _tir("LiftThreadBinding"),
        _tir("ManifestSharedMemoryLocalStage"),
        _tir("CompactBufferAllocation", required=False),
        _tir("LowerAutoCopy"),
        _tir("UnifyThreadBinding"),
        _tir("LowerMatchBuffer"),
        _tir("StmtSimplify", required=False),
        _tir("InjectPermutedLayout"),
        _tir("AnnotateIrregularLoop"),
        _tir("InjectSoftwarePipeline"),
        _tir("TransformMmaBufferLayout"),
        _tir("LowerOpaqueBlock"),
        _tir("FlattenBuffer", module="tirx"),
        _tir("BF16ComputeLegalize", module="tirx"),
        _tir("NarrowDataType", required=False, args=(32,), module="tirx"),
        _tir("LoopPartition", required=False),
        replace(_tir("VectorizeLoop", required=not vectorize, args=(vectorize,), module="tirx"),
                skipped_as=_tir("VectorizeLoop", args=(False,), module="tirx").make),
        _tir("InjectVirtualThread"),
        _tir("InjectDoubleBuffer"),
    ]
    if not bool(config.get("tirx.disable_storage_rewrite", False)):
        passes.append(_tir("StorageRewrite", required=False, module="tirx"))
    if config.get("tirx.use_async_copy", False):
        passes.append(_tir("LowerAsyncDMA"))
    passes += [
        _tir("HoistIfThenElse", required=False),
        _tir("UnrollLoop", required=False, module="tirx"),
        _tir("RenormalizeSplitPattern", required=False),
        _tir("StmtSimplify", required=False, label="StmtSimplify (late)", module="tirx"),
        _tir("RemoveNoOp", required=False, module="tirx"),
        _tir("RewriteUnsafeSelect", required=False),
    ]
    if bool(config.get("tirx.instrument_bound_checkers", False)):
        passes.append(_tir("InstrumentBoundCheckers"))
    if not bool(config.get("tirx.disable_cse_tir", False)):
        passes.append(_tir("CommonSubexprElim", required=False, module="tirx"))
    if bool(config.get("tirx.instrument_lwp", False)):
        passes.append(_tir("InstrumentProfileIntrinsics"))
    passes += [
        _tir("FP8ComputeLegalize", module="tirx"),
        _tir("VerifyVTCMLimit"),
        _tir("LowerVtcmAlloc"),
        _tir("VerifyMemory", module="tirx"),
        _tir("AnnotateEntryFunc", module="tirx"),
        _tir("ThreadSync", label="ThreadSync(shared)", args=("shared",)),
        _tir("ThreadSync", label="ThreadSync(shared.dyn)", args=("shared.dyn",)),
        _tir("ThreadSync", label="ThreadSync(warp)", args=("warp",)),
        _tir("InferFragment"),
        _tir("LowerThreadAllreduce"),
        _tir("MergeSharedMemoryAllocations"),
        _tir("SplitHostDevice", module="tirx"),
        _tir("MakePackedAPI", module="tirx"),
        _tir("FP8StorageLegalize", module="tirx"),
        _tir("BF16StorageLegalize", module="tirx"),
    ]
    return passes


#: The LLVM back end's optimisation, a pseudo-pass: left out, the target gets ``opt-level`` 0.
LLVM_OPTIMIZATION = BuildPass("LLVM -O3", CODEGEN, lambda: None, required=False)


@dataclass(frozen=True)
class PassPipeline:
    """The passes of one build, minus the optional ones named in ``skipped``.

    ``extra`` holds passes added with :func:`add_pass`, each after the pass it names. ``blocked``
    builds run convolutions in ``NCHW16c`` (:mod:`~pytest_tvmdeploy.build.block_layout`): tuned
    builds do, as tuning finds far faster schedules for them (see ``benchmarks/results/``), while
    a single sampled schedule of a blocked convolution is slower than one of a plain convolution.
    """

    skipped: frozenset[str] = frozenset()
    extra: tuple[tuple[str, BuildPass], ...] = ()
    blocked: bool = False

    def relax_passes(self, prepare: bool) -> list[BuildPass]:
        """The Relax passes in order: with ``prepare``, those tuning builds run first."""
        return self._with_extra((prepare_passes(self.blocked) if prepare else []) + lowering_passes())

    def optional(self, prepare: bool, config: Any = None) -> list[BuildPass]:
        """The passes a build may leave out, in the order it runs them."""
        every = self.relax_passes(prepare) + self._with_extra(tir_passes(config or {})) + [LLVM_OPTIMIZATION]
        return [p for p in every if not p.required]

    def without(self, names: Iterable[str]) -> PassPipeline:
        return replace(self, skipped=self.skipped | frozenset(names))

    def sequence(self, passes: list[BuildPass]) -> tvm.transform.Pass:
        """``passes`` as one ``tvm.transform.Sequential``, the skipped ones left out."""
        import tvm

        made = [p.create(p.name in self.skipped) for p in passes]
        return tvm.transform.Sequential([m for m in made if m is not None])

    def prepare(self, module: tvm.IRModule) -> tvm.IRModule:
        """Run the passes tuning builds run before records apply."""
        return self.sequence(self._with_extra(prepare_passes(self.blocked)))(module)

    def compile(self, module: tvm.IRModule, target: tvm.target.Target) -> Any:
        """``tvm.compile`` with this pipeline's Relax lowering and TIR passes."""
        import tvm

        if LLVM_OPTIMIZATION.name in self.skipped and target.kind.name == "llvm":
            target = tvm.target.Target({**_target_dict(target), "opt-level": 0})
        return tvm.compile(module, target=target, relax_pipeline=self.sequence(self.relax_passes(prepare=False)),
                           tir_pipeline=self._tir_pipeline_name())

    def _with_extra(self, passes: list[BuildPass]) -> list[BuildPass]:
        result: list[BuildPass] = []
        for p in passes:
            result.append(p)
            result += [added for after, added in self.extra if after == p.name]
        return result

    def _tir_pipeline_name(self) -> str:
        """A TIR pipeline TVM knows by name (``tirx.build`` takes only names) running these passes."""
        from tvm.s_tir import pipeline as s_tir_pipeline
        from tvm.tirx import compilation_pipeline

        name = f"tvmdeploy-{abs(hash((self.skipped, self.extra))):x}"
        if name not in compilation_pipeline.PIPELINE_MAP:
            compilation_pipeline.register_tir_pipeline(name, lambda: self._tir_factory(s_tir_pipeline))
        return name

    def _tir_factory(self, s_tir_pipeline: Any) -> tuple[Any, Any, Any]:
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="tvmdeploy.TIRPipeline")
        def run(module: tvm.IRModule, _context: Any) -> tvm.IRModule:
            config = tvm.transform.PassContext.current().config
            return self.sequence(self._with_extra(tir_passes(config)))(module)

        return run, s_tir_pipeline.finalize_host_passes, s_tir_pipeline.finalize_device_passes


    def key(self) -> list[str]:
        """What the added passes are, for the artifact cache key (the skipped set is never built)."""
        return [f"{after}>{added.stage}:{added.name}" for after, added in self.extra]


def _target_dict(target: tvm.target.Target) -> dict[str, Any]:
    return dict(target.export())


_ADDED: list[tuple[str, BuildPass]] = []


def add_pass(after: str, build_pass: BuildPass) -> None:
    """Run ``build_pass`` in every build of this process, right after the pass named ``after``
    (``"FuseTIR"``, ``"LegalizeOps"``, ``"FlattenBuffer"``...): a team's own rewrite, which the
    stage bisection then names like TVM's own passes. Call it from a ``--tvm-setup`` module so it
    also runs in the sandbox worker."""
    _ADDED.append((after, build_pass))


def build_pipeline(blocked: bool = False) -> PassPipeline:
    """The pipeline builds run now: every pass, plus those added with :func:`add_pass`; with
    ``blocked``, the one of tuned builds."""
    return PassPipeline(extra=tuple(_ADDED), blocked=blocked)
