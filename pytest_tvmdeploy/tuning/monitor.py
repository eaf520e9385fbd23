"""Watching a MetaSchedule run: per-task trials, best time and errors, progress lines, the task at hand.

A measure callback sees each batch of results with its task; the task scheduler's log says
which task it is initializing or picking, which is what names the task when MetaSchedule raises.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from pytest_tvmdeploy.tuning import deadline
from pytest_tvmdeploy.tuning.summary import TaskResult

META_SCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"
_TASK_MESSAGE = re.compile(r'(?:Initializing|picks) Task #(\d+): "?([^"\n]*)"?')
_SENDING_MESSAGE = re.compile(r"Sending (\d+) sample\(s\) to builder")
_ERROR_CHARS = 500
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception)\w*:")


@dataclass
class _Tally:
    trials: int = 0
    best_seconds: float | None = None
    errors: int = 0
    first_error: str | None = None


class TuningDeadline(Exception):
    """Raised by :class:`TuningMonitor` once its deadline has passed, to end MetaSchedule's run."""


@derived_object
class TuningMonitor(PyMeasureCallback):
    """Counts trials and errors per task and reports progress after each measured batch; once
    the run's ``cutoff`` has passed, the first batch sent to the builder
    after it is counted, then :class:`TuningDeadline` ends the run (``timed_out`` says so).

    Batches sent before the deadline are all kept: MetaSchedule's first round sends one batch
    per task and only then collects them, task by task, and a large model's round outlasts a
    short limit. Ending the run at the first batch collected after the deadline kept the first
    task's records and threw away every other task's measured batch (``sent_at``, filled by
    :class:`CurrentTask`, says when each task's batch went out).

    Raising is the one clean way out: terminating the tasks from here leaves MetaSchedule's
    gradient scheduler holding task ids it already chose, which it then fails on."""

    def __init__(self, task_names: list[str], progress: Callable[[str], None], cutoff: deadline.Cutoff) -> None:
        self.task_names = task_names
        self.progress = progress
        self.tallies = [_Tally() for _ in task_names]
        self.cutoff = cutoff
        self.timed_out = False
        self.sent_at: dict[int, float] = {}  # task id -> when its last batch went to the builder

    def apply(self, task_scheduler, task_id: int, measure_candidates, builder_results, runner_results) -> None:
        if builder_results:  # the scheduler revisits exhausted tasks with empty batches
            self._count(task_id, builder_results, runner_results)
        if self.cutoff.passed():
            self.timed_out = True
            limit = self.cutoff.deadline
            if self.sent_at.get(task_id, limit) >= limit:  # unknown: as if sent late
                raise TuningDeadline("the tuning run's time limit has passed")

    def _count(self, task_id: int, builder_results, runner_results) -> None:
        tally = self.tallies[task_id]
        for built, ran in zip(builder_results, runner_results):
            tally.trials += 1
            error = built.error_msg or ran.error_msg
            if error:
                tally.errors += 1
                tally.first_error = tally.first_error or _shorten(str(error))
            elif ran.run_secs:
                seconds = sum(float(s) for s in ran.run_secs) / len(ran.run_secs)
                tally.best_seconds = seconds if tally.best_seconds is None else min(tally.best_seconds, seconds)
        self.progress(self._line(task_id))

    def results(self) -> tuple[TaskResult, ...]:
        return tuple(
            TaskResult(
                name,
                tally.trials,
                None if tally.best_seconds is None else tally.best_seconds * 1e3,
                tally.errors,
                tally.first_error,
            )
            for name, tally in zip(self.task_names, self.tallies)
        )

    def _line(self, task_id: int) -> str:
        tally = self.tallies[task_id]
        best = "none ran" if tally.best_seconds is None else f"best {tally.best_seconds * 1e3:.4g} ms"
        failed = f", {tally.errors} failed" if tally.errors else ""
        total = sum(t.trials for t in self.tallies)
        return (
            f"tuning task {task_id + 1}/{len(self.task_names)} {self.task_names[task_id]}: "
            f"{tally.trials} trials, {best}{failed} ({total} trials in all)"
        )


class CurrentTask(logging.Handler):
    """Remembers the last task the task scheduler announced, from its log messages.

    Measured batches are reported only when the scheduler comes back to their task (after
    one round over all tasks, for a start), so each batch sent to the builder is reported too.
    """

    def __init__(self, task_count: int, progress: Callable[[str], None],
                 sent_at: dict[int, float] | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.task_count = task_count
        self.progress = progress
        self.sent_at = {} if sent_at is None else sent_at  # task id -> when its last batch was sent
        self.number = 0
        self.task_name: str | None = None  # not ``name``: that is the handler's own name in logging's registry

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = _TASK_MESSAGE.search(message)
        if match:
            self.number, self.task_name = int(match.group(1)) + 1, match.group(2)
        sending = _SENDING_MESSAGE.search(message)
        if sending and self.task_name and int(sending.group(1)) > 0:
            self.sent_at[self.number - 1] = deadline.now()
            self.progress(f"measuring {sending.group(1)} candidates of task {self.number}/{self.task_count} "
                          f"{self.task_name}")

    def described(self) -> str:
        """The last announced task, as error messages name it."""
        return f"{self.number}/{self.task_count} {self.task_name}" if self.task_name else "(none started)"


def _shorten(message: str) -> str:
    """The exception line of a worker's traceback and the first error line after it."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    raised = [i for i, line in enumerate(lines) if _EXCEPTION_LINE.match(line)]
    if raised:
        start = raised[-1]
        detail = next((line for line in lines[start + 1:] if "error" in line.lower()), "")
        text = f"{lines[start]} {detail}".strip()
    else:
        text = lines[-1] if lines else message
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"
