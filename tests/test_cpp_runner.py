"""Tests of the C++ runner: build tvm_cpp_check once, run real TVM models, compare with the Python VM."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_tvmdeploy.errors import BuildError, RunnerError
from pytest_tvmdeploy.outputs import RunResult
from pytest_tvmdeploy.runners.cpp import run_cpp
from pytest_tvmdeploy.runners.cpp_build import build_cpp_runner, default_source_dir, find_cpp_toolchain

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")


# ----------------------------------------------------------------------------------------------
# helpers



def _export_torch(model: torch.nn.Module, args: tuple, path: Path) -> Path:
    from tvm.relax.frontend.torch import from_exported_program

    mod = from_exported_program(torch.export.export(model.eval(), args))
    tvm.compile(mod, target=tvm.target.Target("llvm")).export_library(str(path))
    return path


def _python_vm_outputs(path: Path, arrays: list[np.ndarray]) -> list[np.ndarray]:
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])

    def flatten(value) -> list[np.ndarray]:
        if hasattr(value, "numpy"):
            return [value.numpy()]
        return [a for item in value for a in flatten(item)]

    return flatten(result)


def _assert_bitwise_equal(result: RunResult, expected: list[np.ndarray]) -> None:
    assert result.runner == "tvm-cpp"
    assert list(result.outputs) == [f"output_{i}" for i in range(len(expected))]
    for name, want in zip(result.outputs, expected):
        got = result.outputs[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), name


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class _TwoInThreeOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x, y):
        return self.conv(x), (x.mean() + y, y * y)


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    path = _export_torch(_Conv(), (x,), tmp_path_factory.mktemp("conv") / "conv.so")
    return path, x.numpy()


# ----------------------------------------------------------------------------------------------
# outputs match the Python VM bitwise


def test_single_input_conv(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, x = conv_model
    result = run_cpp(cpp_exe, path, {"x": x}, work_dir=tmp_path, repeat=3)
    _assert_bitwise_equal(result, _python_vm_outputs(path, [x]))
    assert len(result.call_seconds) == 3
    assert result.load_seconds > 0 and all(s > 0 for s in result.call_seconds)


def test_two_inputs_three_outputs_by_name(cpp_exe: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(1, 3, 8, 8), torch.randn(4)
    path = _export_torch(_TwoInThreeOut(), (x, y), tmp_path / "m.so")
    arrays = [x.numpy(), y.numpy()]
    expected = _python_vm_outputs(path, arrays)
    assert len(expected) == 3
    # by name, given in reverse order: the program maps names to main's parameters
    result = run_cpp(cpp_exe, path, {"y": arrays[1], "x": arrays[0]}, work_dir=tmp_path, by_name=True)
    _assert_bitwise_equal(result, expected)
    result = run_cpp(cpp_exe, path, {"a": arrays[0], "b": arrays[1]}, work_dir=tmp_path)  # positional
    _assert_bitwise_equal(result, expected)


def test_nested_tuple_outputs_are_flattened(cpp_exe: Path, tmp_path: Path) -> None:
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    y = relax.Var("y", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, y))
            b = bb.emit(relax.op.multiply(x, y))
            c = bb.emit(relax.op.subtract(x, y))
            out = bb.emit_output(relax.Tuple([a, relax.Tuple([b, relax.Tuple([c])])]))
        bb.emit_func_output(out)
    path = tmp_path / "nested.so"
    tvm.compile(bb.get(), target=tvm.target.Target("llvm")).export_library(str(path))
    rng = np.random.default_rng(0)
    arrays = [rng.random((2, 3), dtype=np.float32) for _ in range(2)]
    result = run_cpp(cpp_exe, path, dict(zip("xy", arrays)), work_dir=tmp_path, by_name=True)
    _assert_bitwise_equal(result, _python_vm_outputs(path, arrays))
    assert len(result.outputs) == 3


class _Dtypes(torch.nn.Module):
    def forward(self, a, b, c, d, e):
        return a * 3 + 1, b - 7, c * 2, torch.logical_not(d), e * e + 1, a > 4


def test_integer_bool_float16_dtypes(cpp_exe: Path, tmp_path: Path) -> None:
    args = (
        torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4),
        torch.tensor([1, 2**30, -5], dtype=torch.int32),
        torch.tensor([1, -64, 100, 127], dtype=torch.int8),
        torch.tensor([[True, False], [False, True]]),
        torch.linspace(-3, 3, 7).half(),
    )
    path = _export_torch(_Dtypes(), args, tmp_path / "dtypes.so")
    arrays = [a.numpy() for a in args]
    expected = _python_vm_outputs(path, arrays)
    assert [e.dtype for e in expected] == [np.int64, np.int32, np.int8, np.bool_, np.float16, np.bool_]
    result = run_cpp(cpp_exe, path, dict(zip("abcde", arrays)), work_dir=tmp_path, by_name=True)
    _assert_bitwise_equal(result, expected)


class _TopkSort(torch.nn.Module):
    def forward(self, x):
        values, indices = torch.topk(x, 3)
        return values, indices, torch.sort(x, dim=-1, descending=True).values


def test_topk_and_sort_need_runtime_extra(cpp_exe: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 10)
    path = _export_torch(_TopkSort(), (x,), tmp_path / "topk.so")
    result = run_cpp(cpp_exe, path, {"x": x.numpy()}, work_dir=tmp_path)
    _assert_bitwise_equal(result, _python_vm_outputs(path, [x.numpy()]))
    assert result.outputs["output_1"].dtype == np.int64


# ----------------------------------------------------------------------------------------------
# failures


def test_corrupted_module_is_a_load_error(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    _, x = conv_model
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RunnerError, match=r"exit code 4 \(module load error\)") as info:
        run_cpp(cpp_exe, garbage, {"x": x}, work_dir=tmp_path)
    assert "invalid ELF header" in str(info.value)
    assert str(garbage) in str(info.value)


def test_truncated_module_dies_with_a_signal(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, x = conv_model
    data = path.read_bytes()
    half = tmp_path / "half.so"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunnerError) as info:
        run_cpp(cpp_exe, half, {"x": x}, work_dir=tmp_path)
    message = str(info.value)
    # NOTES: a .so truncated to half gives SIGBUS; accept any clean report of a crash or load error
    assert re.search(r"died with SIG[A-Z]+|exit code 4", message), message


def test_wrong_shape_names_the_parameter(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, _ = conv_model
    with pytest.raises(RunnerError, match=r"exit code 5 \(run error\)") as info:
        run_cpp(cpp_exe, path, {"x": np.zeros((1, 3, 15, 16), np.float32)}, work_dir=tmp_path)
    assert "param=x" in str(info.value) or "'x'" in str(info.value)


def test_wrong_input_name_and_count(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, x = conv_model
    with pytest.raises(RunnerError, match=r"(?s)exit code 2.*'image' .* is not a parameter of main\(x\)"):
        run_cpp(cpp_exe, path, {"image": x}, work_dir=tmp_path, by_name=True)
    with pytest.raises(RunnerError, match=r"2 input\(s\) given but main\(x\) takes 1"):
        run_cpp(cpp_exe, path, {"x": x, "y": x}, work_dir=tmp_path)


def test_timeout_kills_the_child(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, x = conv_model
    start = time.monotonic()
    with pytest.raises(RunnerError, match=r"timed out after 0.001 s"):
        run_cpp(cpp_exe, path, {"x": x}, work_dir=tmp_path, repeat=1000, timeout=0.001)
    assert time.monotonic() - start < 10


def _cli(exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)


def test_cli_input_file_errors(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, x = conv_model
    out = str(tmp_path / "out")
    missing = tmp_path / "missing.npy"
    proc = _cli(cpp_exe, "--module", str(path), "--input", f"x={missing}", "--out-dir", out)
    assert proc.returncode == 3
    assert str(missing) in proc.stderr and "cannot open" in proc.stderr

    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(x[0]))
    proc = _cli(cpp_exe, "--module", str(path), str(fortran), "--out-dir", out)
    assert proc.returncode == 3
    assert str(fortran) in proc.stderr and "Fortran" in proc.stderr

    complex_file = tmp_path / "complex.npy"
    np.save(complex_file, np.zeros(3, np.complex64))
    proc = _cli(cpp_exe, "--module", str(path), str(complex_file), "--out-dir", out)
    assert proc.returncode == 3
    assert str(complex_file) in proc.stderr and "unsupported dtype '<c8'" in proc.stderr

    truncated = tmp_path / "truncated.npy"
    np.save(truncated, x)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    proc = _cli(cpp_exe, "--module", str(path), str(truncated), "--out-dir", out)
    assert proc.returncode == 3
    assert str(truncated) in proc.stderr and "truncated" in proc.stderr


def test_cli_usage_errors(cpp_exe: Path, tmp_path: Path) -> None:
    proc = _cli(cpp_exe, "--out-dir", str(tmp_path))
    assert proc.returncode == 2 and "missing --module" in proc.stderr
    proc = _cli(cpp_exe, "--module", "m.so", "--out-dir", str(tmp_path), "--repeat", "0")
    assert proc.returncode == 2 and "--repeat" in proc.stderr
    proc = _cli(cpp_exe, "--module", "m.so", "--out-dir", str(tmp_path), "--device-alloc", "x")
    assert proc.returncode == 2 and "pooled" in proc.stderr


def test_cli_naive_allocator_and_positional(cpp_exe: Path, conv_model, tmp_path: Path) -> None:
    path, x = conv_model
    np.save(tmp_path / "x.npy", x)
    proc = _cli(cpp_exe, "--module", str(path), str(tmp_path / "x.npy"),
                "--out-dir", str(tmp_path / "o"), "--device-alloc", "naive")
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "o" / "output_0.npy")
    assert np.array_equal(got, _python_vm_outputs(path, [x])[0])
    assert (tmp_path / "o" / "result.json").is_file()


# ----------------------------------------------------------------------------------------------
# building


def test_toolchain_found_and_reported_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_cpp_toolchain() is None
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_cpp_toolchain() == "cmake not found on PATH"


def test_second_build_reuses_the_first(cpp_exe: Path) -> None:
    mtime = cpp_exe.stat().st_mtime_ns
    start = time.monotonic()
    again = build_cpp_runner(cpp_exe.parent.parent)
    assert time.monotonic() - start < 1.0
    assert again == cpp_exe
    assert cpp_exe.stat().st_mtime_ns == mtime


def test_concurrent_builds_produce_one_executable(cpp_exe: Path, tmp_path: Path) -> None:
    root = tmp_path / "shared"
    results: list[Path | BaseException] = []

    def build() -> None:
        try:
            results.append(build_cpp_runner(root))
        except BaseException as exc:  # noqa: BLE001
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1], results
    exe = results[0]
    assert isinstance(exe, Path) and os.access(exe, os.X_OK)
    leftovers = [p.name for p in root.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_build_errors(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="sources not found"):
        build_cpp_runner(tmp_path / "b", source_dir=tmp_path / "nowhere")
    if find_cpp_toolchain() is not None:
        pytest.skip("no C++ toolchain")
    with pytest.raises(BuildError, match=r"configure \(cmake\) failed") as info:
        build_cpp_runner(tmp_path / "b", python=str(tmp_path / "no-such-python"))
    assert "tvm_ffi.config" in str(info.value)  # the tail of cmake's output
    assert not any(".tmp-" in p.name for p in (tmp_path / "b").iterdir())


def test_compile_error_reports_compiler_output(tmp_path: Path) -> None:
    if find_cpp_toolchain() is not None:
        pytest.skip("no C++ toolchain")
    source = tmp_path / "src_copy"
    shutil.copytree(default_source_dir(), source)
    main_cc = source / "src" / "main.cc"
    main_cc.write_text(main_cc.read_text() + "\nthis_is_not_cpp ;\n")
    with pytest.raises(BuildError, match=r"build failed") as info:
        build_cpp_runner(tmp_path / "b", source_dir=source)
    assert "this_is_not_cpp" in str(info.value)
    assert not (tmp_path / "b" / "tvm_cpp_check").exists()
