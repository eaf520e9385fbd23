"""The cost model that ships with the package: MetaSchedule's XGBoost ranker, trained once on
measured tuning records, used to choose schedules without measuring them.

It predicts which of several candidate schedules of one function runs fastest (a ranking within
the function, not a time). The booster is stored as XGBoost's own JSON (``cost_model.json``
beside this module), so loading it runs no pickled code. Retrain it from tuning databases with::

    python -m pytest_tvmdeploy.tuning.cost_model DATABASE_FOLDER [...]
"""

from __future__ import annotations

import argparse
import atexit
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.hashing import file_sha256

#: The shipped booster (see the module docstring for what it was trained on).
SHIPPED = Path(__file__).with_name("cost_model.json")


def shipped_digest() -> str | None:
    """A short digest of the shipped model (part of artifact keys: a new model makes new schedules)."""
    if not SHIPPED.is_file():
        return None
    stat = SHIPPED.stat()
    return _file_digest(str(SHIPPED), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _file_digest(path: str, _mtime_ns: int, _size: int) -> str:
    """Hashed once per process for each version of the file (every deployment asks)."""
    return file_sha256(Path(path))[:16]


@lru_cache(maxsize=1)
def shipped_cost_model() -> Any | None:
    """MetaSchedule's ``XGBModel`` holding the shipped booster; ``None`` without the file or xgboost."""
    if not SHIPPED.is_file():
        return None
    try:
        import xgboost
    except ImportError:
        return None
    from tvm.s_tir import meta_schedule as ms

    model = ms.cost_model.XGBModel(num_warmup_samples=0)
    model.booster = xgboost.Booster(model_file=str(SHIPPED))
    model.data_size = 1  # predict() asks for data_size >= num_warmup_samples and a booster
    return model


def ranking_scores(model: Any, context: Any, candidates: list[Any]) -> Any:
    """``model``'s predicted scores of ``candidates``: equal ones when none has a feature row
    (MetaSchedule's XGBoost model then fails on an integer ``isnan``), so nothing is ranked."""
    import numpy as np

    try:
        return model.predict(context, candidates)
    except TypeError:
        return np.zeros(len(candidates))


# Free the booster before the interpreter tears xgboost's library down (its __del__ fails then).
atexit.register(shipped_cost_model.cache_clear)


def train_cost_model(databases: Sequence[Path], out: Path = SHIPPED) -> int:
    """Train the ranker on every measured record of ``databases`` (MetaSchedule JSON database
    folders); write the booster to ``out``; return how many records it learnt from."""
    from tvm.s_tir import meta_schedule as ms

    from pytest_tvmdeploy.tuning.intrinsics import register_working_vnni
    from pytest_tvmdeploy.tuning.sampled import light_context

    register_working_vnni()  # replaying a tensorized record needs its intrinsic
    model = ms.cost_model.XGBModel(num_warmup_samples=0)
    learnt = 0
    for folder in databases:
        database = ms.database.JSONDatabase(work_dir=str(folder), allow_missing=False)
        by_workload: dict[Any, list[Any]] = {}
        for record in database.get_all_tuning_records():
            if record.run_secs and record.target is not None:
                by_workload.setdefault(record.workload, []).append(record)
        for workload, records in by_workload.items():
            context = light_context(workload.mod, records[0].target, seed=0)
            model.update(context, [r.as_measure_candidate() for r in records],
                         [ms.runner.RunnerResult([float(s) for s in r.run_secs], None) for r in records])
            learnt += len(records)
    if model.booster is None:
        raise ValueError(f"no measured records in {', '.join(map(str, databases))}")
    model.booster.save_model(str(out))
    return learnt


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the shipped cost model on tuning databases.")
    parser.add_argument("databases", nargs="+", type=Path, help="MetaSchedule JSON database folders")
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    count = train_cost_model(args.databases, args.out)
    print(f"trained on {count} records; wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
