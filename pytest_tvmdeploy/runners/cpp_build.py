"""Find the toolchain for ``tvm_cpp_check`` and build it with CMake, once per cache key.

The C++ sources live in ``cpp_check/`` next to the ``pytest_tvmdeploy`` package. They are
configured with CMake against the installed ``tvm`` and ``tvm_ffi`` wheels and built once per
source/version combination into a cache folder; :mod:`pytest_tvmdeploy.runners.cpp` runs the result.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock

from pytest_tvmdeploy.errors import BuildError
from pytest_tvmdeploy.runners.cpp import _tail

EXECUTABLE_NAME = "tvm_cpp_check"
MIN_CMAKE_VERSION = (3, 18)

_CONFIGURE_TIMEOUT = 300.0
_BUILD_TIMEOUT = 900.0


def default_source_dir() -> Path:
    """The C++ runner's sources: inside the installed package (a wheel), else ``cpp_check/``
    beside the ``pytest_tvmdeploy`` folder (a source tree or an editable install)."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "cpp_check"
    return installed if (installed / "CMakeLists.txt").is_file() else package.parent / "cpp_check"


def _find_cxx_compiler() -> str | None:
    """Path of a C++ compiler: ``$CXX`` if set, else the first of c++, g++, clang++ on PATH."""
    env_cxx = os.environ.get("CXX")
    if env_cxx:
        first = env_cxx.split()[0]
        return shutil.which(first)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def find_cpp_toolchain() -> str | None:
    """Return None if CMake (>= 3.18) and a C++ compiler are available, else why not."""
    cmake = shutil.which("cmake")
    if cmake is None:
        return "cmake not found on PATH"
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cmake at {cmake} does not run: {exc}"
    match = re.search(r"version (\d+)\.(\d+)", out)
    if match is None:
        return f"cannot read the version of {cmake} (output: {out.strip()[:200]!r})"
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_CMAKE_VERSION:
        need = ".".join(map(str, MIN_CMAKE_VERSION))
        return f"cmake {version[0]}.{version[1]} at {cmake} is too old (need >= {need})"
    if _find_cxx_compiler() is None:
        if os.environ.get("CXX"):
            return f"C++ compiler $CXX={os.environ['CXX']!r} not found"
        return "no C++ compiler (c++, g++ or clang++) found on PATH"
    return None


def _source_files(source_dir: Path) -> list[Path]:
    files = [source_dir / "CMakeLists.txt"]
    src = source_dir / "src"
    if src.is_dir():
        files += sorted(p for p in src.iterdir() if p.suffix in (".cc", ".h") and p.is_file())
    return files


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def build_key(source_dir: Path, python: str) -> str:
    """Cache key: sha256 of the C++ sources, the tvm / tvm_ffi versions and the interpreter.

    The interpreter is part of the key because the executable's rpath points into the
    site-packages of the environment it was configured with.
    """
    digest = hashlib.sha256()
    for path in _source_files(source_dir):
        digest.update(path.relative_to(source_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        digest.update(f"{dist}=={_package_version(dist)}\0".encode())
    digest.update(f"python={python}\0".encode())
    return digest.hexdigest()[:24]


def _run_step(cmd: Sequence[str], what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode(errors="replace")
        raise BuildError(f"C++ runner {what} timed out after {timeout:g} s:\n{_tail(output)}") from None
    except OSError as exc:
        raise BuildError(f"C++ runner {what} could not start ({cmd[0]}): {exc}") from exc
    if proc.returncode != 0:
        raise BuildError(
            f"C++ runner {what} failed (exit code {proc.returncode}); command: {' '.join(cmd)}\n"
            f"{_tail(proc.stdout)}\n(the temporary build folder has been removed)"
        )


def build_cpp_runner(
    build_root: Path, *, python: str = sys.executable, source_dir: Path | None = None
) -> Path:
    """Configure and build ``tvm_cpp_check`` under ``build_root/<key>/``; return its path.

    Reuses an existing build for the same key. Safe to call from several processes at once:
    the build runs under a file lock in a temporary folder that is renamed into place.
    """
    source_dir = Path(source_dir) if source_dir is not None else default_source_dir()
    if not (source_dir / "CMakeLists.txt").is_file() or not (source_dir / "src").is_dir():
        raise BuildError(
            f"C++ runner sources not found at {source_dir} (need CMakeLists.txt and src/); "
            "they ship with the pytest-tvmdeploy source tree, not with the wheel"
        )
    reason = find_cpp_toolchain()
    if reason is not None:
        raise BuildError(f"cannot build the C++ runner: {reason}")
    build_root = Path(build_root).resolve()
    key = build_key(source_dir, python)
    final_dir = build_root / key
    executable = final_dir / EXECUTABLE_NAME
    if executable.is_file():
        return executable
    build_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(build_root / f"{key}.lock")):
        if executable.is_file():  # another process built it while we waited
            return executable
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=build_root))
        try:
            cmake = shutil.which("cmake") or "cmake"
            configure = [
                cmake, "-S", str(source_dir), "-B", str(tmp_dir),
                f"-DPython_EXECUTABLE={python}", "-DCMAKE_BUILD_TYPE=Release",
            ]
            cxx = _find_cxx_compiler()
            if cxx and not os.environ.get("CXX"):
                configure.append(f"-DCMAKE_CXX_COMPILER={cxx}")
            _run_step(configure, "configure (cmake)", _CONFIGURE_TIMEOUT)
            jobs = str(max(1, os.cpu_count() or 1))
            _run_step([cmake, "--build", str(tmp_dir), "--parallel", jobs], "build", _BUILD_TIMEOUT)
            if not (tmp_dir / EXECUTABLE_NAME).is_file():
                raise BuildError(f"C++ runner build finished but {tmp_dir / EXECUTABLE_NAME} is missing")
            if final_dir.exists():  # leftover without an executable: replace it
                shutil.rmtree(final_dir)
            os.rename(tmp_dir, final_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return executable


class SessionCppRunner:
    """The C++ runner of one test session: checked and built on first use, then reused.

    The toolchain check and the build happen at most once per process; a build failure is
    remembered and raised again for every later test instead of rebuilding each time.
    """

    def __init__(self, build_root: Path, *, python: str = sys.executable, prebuilt: Path | None = None) -> None:
        self.build_root = Path(build_root)
        self.python = python
        self._checked = False
        self._missing: str | None = None
        self._executable: Path | None = prebuilt
        self._failure: BuildError | None = None
        if prebuilt is not None and not prebuilt.is_file():
            self._failure = BuildError(f"{prebuilt}: prebuilt C++ runner not found")

    def missing_toolchain(self) -> str | None:
        """Why the runner cannot be built here (``None`` if CMake and a compiler are present)."""
        if self._executable is not None or self._failure is not None:
            return None  # prebuilt (or a known failure to report): no toolchain needed
        if not self._checked:
            self._missing = find_cpp_toolchain()
            if self._missing is None and not (default_source_dir() / "CMakeLists.txt").is_file():
                self._missing = f"the C++ runner sources are not at {default_source_dir()}"
            self._checked = True
        return self._missing

    def executable(self) -> Path:
        """The built ``tvm_cpp_check`` (raises :class:`BuildError` with the compiler's output)."""
        if self._failure is not None:
            raise self._failure
        if self._executable is None:
            try:
                self._executable = build_cpp_runner(self.build_root, python=self.python)
            except BuildError as exc:
                self._failure = exc
                raise
        return self._executable



__all__ = [
    "EXECUTABLE_NAME",
    "SessionCppRunner",
    "build_cpp_runner",
    "build_key",
    "default_source_dir",
    "find_cpp_toolchain",
]
