"""--tvm-tune tunes once into a per-target database; every later build for that target applies it."""

from __future__ import annotations

import json
import shutil

import pytest

TINY = """
import pytest
from models import ConvReluPoolConv, seeded

@pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 16, 16), "float32")})
def test_model(tvm_deployment):
    pass
"""


@pytest.fixture(scope="module", autouse=True)
def _tensor_intrinsics_outlive_pytester() -> None:
    """Tuning imports TVM's tensor intrinsics; imported inside an in-process pytester run, the
    module would be dropped afterwards and a later import would register TVM's functions twice."""
    from pytest_tvmdeploy.tuning.intrinsics import load_tensor_intrinsics

    load_tensor_intrinsics()


def record(project: pytest.Pytester) -> dict:
    (only,) = json.loads((project.path / "out" / "report.json").read_text())["tests"]
    return only


def test_tune_once_then_every_build_applies_the_database(project: pytest.Pytester) -> None:
    project.makepyfile(TINY)
    project.makeini("[pytest]\ntvm_snapshot = off\ntvm_tuning_dir = tuning\n")
    tuned = project.runpytest("-v", "--tvm-tune=8", "--tvm-cache-dir=cache", "--tvm-report=out")
    tuned.assert_outcomes(passed=1)
    tuned.stdout.fnmatch_lines(["*::test_model load… reference… import… tune… compile… run… cpp… PASSED*",
                                "*test_model *llvm *torch *built+tuned *passed"])
    first = record(project)
    database = project.path / "tuning" / "llvm"
    assert (database / "database_tuning_record.json").stat().st_size > 0
    assert first["tuned"] is True and first["timings"]["tune"] > 0 and first["max_abs_error"] < 1e-5
    # Asked again: the database already has this model's trials and the cache knows its
    # workloads, so the model is not even imported: nothing is tuned or built.
    again = project.runpytest("-v", "--tvm-tune=8", "--tvm-cache-dir=cache", "--tvm-report=out")
    again.stdout.fnmatch_lines(["*::test_model load… reference… run… cpp… PASSED*", "artifacts: 0 built, 1 from cache"])
    assert record(project)["timings"]["tune"] == record(project)["timings"]["import"] == 0
    # A fresh cache (as in CI with the database committed): built with the records, no tuning.
    shutil.rmtree(project.path / "cache")
    fresh = project.runpytest("-v", "--tvm-cache-dir=cache", "--tvm-report=out")
    fresh.stdout.fnmatch_lines(["*::test_model load… reference… import… compile… run… cpp… PASSED*"])
    assert record(project)["tuned"] is True
    # Without the database the same model builds untuned, as a different artifact.
    shutil.rmtree(database)
    plain = project.runpytest("--tvm-cache-dir=cache", "--tvm-report=out")
    plain.stdout.fnmatch_lines(["artifacts: 1 built, 0 from cache"])
    assert record(project)["tuned"] is False


def test_a_bad_trial_count_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--tvm-tune=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tvm-tune: 'lots' is not a number of trials*"])


def test_a_damaged_database_fails_the_build_naming_the_file(project: pytest.Pytester) -> None:
    project.makepyfile(TINY)
    database = project.path / "tuning" / "llvm"
    database.mkdir(parents=True)
    (database / "database_workload.json").write_text("not json\n")
    (database / "database_tuning_record.json").write_text("")
    result = project.runpytest(f"--tvm-tuning-dir={project.path / 'tuning'}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*database_workload.json*"])
    assert (database / "database_workload.json").read_text() == "not json\n"  # left as it was


def test_tuning_another_model_keeps_the_first_models_artifact(project: pytest.Pytester) -> None:
    """The artifact's key covers the records its build applies, not the whole database."""
    project.makepyfile(test_first=TINY)
    project.makepyfile(test_second=TINY.replace("ConvReluPoolConv", "TinyConvNet"))
    project.makeini("[pytest]\ntvm_snapshot = off\ntvm_tuning_dir = tuning\n")
    project.runpytest("test_first.py", "--tvm-tune=8", "--tvm-cache-dir=cache").assert_outcomes(passed=1)
    database = project.path / "tuning" / "llvm" / "database_tuning_record.json"
    first_records = database.read_text()
    project.runpytest("test_second.py", "--tvm-tune=8", "--tvm-cache-dir=cache").assert_outcomes(passed=1)
    assert database.read_text().startswith(first_records) and database.read_text() != first_records
    again = project.runpytest("-v", "test_first.py", "--tvm-cache-dir=cache", "--tvm-report=out")
    again.stdout.fnmatch_lines(["*::test_model load… reference… run… cpp… PASSED*", "artifacts: 0 built, 1 from cache"])
    assert record(project)["tuned"] is True
