"""Tests of MetaSchedule tuning: real TVM, a few trials on the tiny fixture models."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pytest_tvmdeploy.build.compile import compile_module, export_library
from pytest_tvmdeploy.errors import BuildError, ConfigError, RunnerError
from pytest_tvmdeploy.runners.cpp import run_cpp
from pytest_tvmdeploy.runners.python_vm import run_python_vm
from pytest_tvmdeploy.runners.rpc_devices import parse_remote
from pytest_tvmdeploy.runners.rpc_tuning import rpc_measurement
from pytest_tvmdeploy.targets import parse_target
from pytest_tvmdeploy.tuning import (
    RECORD_FILE,
    WORKLOAD_FILE,
    compile_tuned,
    database_fingerprint,
    needs_tuning,
    tune,
    workload_hashes,
)
from pytest_tvmdeploy.tuning.monitor import META_SCHEDULE_LOGGER, CurrentTask
from pytest_tvmdeploy.tuning.records import read_database
from pytest_tvmdeploy.tuning.session import COLD_RUNS, evaluator_config

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

SPEC = parse_target("llvm")  # runs on any x86 CI machine
INPUT_SHAPE = (1, 3, 16, 16)


def _relax_module(model: torch.nn.Module, x: torch.Tensor) -> tvm.IRModule:
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(torch.export.export(model, (x,)))


def _lines(folder: Path, name: str) -> list[str]:
    return (folder / name).read_text().splitlines()


def _copy(database: Path, folder: Path) -> Path:
    shutil.copytree(database, folder, ignore=shutil.ignore_patterns("*.lock"))
    return folder


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(x: np.ndarray) -> tvm.IRModule:
    from models import TinyConvNet, seeded

    return _relax_module(seeded(TinyConvNet()), torch.from_numpy(x))


@pytest.fixture(scope="module")
def tuned(tiny: tvm.IRModule, tmp_path_factory: pytest.TempPathFactory):
    """TinyConvNet tuned with 2 trials per task into a fresh database; (folder, summary, seconds)."""
    database = tmp_path_factory.mktemp("tuning") / "db"
    start = time.perf_counter()
    summary = tune(tiny, SPEC, database, max_trials=8, max_trials_per_task=2)
    return database, summary, time.perf_counter() - start



def test_importing_the_package_imports_neither_tvm_nor_torch() -> None:
    code = "import sys, pytest_tvmdeploy.tuning; print(sorted({'tvm', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tune_writes_records_for_every_task(tuned) -> None:
    database, summary, _ = tuned
    assert summary.tasks == 4
    names = {r.name for r in summary.results}
    assert "mean" in names and any(name.startswith("fused_matmul_add") for name in names)
    assert 0 < summary.trials <= 8
    assert summary.records_added == summary.trials == len(_lines(database, RECORD_FILE))
    assert len(_lines(database, WORKLOAD_FILE)) == len(summary.results)
    assert not summary.failed_tasks
    assert all(r.best_ms is not None and r.best_ms > 0 for r in summary.results)
    # each candidate timed as it runs in a model: COLD_RUNS single runs, caches flushed before each
    assert {len(record.run_secs) for record in read_database(database).records} == {COLD_RUNS}


def test_tuned_build_matches_untuned_in_the_vm_and_from_cpp(tuned, tiny, x, tmp_path, cpp_exe) -> None:
    database = tuned[0]
    inputs = {"x": x}
    tuned_so = export_library(compile_tuned(tiny, SPEC, database), tmp_path / "tuned.so")
    plain_so = export_library(compile_module(tiny, SPEC), tmp_path / "plain.so")
    tuned_out = run_python_vm(tuned_so, inputs).outputs
    plain_out = run_python_vm(plain_so, inputs).outputs
    assert list(tuned_out) == list(plain_out) == ["output_0"]
    np.testing.assert_allclose(tuned_out["output_0"], plain_out["output_0"], rtol=0, atol=1e-5)
    cpp_out = run_cpp(cpp_exe, tuned_so, inputs, work_dir=tmp_path / "cpp", by_name=True).outputs
    np.testing.assert_array_equal(cpp_out["output_0"], tuned_out["output_0"])


def test_a_tuned_module_is_not_tuned_again(tuned, tiny) -> None:
    database, first, _ = tuned
    before = database_fingerprint(database)
    assert not needs_tuning(database, SPEC, first.workloads, max_trials=8, max_trials_per_task=2)
    again = tune(tiny, SPEC, database, max_trials=8, max_trials_per_task=2)
    assert again.trials == 0 and again.records_added == 0
    assert sorted(again.skipped) == sorted(r.name for r in first.results)
    assert database_fingerprint(database) == before
    assert again.fingerprint == first.fingerprint


def test_the_default_per_task_cap() -> None:
    from pytest_tvmdeploy.tuning.plan import default_per_task

    assert default_per_task(8, 4) == 2  # small budgets: an even share, every task gets some
    assert default_per_task(1400, 19) == 4 * 74  # larger ones: room for the gradient scheduler
    assert default_per_task(100, 1) == 100


def test_a_bigger_budget_tunes_again(tuned, tmp_path) -> None:
    database, first, _ = tuned
    assert needs_tuning(database, SPEC, first.workloads, max_trials=16, max_trials_per_task=4)
    assert needs_tuning(tmp_path / "empty", SPEC, first.workloads, max_trials=8)
    assert not needs_tuning(tmp_path / "empty", SPEC, first.workloads, max_trials=0)


def test_a_second_model_adds_records_and_keeps_the_first(tuned, tiny, x, tmp_path) -> None:
    from models import ConvReluPoolConv, seeded

    database = _copy(tuned[0], tmp_path / "db")
    workloads, records = _lines(database, WORKLOAD_FILE), _lines(database, RECORD_FILE)
    tiny_fingerprint = database_fingerprint(database, tiny, SPEC)
    other = _relax_module(seeded(ConvReluPoolConv()), torch.from_numpy(x))

    summary = tune(other, SPEC, database, max_trials=4, max_trials_per_task=2)

    assert summary.records_added > 0
    assert _lines(database, WORKLOAD_FILE)[: len(workloads)] == workloads
    assert _lines(database, RECORD_FILE)[: len(records)] == records
    assert len(_lines(database, RECORD_FILE)) == len(records) + summary.records_added
    assert database_fingerprint(database, tiny, SPEC) == tiny_fingerprint  # model A's builds stay cached
    assert database_fingerprint(database, other, SPEC) not in (None, tiny_fingerprint)
    compile_tuned(other, SPEC, database)  # the merged database loads


def test_fingerprints(tuned, tiny, tmp_path) -> None:
    database, summary, _ = tuned
    assert database_fingerprint(tmp_path / "missing") is None
    assert database_fingerprint(tmp_path / "missing", tiny, SPEC) is None
    whole = database_fingerprint(database)
    assert whole is not None and len(whole) == 64 and whole == database_fingerprint(database)
    relevant = database_fingerprint(database, tiny, SPEC)
    assert relevant not in (None, whole)
    assert relevant == summary.fingerprint
    assert workload_hashes(tiny, SPEC) == summary.workloads
    assert database_fingerprint(database, target=SPEC, workloads=summary.workloads) == relevant
    other_target = parse_target({"kind": "llvm", "mcpu": "znver4"})
    assert database_fingerprint(database, tiny, other_target) is None  # records are per target
    with_cores = parse_target({"kind": "llvm", "num-cores": 997})
    assert database_fingerprint(database, tiny, with_cores) is None  # a stated core count must match


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        (RECORD_FILE, lambda text: text[: len(text) // 2], "line"),
        (WORKLOAD_FILE, lambda text: "garbage\n" + text, "line 1: not JSON"),
        (RECORD_FILE, lambda text: "[99," + text.split(",", 1)[1], "refers to workload 99"),
    ],
    ids=["truncated-records", "garbage-workloads", "dangling-record"],
)
def test_a_damaged_database_names_its_file(tuned, tiny, tmp_path, name, damage, expected) -> None:
    database = _copy(tuned[0], tmp_path / "db")
    path = database / name
    path.write_text(damage(path.read_text()))
    for attempt in (
        lambda: compile_tuned(tiny, SPEC, database),
        lambda: tune(tiny, SPEC, database, max_trials=8),
        lambda: database_fingerprint(database),
    ):
        with pytest.raises(BuildError, match=expected) as caught:
            attempt()
        assert str(path) in str(caught.value)


def test_a_tuning_failure_names_the_task(tmp_path) -> None:
    """Candidates for this CPU but another OS (Mach-O objects) build, and fail to link here."""
    module = _relax_module(torch.nn.ReLU(), torch.randn(1, 8))
    darwin = parse_target({"kind": "llvm", "mtriple": "x86_64-apple-darwin"})
    with pytest.raises(BuildError, match=r"every candidate failed, e.g. task relu: .*ld returned 1") as caught:
        tune(module, darwin, tmp_path / "db", max_trials=1)
    assert caught.value.stage == "build"
    assert database_fingerprint(tmp_path / "db") is None  # nothing of the broken run was kept
    logs = Path(re.search(r"MetaSchedule logs: (\S+)\)", str(caught.value)).group(1))
    assert any(logs.glob("*relu*.log"))  # kept for whoever debugs it
    shutil.rmtree(logs.parent)


def test_tuning_for_another_architecture_needs_a_device(tmp_path) -> None:
    module = _relax_module(torch.nn.ReLU(), torch.randn(1, 8))
    arm = parse_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    with pytest.raises(ConfigError, match=r"built for aarch64, not this machine .*give an RPC device"):
        tune(module, arm, tmp_path / "db", max_trials=1)
    assert not (tmp_path / "db").exists()


def test_tuning_on_a_tracker_without_servers_for_the_key_names_the_pool(tmp_path) -> None:
    from rpc_servers import RpcFarm

    module = _relax_module(torch.nn.ReLU(), torch.randn(1, 8))
    with RpcFarm(tmp_path / "rpc") as farm:
        tracker = farm.tracker()
        farm.wait_ready()
        nobody = rpc_measurement(parse_remote(tracker=tracker.address, key="nobody"))
        with pytest.raises(RunnerError, match=rf"RPC device 'nobody' from tracker {tracker.address}: cannot tune "
                                              r"there, no server is registered with key 'nobody'"):
            tune(module, SPEC, tmp_path / "db", max_trials=1, remote=nobody)
    assert database_fingerprint(tmp_path / "db") is None
    # nothing of the failed run stays on MetaSchedule's logger (a progress handler left there took
    # the next task's name and broke the next tune's logging setup)
    assert not [handler for handler in logging.getLogger(META_SCHEDULE_LOGGER).handlers
                if isinstance(handler, CurrentTask)]


def test_the_vnni_intrinsic_replacement_compiles_and_computes(tmp_path) -> None:
    """TVM's own dot_16x4_vnni does not compile with the wheel's LLVM; the replacement does."""
    from pytest_tvmdeploy.tuning.intrinsics import vnni_implementation

    target = parse_target({"kind": "llvm", "mcpu": "znver4"})
    executable = tvm.compile(vnni_implementation().with_attr("global_symbol", "main"), target=target.to_tvm())
    if "avx512_vnni" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU cannot run AVX512-VNNI code")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, 4).astype(np.uint8)
    b = rng.integers(-128, 128, (16, 4)).astype(np.int8)
    c = rng.integers(-1000, 1000, 16).astype(np.int32)
    out = tvm.runtime.tensor(c)
    executable["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    np.testing.assert_array_equal(out.numpy(), c + b.astype(np.int64) @ a.astype(np.int64))


def test_compacting_keeps_what_builds_apply(tuned, tiny, tmp_path, capsys) -> None:
    from pytest_tvmdeploy.tuning.compact import main as compact_main

    database = _copy(tuned[0], tmp_path / "db")
    applied = database_fingerprint(database, tiny, SPEC)
    records = len(_lines(database, RECORD_FILE))
    assert compact_main([str(database)]) == 0
    kept = len(_lines(database, RECORD_FILE))
    assert capsys.readouterr().out.strip() == f"{database}: {records} -> {kept} record(s)"
    assert 0 < kept <= len(_lines(database, WORKLOAD_FILE)) and kept < records  # the best per workload
    assert database_fingerprint(database, tiny, SPEC) == applied
    assert compact_main([str(tmp_path / "missing")]) == 1
    assert "missing: no such folder" in capsys.readouterr().err


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _ScaledMean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2.0).relu().mean(dim=(2, 3))


def test_records_of_equal_tasks_from_two_models_stay_loadable(x, tmp_path) -> None:
    """The same reduction in two models has the same workload hash but other block names
    (they follow variable names); each record must be stored with the module it was tuned on."""
    from tvm.s_tir import meta_schedule as ms

    plain, scaled = (_relax_module(model, torch.from_numpy(x)) for model in (_Mean(), _ScaledMean()))
    shared = set(workload_hashes(plain, SPEC)) & set(workload_hashes(scaled, SPEC))
    assert shared  # the mean is one workload for both
    database = tmp_path / "db"
    tune(plain, SPEC, database, max_trials=2, max_trials_per_task=2)
    tune(scaled, SPEC, database, max_trials=12, max_trials_per_task=4)
    files = read_database(database)
    assert sum(files.workloads[record.workload].shash in shared for record in files.records) > 2  # tuned again
    assert sum(workload.shash in shared for workload in files.workloads) >= 2  # each under its own module
    assert len(ms.database.JSONDatabase(work_dir=str(database), allow_missing=False)) == len(
        _lines(database, RECORD_FILE))
    for name, module, expected in (("plain", plain, x.mean(axis=(2, 3))),
                                   ("scaled", scaled, np.maximum(2 * x, 0).mean(axis=(2, 3)))):
        library = export_library(compile_tuned(module, SPEC, database), tmp_path / f"{name}.so")
        out = run_python_vm(library, {"x": x}).outputs
        np.testing.assert_allclose(out["output_0"], expected, rtol=1e-5, atol=1e-6)


def test_a_record_that_cannot_be_replayed_is_left_out_with_a_warning(tuned, tiny, x, tmp_path) -> None:
    database = _copy(tuned[0], tmp_path / "db")
    lines = _lines(database, RECORD_FILE)
    names = {match for line in lines for match in re.findall(r'\["GetSBlock",\[\],\["([^"]+)","main"\]', line)}
    name = sorted(names - {"root"})[0]
    renamed = [line.replace(f'["{name}","main"]', '["no_such_block","main"]') for line in lines]
    assert renamed != lines
    (database / RECORD_FILE).write_text("\n".join(renamed) + "\n")
    with pytest.warns(UserWarning, match=r"db: \d+ record\(s\) do not replay on their stored workload"):
        executable = compile_tuned(tiny, SPEC, database)
    out = run_python_vm(export_library(executable, tmp_path / "left_out.so"), {"x": x}).outputs
    plain = run_python_vm(export_library(compile_module(tiny, SPEC), tmp_path / "plain.so"), {"x": x}).outputs
    np.testing.assert_allclose(out["output_0"], plain["output_0"], rtol=0, atol=1e-5)


def test_a_time_limit_ends_the_search_and_keeps_what_it_measured(tiny, tmp_path) -> None:
    from pytest_tvmdeploy.tuning.exhausted import exhausted_workloads
    from pytest_tvmdeploy.tuning.targets import target_key

    database = tmp_path / "db"
    lines: list[str] = []
    summary = tune(tiny, SPEC, database, max_trials=5000, max_trials_per_task=2000, max_seconds=10,
                   progress=lines.append)
    assert 0 < summary.trials < 5000  # the clock, not the budget, ended it
    assert summary.seconds < 10 + 120  # the batches under way finish; nothing starts after the limit
    assert len(_lines(database, RECORD_FILE)) == summary.records_added == summary.trials
    assert any("stopped at its time limit of 10 s" in line for line in lines)
    # the first round is ranked by the shipped cost model, not at random (the run's own is still warming up)
    ranked = [re.search(r"ranked by the shipped cost model: (\d+), by this run's: (\d+)", line) for line in lines]
    assert any(found and int(found.group(1)) > 0 for found in ranked), lines[-3:]
    assert not exhausted_workloads(database, target_key(SPEC))  # cut short is not run dry


def _clock_jumping_past_the_limit(monkeypatch: pytest.MonkeyPatch,
                                  after: Callable[[str], bool]) -> tuple[list[str], Callable[[str], None]]:
    """A progress callback that keeps its lines, and from the first line ``after`` accepts on,
    a tuning clock past every time limit."""
    import math

    from pytest_tvmdeploy.tuning import deadline

    late = False
    real_clock = deadline.now
    monkeypatch.setattr(deadline, "now", lambda: math.inf if late else real_clock())
    lines: list[str] = []

    def progress(line: str) -> None:
        nonlocal late
        lines.append(line)
        late = late or after(line)

    return lines, progress


def test_a_time_limit_in_the_first_round_keeps_every_batch_sent_before_it(tiny, tmp_path, monkeypatch) -> None:
    # MetaSchedule's first round sends one batch per task, then collects them all; a model whose
    # round outlasts the limit kept only its first task's records. Here the limit passes right
    # after the round's last batch is sent (the clock jumps), so every batch was sent in time.
    def last_task_sent(line: str) -> bool:
        sent = re.search(r"measuring \d+ candidates of task (\d+)/(\d+)", line)
        return bool(sent and sent.group(1) == sent.group(2))

    lines, progress = _clock_jumping_past_the_limit(monkeypatch, after=last_task_sent)
    database = tmp_path / "db"
    # two trials a task: the smallest population (64) to evolve; the limit passes before any batch is collected
    summary = tune(tiny, SPEC, database, max_trials=5000, max_trials_per_task=2, max_seconds=3600,
                   progress=progress)
    assert summary.tasks >= 3 and any("stopped at its time limit" in line for line in lines)
    workloads = {json.loads(line)[0] for line in _lines(database, RECORD_FILE)}
    assert len(workloads) == summary.tasks, (len(workloads), summary.tasks)  # was 1: the first task's
    assert summary.records_added == summary.trials


def test_no_task_starts_its_search_after_the_time_limit(tiny, tmp_path, monkeypatch) -> None:
    # The first round used to search every task (evolving a population: seconds each) before any
    # measurement could see the clock: a 10 s limit took 73 s on this model. Here the limit passes
    # once the second task's batch is sent: the tasks after it are not searched, and are named.
    lines, progress = _clock_jumping_past_the_limit(
        monkeypatch, after=lambda line: bool(re.search(r"measuring \d+ candidates of task 2/", line)))
    database = tmp_path / "db"
    summary = tune(tiny, SPEC, database, max_trials=5000, max_trials_per_task=2, max_seconds=3600,
                   progress=progress)
    assert summary.tasks == 4
    searched = [result.name for result in summary.results if result.trials]
    unreached = [result.name for result in summary.results if not result.trials]
    assert len(searched) == 2 and len(unreached) == 2
    (stopped,) = [line for line in lines if "stopped at its time limit" in line]
    assert stopped.endswith(f"; 2 of 4 tasks not reached: {', '.join(sorted(unreached))}")
    assert not any(re.search(r"measuring \d+ candidates of task [34]/", line) for line in lines)
    assert len({json.loads(line)[0] for line in _lines(database, RECORD_FILE)}) == 2  # the two searched tasks'


def test_cpus_time_candidates_cold_and_other_devices_hot() -> None:
    cold = evaluator_config(SPEC.to_tvm())
    assert (cold.number, cold.repeat, cold.enable_cpu_cache_flush) == (1, COLD_RUNS, True)
    hot = evaluator_config(tvm.target.Target("cuda"))
    assert not hot.enable_cpu_cache_flush and hot.min_repeat_ms == 40


@pytest.mark.parametrize(("text", "budget"), [("2000", (2000, None)), ("15m", (100_000, 900.0)),
                                              ("2000/90s", (2000, 90.0)), ("1h", (100_000, 3600.0))])
def test_tuning_budgets_in_trials_and_time(text: str, budget: tuple) -> None:
    from pytest_tvmdeploy.settings.values import tuning_budget

    assert tuning_budget(text, "--tvm-tune") == budget


@pytest.mark.parametrize("text", ["15 minutes", "0m", "-5s", "m", "2000/"])
def test_a_bad_tuning_budget_names_the_option(text: str) -> None:
    from pytest_tvmdeploy.errors import ConfigError
    from pytest_tvmdeploy.settings.values import tuning_budget

    with pytest.raises(ConfigError, match="--tvm-tune"):
        tuning_budget(text, "--tvm-tune")
