"""Errors raised by pytest-tvmdeploy: each names the file or input involved and the cause."""

from __future__ import annotations


class TvmDeployError(Exception):
    """Base class of every error this package raises on purpose.

    ``stage`` names the pipeline step that failed, as reports and expected-failure lists say it.
    """

    stage = "setup"


class ModelSourceError(TvmDeployError):
    """A model could not be loaded: missing or corrupt file, unknown kind, failing reference run."""

    stage = "import"


class InputSpecError(TvmDeployError):
    """The ``inputs`` given do not describe valid data, or do not match the model."""

    stage = "inputs"


class ReferenceRunError(TvmDeployError):
    """No reference could compute the model's outputs (its framework failed on a model it was
    given, and so did any stand-in): the reference is missing, which says nothing of TVM."""

    stage = "reference"


class UnsupportedOperatorError(TvmDeployError):
    """The TVM frontend cannot import one or more operators of the model."""

    stage = "import"

    def __init__(self, message: str, operators: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.operators = operators

    def __reduce__(self) -> tuple[object, ...]:  # keeps the operators across the sandbox's pipe
        return (type(self), (str(self), self.operators))


class ConfigError(TvmDeployError):
    """A marker argument, option or ini value that cannot be used."""

    stage = "config"


class TargetError(TvmDeployError):
    """A ``--tvm-target`` value TVM does not understand."""

    stage = "build"


class BuildError(TvmDeployError):
    """``tvm.compile`` or ``export_library`` failed."""

    stage = "build"


class ArtifactError(TvmDeployError):
    """A stored artifact is missing, truncated or does not match its recorded hash."""

    stage = "run"


class RunnerError(TvmDeployError):
    """Running a built artifact failed (Python VM or C++ child process)."""

    stage = "run"


class StorageError(TvmDeployError):
    """A file could not be stored (disk full, no permission); what was stored before is untouched."""

    stage = "storage"


def brief(exc: BaseException) -> str:
    """The informative line of an exception's text: TVM puts its message after a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    start = len(lines) - 1
    while start > 0 and lines[start - 1].endswith(":"):  # "Offending call:" / the call on the next line
        start -= 1
    if start > 0 and start < len(lines) - 1:
        start -= 1  # and the sentence that introduces them
    return " ".join(lines[start:])


class SandboxError(TvmDeployError):
    """The TVM worker process crashed, hung or ran out of memory in ``stage``.

    ``cause`` is the signal's name (``SIGSEGV``), ``timeout`` or an exit code; ``stderr`` holds
    the last lines the worker printed (TVM's own backtrace, when it prints one).
    """

    # Defaults only for subclasses that also derive from pytest's outcome exceptions, whose
    # __init__ passes the message alone up the chain.
    def __init__(self, message: str, *, stage: str = "", cause: str = "", stderr: str = "") -> None:
        full = f"{message}\n  last lines of the worker's stderr:\n{_indent(stderr)}" if stderr.strip() else message
        super().__init__(full)
        self.stage, self.cause, self.stderr = stage, cause, stderr
        self.job: object = None  # the sandbox job that failed, for a reproducer (not pickled)

    def __reduce__(self) -> tuple[object, ...]:
        return (_sandbox_error, (str(self), self.stage, self.cause, self.stderr))


def _sandbox_error(text: str, stage: str, cause: str, stderr: str) -> SandboxError:
    error = SandboxError.__new__(SandboxError)
    Exception.__init__(error, text)
    error.stage, error.cause, error.stderr = stage, cause, stderr
    error.job = None
    return error


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
