"""What makes builds cheaper must not change what they build: constants folded with NumPy are the
bits TVM's FoldConstant computes, a BatchNorm folded into its conv gives the ONNX export's tasks
and the same outputs, and a library is shared only by identical Relax modules."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from models import TinyConvNet, seeded
from pytest_tvmdeploy import deploy, parse_target
from pytest_tvmdeploy.build.passes import FOLD_BATCH_NORM, build_pipeline
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources import open_source
from relax_constants import constants

INPUTS = {"x": ((1, 3, 16, 16), "float32")}
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _conv_tasks(module, pipeline=None) -> list[tuple[str, str]]:
    """The names and workload hashes of ``module``'s convolution tasks, prepared for plain llvm."""
    from pytest_tvmdeploy.tuning.tasks import extract_tasks

    target = parse_target("llvm").to_tvm()
    with target:
        prepared = (pipeline or build_pipeline()).prepare(module)
    return sorted((task.name, task.shash) for task in extract_tasks(prepared, target) if "conv2d" in task.name)


def _prepared_both_ways(module):
    """``module`` prepared for plain llvm with the NumPy fold, and with FoldConstant alone (the
    BatchNorm left for them to compute, not folded into the conv)."""
    from pytest_tvmdeploy.tuning.tasks import extract_tasks

    target = parse_target("llvm").to_tvm()
    results = []
    unfolded = build_pipeline().without([FOLD_BATCH_NORM])
    for pipeline in (unfolded, unfolded.without(["FoldConstantArithmetic"])):
        with target:
            prepared = pipeline.prepare(module)
        results.append((constants(prepared), sorted(task.shash for task in extract_tasks(prepared, target))))
    return results


def test_batchnorm_constants_folded_with_numpy_are_the_bits_foldconstant_computes() -> None:
    from tvm import relax

    from pytest_tvmdeploy.build.fold_arithmetic import fold_constant_arithmetic

    model = seeded(TinyConvNet())
    module = open_source(model).to_relax(ShapeSignature.of({"x": np.zeros((1, 3, 16, 16), "float32")}))
    decomposed = relax.transform.DecomposeOpsForInference()(module)
    folded = fold_constant_arithmetic()(decomposed)
    text = folded["main"].script()
    assert "R.sqrt" not in text and "R.expand_dims" not in text  # the BatchNorm's parameter arithmetic
    assert "R.sqrt" in decomposed["main"].script()
    (numpy_constants, numpy_tasks), (tvm_constants, tvm_tasks) = _prepared_both_ways(module)
    assert numpy_constants == tvm_constants and len(numpy_constants) >= 4
    assert numpy_tasks == tvm_tasks  # the same fused functions: tuning records still match


def test_int8_weights_dequantized_with_numpy_are_the_bits_foldconstant_computes() -> None:
    import tvm
    from tvm import relax

    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (8, 3, 3, 3), dtype=np.int8)
    scale = (rng.random(8, dtype=np.float32) * 0.01 + 1e-4).astype("float32")
    zero_point = rng.integers(-3, 3, 8, dtype=np.int8)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 16, 16), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            w = builder.emit(relax.op.dequantize(relax.const(weight), relax.const(scale), relax.const(zero_point),
                                                 axis=0, out_dtype="float32"))
            out = builder.emit_output(builder.emit(relax.op.nn.conv2d(x, w, padding=1)))
        builder.emit_func_output(out)
    module = builder.get()
    (numpy_constants, numpy_tasks), (tvm_constants, tvm_tasks) = _prepared_both_ways(module)
    assert numpy_constants == tvm_constants and len(numpy_constants) == 1
    expected = (weight.astype(np.int32) - zero_point.astype(np.int32)[:, None, None, None]).astype(np.float32) \
        * scale[:, None, None, None]
    assert numpy_constants[0].startswith(hashlib.sha256(expected.tobytes()).hexdigest()[:16])
    assert numpy_tasks == tvm_tasks
    assert isinstance(module, tvm.IRModule)


def test_a_batchnorm_folds_into_its_conv_as_in_the_onnx_export(tmp_path: Path) -> None:
    """TinyConvNet from PyTorch (conv + bias, then BatchNorm) gets the tuning tasks of its ONNX
    export (Conv with the BatchNorm in its weights), and outputs within rounding of PyTorch's."""
    from pytest_tvmdeploy.build.fold_batch_norm import fold_batch_norm

    signature = ShapeSignature.of({"x": np.zeros((1, 3, 16, 16), "float32")})
    model = seeded(TinyConvNet())
    module = open_source(model).to_relax(signature)
    assert "R.nn.batch_norm" in module["main"].script()
    folded = fold_batch_norm()(module)["main"].script()
    assert "R.nn.batch_norm" not in folded and folded.count("R.nn.conv2d") == 1
    onnx_tasks = _conv_tasks(open_source(FIXTURES / "tiny_convnet.onnx").to_relax(signature))
    assert _conv_tasks(module) == onnx_tasks and onnx_tasks[0][0] == "fused_conv2d_add_relu"
    (unfolded,) = _conv_tasks(module, build_pipeline().without([FOLD_BATCH_NORM]))
    assert unfolded[0] == "fused_conv2d_add_subtract_divide_multiply_add_relu"
    result = deploy(model, INPUTS, cache_dir=tmp_path, cpp_runner=None)
    expected = model(torch.from_numpy(result.inputs["x"])).detach().numpy()
    (output,) = result.outputs.values()
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1


def test_one_network_as_a_module_and_as_torchscript_is_compiled_once(tmp_path: Path) -> None:
    model = seeded(TinyConvNet())
    example = torch.zeros(1, 3, 16, 16)
    scripted = tmp_path / "tiny.pt"
    torch.jit.trace(model, example).save(str(scripted))
    cache = tmp_path / "cache"
    first = deploy(model, INPUTS, cache_dir=cache, cpp_runner=None)
    second = deploy(scripted, INPUTS, cache_dir=cache, cpp_runner=None)
    assert first.model_fingerprint != second.model_fingerprint  # two artifacts, two keys...
    assert first.artifact.key != second.artifact.key
    assert first.artifact.meta["library"] == {"key": first.artifact.meta["library"]["key"], "reused": False}
    assert second.artifact.meta["library"] == {**first.artifact.meta["library"], "reused": True}  # ...one build
    assert os.path.samefile(first.artifact.path, second.artifact.path)  # one file on disk, linked
    assert second.artifact.meta["model"] != first.artifact.meta["model"]  # each entry names its own model
    for name, value in first.outputs.items():
        np.testing.assert_array_equal(second.outputs[name], value)

    other = deploy(seeded(TinyConvNet(), seed=1), INPUTS, cache_dir=cache, cpp_runner=None)
    assert other.artifact.meta["library"]["reused"] is False  # other weights: another module
    assert other.artifact.meta["library"]["key"] != first.artifact.meta["library"]["key"]


def test_a_library_built_otherwise_is_not_shared(tmp_path: Path) -> None:
    model = seeded(TinyConvNet())
    sampled = deploy(model, INPUTS, cache_dir=tmp_path, cpp_runner=None)
    plain = deploy(model, INPUTS, cache_dir=tmp_path, cpp_runner=None, schedule="none")
    assert plain.artifact.meta["library"]["key"] != sampled.artifact.meta["library"]["key"]
    assert plain.artifact.meta["library"]["reused"] is False
    assert (plain.sampled, sampled.sampled > 0) == (0, True)


def test_sampled_schedules_are_kept_per_function_and_replayed(tmp_path: Path) -> None:
    """The cache keeps each function's sampled schedule: the network's ONNX export replays the
    conv's, and a rebuild from the kept schedules alone compiles the same library bytes."""
    import shutil

    model = seeded(TinyConvNet())
    cache = tmp_path / "cache"
    first = deploy(model, INPUTS, cache_dir=cache, cpp_runner=None)
    first_library = _sha256(first.artifact.path)
    kept = set((cache / "schedules").glob("*.json"))
    assert first.sampled >= 3 and len(kept) == first.sampled
    exported = deploy(FIXTURES / "tiny_convnet.onnx", INPUTS, cache_dir=cache, cpp_runner=None)
    added = set((cache / "schedules").glob("*.json")) - kept
    assert exported.sampled == first.sampled and 0 < len(added) < exported.sampled  # the conv replayed
    for entry in cache.iterdir():  # everything but the kept schedules goes
        if entry.name != "schedules":
            shutil.rmtree(entry)
    again = deploy(model, INPUTS, cache_dir=cache, cpp_runner=None)
    assert again.artifact.meta["library"]["reused"] is False and again.sampled == first.sampled
    assert _sha256(again.artifact.path) == first_library


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
