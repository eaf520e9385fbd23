"""Stage bisection: a fault planted at a known compiler stage is named, as users see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: A model whose last operator's output is the model's output (a perturbed buffer is not averaged away).
CONV_RELU = """
import pytest
import torch
from models import seeded

model = seeded(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 4, 3), torch.nn.ReLU()))

@pytest.mark.tvm_model(model=model, inputs={"input": ((1, 3, 12, 12), "float32")}, cpp="off")
def test_conv_relu(tvm_deployment):
    pass
"""


def _stage(project: pytest.Pytester, stopped_at: str = "compare") -> dict:
    (record,) = json.loads((project.path / "out" / "report.json").read_text())["tests"]
    assert record["stage"] == stopped_at
    return record["compiler_stage"]


def test_a_wrong_relax_rewrite_is_named_with_its_stage(project: pytest.Pytester) -> None:
    project.makepyfile(plant="from faults import plant_relax_rewrite\nplant_relax_rewrite()\n", test_model=CONV_RELU)
    result = project.runpytest_subprocess("--tvm-setup=plant", "--tvm-cache-dir=cache", "--tvm-report=out")
    result.assert_outcomes(failed=1)
    # the localiser names the rewritten operator too (a model whose input is called ``input``)
    result.stdout.fnmatch_lines(["*first diverging operator: relu*",
                                 "*compiler stage: correct through CanonicalizeBindings, wrong after ScaleFirstCall "
                                 "(relax optimization) (max abs error *); the same pass alone on the required passes "
                                 "is wrong too. * build(s) compared*"])
    stage = _stage(project)
    # builds fuse (for their sampled schedules): the rewrite runs among the passes before fusion
    assert (stage["stage"], stage["culprit"], stage["last_good"]) == ("relax optimization", "ScaleFirstCall",
                                                                      "CanonicalizeBindings")
    assert stage["probes"][0]["label"] == "every pass" and stage["probes"][0]["passed"] is False
    assert any(p["label"] == "required passes only" and p["passed"] for p in stage["probes"])
    assert "compiler stage" in (project.path / "out" / "report.html").read_text()


def _planted(project: pytest.Pytester, fault: str) -> tuple[pytest.RunResult, dict]:
    """Run CONV_RELU with ``faults.<fault>`` planted by a --tvm-setup module (no localiser):
    the failing run and its stage verdict."""
    project.makepyfile(plant=f"import faults\nfaults.{fault}\n", test_model=CONV_RELU)
    result = project.runpytest_subprocess("--tvm-setup=plant", "--tvm-cache-dir=cache", "--tvm-report=out",
                                          "--tvm-localize=off")
    result.assert_outcomes(failed=1)
    return result, _stage(project)


def test_a_tir_pass_perturbing_one_buffer_is_named(project: pytest.Pytester) -> None:
    result, stage = _planted(project, "plant_tir_perturbation('relu1')")
    result.stdout.fnmatch_lines(["*compiler stage: correct through *, wrong after HalfPrecisionStore (TIR passes)*"])
    assert (stage["stage"], stage["culprit"], stage["alone"]) == ("TIR passes", "HalfPrecisionStore", True)
    # the pass before it in the pipeline's order is the last one with good outputs
    assert stage["last_good"] == "CanonicalizeLoop"
    assert 1e-5 < stage["max_abs_error"] < 1e-1  # float16 rounding of values of order one


def test_a_tuning_record_that_computes_differently_is_named(project: pytest.Pytester, tmp_path: Path) -> None:
    import torch

    from faults import write_records
    from models import seeded
    from pytest_tvmdeploy.shapes import ShapeSignature
    from pytest_tvmdeploy.sources import open_source
    from pytest_tvmdeploy.targets import parse_target

    model = seeded(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 4, 3), torch.nn.ReLU()))
    x = torch.zeros(1, 3, 12, 12)
    module = open_source(model).to_relax(ShapeSignature.of({"input": x.numpy()}))
    task = write_records(module, parse_target("llvm"), project.path / "tuning" / "llvm", wrong="conv2d1_add1_relu")
    project.makepyfile(test_model=CONV_RELU)
    result = project.runpytest_subprocess("--tvm-cache-dir=cache", "--tvm-tuning-dir=tuning", "--tvm-report=out",
                                          "--tvm-localize=off")
    result.assert_outcomes(failed=1)
    stage = _stage(project)
    assert stage["stage"] == "tuning records"
    assert stage["culprit"].startswith(f"{task} (workload ")
    result.stdout.fnmatch_lines([f"*compiler stage: correct untuned, wrong with the tuning record of {task} "
                                 "(workload *) applied*"])
    # two tasks had records (the other one right): the search tried them apart
    assert any(p["label"] == f"records of {task}" and p["passed"] is False for p in stage["probes"])


def test_a_model_right_in_every_build_has_no_stage_verdict(project: pytest.Pytester) -> None:
    project.makepyfile(test_model=CONV_RELU)
    result = project.runpytest_subprocess("--tvm-cache-dir=cache", "--tvm-report=out")
    result.assert_outcomes(passed=1)
    (record,) = json.loads((project.path / "out" / "report.json").read_text())["tests"]
    assert record["compiler_stage"] is None


def test_a_cpp_runtime_that_computes_differently_is_the_stage(project: pytest.Pytester, cpp_exe: Path) -> None:
    """The Python VM is right, the C++ program's outputs differ: the stage is the C++ runtime."""
    import sys

    wrapper = project.path / "wrong_cpp_runner.py"
    wrapper.write_text(f"""#!{sys.executable}
import json, subprocess, sys
from pathlib import Path
import numpy as np
done = subprocess.run([{str(cpp_exe)!r}, *sys.argv[1:]])
out = Path(sys.argv[sys.argv.index("--out-dir") + 1])
first = out / json.loads((out / "result.json").read_text())["outputs"][0]
np.save(first, np.load(first) + np.float32(0.01))  # a runtime that computes differently
sys.exit(done.returncode)
""")
    wrapper.chmod(0o755)
    project.makepyfile(test_model=CONV_RELU.replace(', cpp="off"', ""))
    result = project.runpytest_subprocess("--tvm-cache-dir=cache", "--tvm-report=out", f"--tvm-cpp-runner={wrapper}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*C++ outputs differ from the Python VM's*", "*test_conv_relu*failed (cpp)"])
    stage = _stage(project, stopped_at="cpp")  # the Python VM passed: the test stopped at the C++ check
    assert stage["stage"] == "C++ runtime"
    assert stage["summary"] == ("C++ runtime: the Python VM's outputs are within tolerance, the C++ runner's "
                                "differ from them")


def test_a_sampled_schedule_that_computes_differently_is_named(project: pytest.Pytester) -> None:
    result, stage = _planted(project, "plant_wrong_sampled_schedule('relu1')")
    assert stage["stage"] == "sampled schedules"
    assert "relu1" in stage["culprit"]
    result.stdout.fnmatch_lines(["*compiler stage: correct with plain loops, wrong with the sampled schedule of "
                                 "*relu1*"])
    # the build without the sampled schedules was right; one of the two halves of the functions was wrong
    assert stage["last_good"] == "FuseTIR"
    assert any(p["label"] == "1 sampled schedule(s)" and p["passed"] is False for p in stage["probes"])
