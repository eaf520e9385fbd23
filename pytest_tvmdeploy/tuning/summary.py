"""What one tuning run did: per task trials, best latency and errors, and the totals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskResult:
    """One tuning task (a fused TIR function of the model) in one run."""

    name: str
    trials: int                      # candidates measured in this run
    best_ms: float | None = None     # fastest measured candidate of this run, if any ran
    errors: int = 0                  # candidates that failed to build or run
    first_error: str | None = None   # the first failure's message, shortened

    @property
    def failed(self) -> bool:
        """True when the task was tried and no candidate ran: it keeps its untuned schedule."""
        return self.trials > 0 and self.best_ms is None


@dataclass(frozen=True)
class TuningSummary:
    """The outcome of :func:`pytest_tvmdeploy.tuning.tune`.

    ``tasks`` counts every task of the module; ``skipped`` names those whose records already met
    the per-task budget, so they were not tuned again; ``results`` covers the tuned ones.
    ``workloads`` are the module's task hashes and ``fingerprint`` digests the records a
    :func:`compile_tuned` of it applies now, as :func:`database_fingerprint` would.
    """

    database_dir: Path
    tasks: int
    trials: int
    seconds: float
    records_added: int
    results: tuple[TaskResult, ...] = ()
    skipped: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ()
    fingerprint: str | None = None

    @property
    def failed_tasks(self) -> tuple[TaskResult, ...]:
        return tuple(result for result in self.results if result.failed)
