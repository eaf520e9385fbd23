"""Run ``tvm_cpp_check``, the C++ program that runs an exported Relax VM ``.so``.

The program (built by :mod:`pytest_tvmdeploy.runners.cpp_build`) runs in a child process so
that a crash of the deployed code (segfault, bus error) becomes a :class:`RunnerError` instead
of killing pytest. Inputs and outputs travel as ``.npy`` files; timings come back in ``result.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pytest_tvmdeploy.errors import RunnerError
from pytest_tvmdeploy.outputs import TVM_CPP, RunResult

RUNNER_NAME = TVM_CPP

#: Exit codes of ``tvm_cpp_check`` and what they mean.
EXIT_CODES = {
    2: "usage error",
    3: "input/output file error",
    4: "module load error",
    5: "run error",
}

_TAIL_LINES = 60


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _write_input(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = np.copy(array, order="C")
    np.save(path, array, allow_pickle=False)


def run_cpp(
    executable: Path,
    module_path: Path,
    inputs: Mapping[str, np.ndarray],
    *,
    work_dir: Path,
    repeat: int = 1,
    timeout: float = 300.0,
    by_name: bool = False,
) -> RunResult:
    """Run ``module_path``'s ``main`` in a ``tvm_cpp_check`` child process.

    Inputs are written to ``work_dir`` as ``.npy`` and passed in the mapping's order (like the
    Python VM runner); with ``by_name=True`` they are passed as ``NAME=PATH`` and the program
    checks the names against ``main``'s parameters. Outputs come back flattened, named
    ``output_0``, ``output_1``, ... Any failure raises :class:`RunnerError`.
    """
    if repeat < 1:
        raise RunnerError(f"run_cpp: repeat must be >= 1, got {repeat}")
    executable = Path(executable)
    module_path = Path(module_path).resolve()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir = work_dir / "cpp_out"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = [str(executable), "--module", str(module_path), *_input_arguments(inputs, work_dir, by_name),
           "--out-dir", str(out_dir.resolve()), "--repeat", str(repeat)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=str(work_dir))
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed the child
        stderr = (exc.stderr or b"").decode(errors="replace")
        detail = f"; stderr tail:\n{_tail(stderr)}" if stderr.strip() else ""
        raise RunnerError(
            f"C++ runner timed out after {timeout:g} s running {module_path} (child killed){detail}"
        ) from None
    except OSError as exc:
        raise RunnerError(f"cannot start the C++ runner {executable}: {exc}") from exc

    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode < 0:
        name = _signal_name(-proc.returncode)
        raise RunnerError(
            f"C++ runner died with {name} (signal {-proc.returncode}) running {module_path}; "
            f"stderr tail:\n{_tail(stderr)}"
        )
    if proc.returncode != 0:
        meaning = EXIT_CODES.get(proc.returncode, "unexpected exit code")
        raise RunnerError(
            f"C++ runner failed with exit code {proc.returncode} ({meaning}) running "
            f"{module_path}{_python_only(stderr)}; stderr tail:\n{_tail(stderr)}"
        )
    return _read_results(out_dir, module_path)


#: TVM functions some Relax operators call at run time that TVM's Python package registers, not
#: ``libtvm_runtime`` (tvm/relax/op: NumPy code behind ``unique``, ``nonzero``, ``print``, ...).
_MISSING_FUNCTION = re.compile(r"Cannot find ffi::Function (relax\.run\.\w+)")


def _python_only(stderr: str) -> str:
    """What a load failure means when the module calls a function only TVM's Python package has."""
    match = _MISSING_FUNCTION.search(stderr)
    if match is None:
        return ""
    return (f": the module calls {match.group(1)}, which TVM's Python package registers (NumPy code), "
            "not libtvm_runtime: it runs only where Python and TVM are")


def _input_arguments(inputs: Mapping[str, np.ndarray], work_dir: Path, by_name: bool) -> list[str]:
    """Write each input as ``.npy`` into ``work_dir``; the program's ``--input`` arguments."""
    arguments = []
    for index, (name, array) in enumerate(inputs.items()):
        path = (work_dir / f"input_{index}.npy").resolve()
        try:
            _write_input(path, array)
        except (OSError, ValueError, TypeError) as exc:
            raise RunnerError(f"cannot write input '{name}' to {path}: {exc}") from exc
        arguments += ["--input", f"{name}={path}" if by_name else str(path)]
    return arguments


def _read_results(out_dir: Path, module_path: Path) -> RunResult:
    result_path = out_dir / "result.json"
    try:
        result = json.loads(result_path.read_text())
        names = list(result["outputs"])
        load_seconds = float(result["load_seconds"])
        call_seconds = tuple(float(s) for s in result["call_seconds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunnerError(f"C++ runner on {module_path} exited 0 but {result_path} is unusable: {exc}") from exc
    outputs: dict[str, np.ndarray] = {}
    for index, file_name in enumerate(names):
        try:
            outputs[f"output_{index}"] = np.load(out_dir / file_name, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunnerError(f"cannot read C++ output {out_dir / file_name}: {exc}") from exc
    return RunResult(RUNNER_NAME, outputs, load_seconds=load_seconds, call_seconds=call_seconds)


__all__ = [
    "EXIT_CODES",
    "RUNNER_NAME",
    "run_cpp",
]
