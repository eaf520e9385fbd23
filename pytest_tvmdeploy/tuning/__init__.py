"""MetaSchedule tuning of Relax modules, its JSON database, and builds that apply it.

Importing this package imports neither TVM nor torch::

    from pytest_tvmdeploy.tuning import compile_tuned, database_fingerprint, tune
    summary = tune(module, spec, Path("tuning/llvm"), max_trials=500)
    executable = compile_tuned(module, spec, Path("tuning/llvm"))
"""

from pytest_tvmdeploy.tuning.apply import build_with_records, compile_tuned, sampled_host_build
from pytest_tvmdeploy.tuning.driver import tune
from pytest_tvmdeploy.tuning.plan import needs_tuning
from pytest_tvmdeploy.tuning.records import RECORD_FILE, WORKLOAD_FILE, DatabaseFiles, read_database
from pytest_tvmdeploy.tuning.summary import TaskResult, TuningSummary
from pytest_tvmdeploy.tuning.workloads import applied_fingerprint, database_fingerprint, workload_hashes

__all__ = [
    "RECORD_FILE",
    "WORKLOAD_FILE",
    "DatabaseFiles",
    "TaskResult",
    "TuningSummary",
    "applied_fingerprint",
    "build_with_records",
    "compile_tuned",
    "database_fingerprint",
    "needs_tuning",
    "read_database",
    "sampled_host_build",
    "tune",
    "workload_hashes",
]
