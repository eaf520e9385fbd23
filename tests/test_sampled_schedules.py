"""Builds without tuning records get sampled schedules (parallel, vectorised, tiled), reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import ConvReluPoolConv, seeded
from pytest_tvmdeploy import check, deploy, parse_target
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources import open_source

INPUTS = {"x": ((1, 3, 32, 32), "float32")}


def _loop_kinds(module) -> dict[str, int]:
    """How many parallel and vectorized loops the module's TIR holds."""
    text = module.script()
    return {"parallel": text.count("T.parallel("), "vectorized": text.count("T.vectorized(")}


@pytest.fixture(scope="module")
def prepared():
    """ConvReluPoolConv legalized and fused for plain ``llvm``, and that target."""
    import numpy as np

    from pytest_tvmdeploy.tuning.targets import tuning_target
    from pytest_tvmdeploy.tuning.tasks import prepare_module

    model = seeded(ConvReluPoolConv())
    module = open_source(model).to_relax(ShapeSignature.of({"x": np.zeros((1, 3, 32, 32), "float32")}))
    target = tuning_target(parse_target("llvm"))
    return prepare_module(module, target), target


def test_sampled_schedules_parallelise_and_vectorise_every_static_function(prepared) -> None:
    from pytest_tvmdeploy.tuning.sampled import schedule_unscheduled, unscheduled_tasks

    module, target = prepared
    tasks = unscheduled_tasks(module, target)
    scheduled, count = schedule_unscheduled(module, target)
    assert count == len(tasks) >= 3
    assert unscheduled_tasks(scheduled, target) == []  # every function now carries a schedule
    before, after = _loop_kinds(module), _loop_kinds(scheduled)
    assert before.get("parallel", 0) == 0 and before.get("vectorized", 0) == 0
    assert after.get("parallel", 0) >= count - 1  # a tiny elementwise tail may stay serial
    assert after.get("vectorized", 0) >= 1


def test_sampled_schedules_are_the_same_in_every_build(prepared) -> None:
    from pytest_tvmdeploy.tuning.sampled import schedule_unscheduled

    module, target = prepared
    first, _ = schedule_unscheduled(module, target)
    second, _ = schedule_unscheduled(module, target)
    assert first.script() == second.script()


def test_without_the_shipped_cost_model_the_first_valid_draw_is_kept(prepared, monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from pytest_tvmdeploy.tuning import cost_model, sampled

    module, target = prepared
    ranked, _ = sampled.schedule_unscheduled(module, target)
    monkeypatch.setattr(cost_model, "SHIPPED", tmp_path / "missing.json")  # the fault: no model file
    cost_model.shipped_cost_model.cache_clear()
    try:
        assert sampled.shipped_cost_model() is None and "first" in sampled.recipe()
        unranked, count = sampled.schedule_unscheduled(module, target)
    finally:
        cost_model.shipped_cost_model.cache_clear()
    assert count >= 3 and _loop_kinds(unranked).get("parallel", 0) >= 1
    assert ranked.script() != unranked.script()  # the model chose other draws than the first


def test_a_deployment_says_how_many_functions_were_sampled_and_each_schedule_keys_its_artifact(
        tmp_path: Path) -> None:
    model = seeded(ConvReluPoolConv())
    plain = deploy(model, INPUTS, target="llvm", cache_dir=tmp_path, schedule="none")
    sampled = deploy(model, INPUTS, target="llvm", cache_dir=tmp_path)
    assert plain.sampled == 0 and sampled.sampled >= 3
    assert plain.fingerprint != sampled.fingerprint and not sampled.cache_hit
    assert check(plain) and check(sampled)
    again = deploy(model, INPUTS, target="llvm", cache_dir=tmp_path)
    assert again.cache_hit and again.sampled == sampled.sampled
    assert again.artifact_path == sampled.artifact_path


def test_the_schedule_option_reaches_every_build(project: pytest.Pytester) -> None:
    project.makepyfile(test_model="""
import pytest
from models import ConvReluPoolConv, seeded

@pytest.mark.tvm_model(model=seeded(ConvReluPoolConv()), inputs={"x": ((1, 3, 32, 32), "float32")}, cpp="off")
def test_model(tvm_deployment):
    pass
""")
    for option, out in (("--tvm-schedule=none", "plain"), ("--tvm-schedule=sampled", "sampled")):
        result = project.runpytest_subprocess(option, "--tvm-cache-dir=cache", f"--tvm-report={out}")
        result.assert_outcomes(passed=1)
    plain, sampled = (json.loads((project.path / out / "report.json").read_text())["tests"][0]
                      for out in ("plain", "sampled"))
    assert plain["sampled"] == 0 and sampled["sampled"] >= 3
    assert plain["threads"] == sampled["threads"] >= 1
    result = project.runpytest_subprocess("--tvm-schedule=fast")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--tvm-schedule*invalid choice*'fast'*"])


def test_a_schedule_that_leaves_a_padding_border_unwritten_is_not_chosen() -> None:
    # TVM 0.27 samples schedules that fuse a pad into its producer's tiles, so the pad's border
    # (beyond the producer's extent) is never written: EfficientNet-Lite0 gave wrong classes
    # once the memory planner reused that buffer.
    import tvm
    from tvm import te, topi

    from pytest_tvmdeploy.tuning.sampled import block_domains, covers_every_iteration

    data = te.placeholder((1, 8, 6, 6), name="data")
    weight = te.placeholder((8, 8, 1, 1), name="weight")
    padded = topi.nn.pad(topi.nn.relu(topi.nn.conv2d_nchw(data, weight, 1, 0, 1)), [0, 0, 0, 0], [0, 0, 1, 1])
    module = tvm.IRModule({"main": te.create_prim_func([data, weight, padded])})
    domains = block_domains(module)
    assert domains["PadInput"] == 8 * 7 * 7
    whole = tvm.s_tir.Schedule(module)
    assert covers_every_iteration(whole, domains)
    fused = tvm.s_tir.Schedule(module)
    fused.compute_inline(fused.get_sblock("compute"))
    loops = fused.get_loops(fused.get_sblock("conv2d_nchw"))
    fused.reverse_compute_at(fused.get_sblock("PadInput"), loops[3])  # into the conv's 6x6 loops
    assert not covers_every_iteration(fused, domains)
