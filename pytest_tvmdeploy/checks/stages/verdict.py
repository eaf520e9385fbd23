"""The verdict of stage bisection: which compiler stage (and pass, or tuning record) breaks a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: The stage named when the build with only the required passes is already wrong.
IMPORT = "import or legalization"
#: The pseudo-pass that applies the stored tuning records (between fusion and lowering).
RECORDS = "tuning records"
#: The pseudo-pass that gives functions without a record a sampled schedule (after the records).
SAMPLED = "sampled schedules"
#: A build in the checking process is right, the artifact wrong.
EXPORTED = "exported library"
#: The bisection could not decide (a build it needs fails).
UNDECIDED = "undecided"
#: The stage named when only the C++ runner's outputs are wrong.
CPP_RUNTIME = "C++ runtime"


@dataclass(frozen=True)
class Probe:
    """One build of the bisection: the optional passes it ran and how its outputs compared."""

    label: str                    # "required passes only", "through FuseOps", "record fused_conv2d"
    passed: bool | None           # None: the build or the run failed
    max_abs_error: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class StageVerdict:
    """Where in the compiler a model's outputs leave tolerance.

    ``stage`` is one of: ``import or legalization`` (wrong with the required passes alone), a pass
    stage (``relax optimization``, ``relax lowering``, ``TIR passes``, ``LLVM code generation``) with
    ``culprit`` the first optional pass after which the outputs leave tolerance, ``tuning records``
    with ``culprit`` the task whose record does it, ``exported library`` (a build in the checking
    process is right, the artifact wrong) or ``undecided`` (with ``note`` saying why).
    """

    stage: str
    culprit: str | None = None
    last_good: str | None = None      # the pass before the culprit (None: the required passes alone)
    alone: bool | None = None         # the culprit alone on top of the required passes is also wrong
    partner: str | None = None        # when it is not: the earliest pass it needs before it to go wrong
    max_abs_error: float | None = None
    note: str | None = None
    probes: tuple[Probe, ...] = ()
    seconds: float = field(default=0.0, compare=False)
    relax_passes: tuple[str, ...] = ()  # the passes the first wrong build ran before lowering (tuned builds)
    upstream: Any = field(default=None, compare=False, repr=False)  # the whole model, cut out (OperatorCase)

    @property
    def summary(self) -> str:
        """One line, e.g. ``correct through FoldConstant, wrong after FuseOps (relax optimization)``."""
        if self.stage == IMPORT:
            return ("wrong already with only the required passes: the frontend's import, an operator's "
                    "legalization or the code TVM always generates for it")
        if self.stage == RECORDS:
            return f"correct untuned, wrong with the tuning record of {self.culprit} applied"
        if self.stage == SAMPLED:
            return f"correct with plain loops, wrong with the sampled schedule of {self.culprit}"
        if self.culprit is not None:
            before = f"correct through {self.last_good}" if self.last_good else "correct with the required passes"
            return f"{before}, wrong after {self.culprit} ({self.stage})"
        return f"{self.stage}: {self.note}" if self.note else self.stage

    def describe(self) -> str:
        """A paragraph for a failure message."""
        text = f"compiler stage: {self.summary}"
        if self.max_abs_error is not None:
            text += f" (max abs error {self.max_abs_error:.3g})"
        if self.alone is not None and self.culprit is not None and self.stage not in (RECORDS, SAMPLED):
            text += ("; the same pass alone on the required passes is wrong too" if self.alone
                     else "; that pass alone on the required passes is within tolerance: it breaks in "
                          f"combination with {self.partner or 'the passes before it'} and the passes before that")
        if self.note and self.culprit is not None:
            text += f"; {self.note}"
        return text + f". {len(self.probes)} build(s) compared, {self.seconds:.1f} s."

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, upstream=None))
        data["upstream"] = self.upstream.op if self.upstream is not None else None
        data["summary"] = self.summary
        return data
