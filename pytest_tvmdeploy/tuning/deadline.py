"""A tuning run's time limit, kept before each task's search as well as after its measurements.

MetaSchedule's first round evolves a population for every task before it collects a single
measurement (~5-20 s a task on two cores), so a limit that the measure callback alone enforces
(:class:`~pytest_tvmdeploy.tuning.monitor.TuningMonitor`) is outlasted by the whole first round:
10 s asked for, 73 s taken on a four-task model. :class:`DeadlineSearch` wraps each task's search
strategy and gives no more candidates once the limit has passed, which MetaSchedule takes as the
task being done; the tasks whose turn had not come keep no records and build with sampled
schedules, as untuned tasks do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy


def now() -> float:
    """The clock deadlines are read on (``time.monotonic``)."""
    return time.monotonic()


@dataclass
class Cutoff:
    """When a run's searches stop (a :func:`now` value; ``None``: never), read by its search
    strategies and its measure callback; which tasks gave candidates, and which the limit ended."""

    deadline: float | None
    searched: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)

    def passed(self) -> bool:
        return self.deadline is not None and now() >= self.deadline

    def unreached(self) -> list[str]:
        """Tasks the limit ended before their first search."""
        return sorted(self.ended - self.searched)


@derived_object
class DeadlineSearch(PySearchStrategy):
    """``inner``'s candidates while ``cutoff`` has not passed; ``None`` (the task is done) after."""

    def __init__(self, inner: Any, cutoff: Cutoff) -> None:
        super().__init__()
        self.inner, self.cutoff = inner, cutoff
        self.task_name = "?"

    def _initialize_with_tune_context(self, context: Any) -> None:
        self.task_name = str(context.task_name)
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: Any, database: Any = None,
                   cost_model: Any = None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> Any:
        if self.cutoff.passed():
            self.cutoff.ended.add(self.task_name)
            return None
        candidates = self.inner.generate_measure_candidates()
        if candidates:
            self.cutoff.searched.add(self.task_name)
        return candidates

    def notify_runner_results(self, measure_candidates: Any, results: Any) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> Any:
        return DeadlineSearch(self.inner.clone(), self.cutoff)
