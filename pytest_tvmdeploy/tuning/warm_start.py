"""A tuning run's cost model that is useful from its first round.

MetaSchedule's XGBoost model predicts at random until it has seen ``num_warmup_samples``
measurements, and the gradient scheduler collects no measurement before every task has sent
its first batch: the whole first round's evolutionary search (a 256-schedule population
evolved four times, ~10 s per task on two cores) ranks at random. :class:`WarmStartedModel`
ranks with the package's shipped booster (:mod:`pytest_tvmdeploy.tuning.cost_model`) until
the run's own model has warmed up, then with the run's model, which learns from every
measurement either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.cost_model import PyCostModel

from pytest_tvmdeploy.tuning.cost_model import ranking_scores, shipped_cost_model


@derived_object
class WarmStartedModel(PyCostModel):
    """Predicts with ``shipped`` while ``session`` (an ``XGBModel``) is still warming up; every
    update goes to ``session``. ``predictions`` counts the candidates each one ranked."""

    def __init__(self, session: Any, shipped: Any) -> None:
        super().__init__()
        self.session = session
        self.shipped = shipped
        self.predictions = {"shipped": 0, "session": 0}

    def load(self, path: str) -> None:
        self.session.load(path)

    def save(self, path: str) -> None:
        self.session.save(path)

    def update(self, context: Any, candidates: list[Any], results: list[Any]) -> None:
        self.session.update(context, candidates, results)

    def predict(self, context: Any, candidates: list[Any]) -> np.ndarray:
        if self.warmed_up:
            self.predictions["session"] += len(candidates)
            return self.session.predict(context, candidates)
        self.predictions["shipped"] += len(candidates)
        return ranking_scores(self.shipped, context, candidates)

    @property
    def warmed_up(self) -> bool:
        """Whether the run's own model predicts (it has seen enough measurements)."""
        return self.session.booster is not None and self.session.data_size >= self.session.num_warmup_samples


def tuning_cost_model(num_cores: int) -> Any:
    """The cost model for a run that measures enough to train one: MetaSchedule's XGBoost
    model, warm-started with the shipped booster when it is there."""
    from tvm.s_tir import meta_schedule as ms

    session = ms.cost_model.XGBModel(num_tuning_cores=num_cores)
    shipped = shipped_cost_model()
    return session if shipped is None else WarmStartedModel(session, shipped)
