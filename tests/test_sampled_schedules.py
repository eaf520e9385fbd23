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

    from pytest_tvmdeploy.tuning.sampled import blocks_of, covers_every_iteration

    data = te.placeholder((1, 8, 6, 6), name="data")
    weight = te.placeholder((8, 8, 1, 1), name="weight")
    padded = topi.nn.pad(topi.nn.relu(topi.nn.conv2d_nchw(data, weight, 1, 0, 1)), [0, 0, 0, 0], [0, 0, 1, 1])
    module = tvm.IRModule({"main": te.create_prim_func([data, weight, padded])})
    domains = blocks_of(module).domains
    assert domains["PadInput"] == 8 * 7 * 7
    whole = tvm.s_tir.Schedule(module)
    assert covers_every_iteration(whole, domains)
    fused = tvm.s_tir.Schedule(module)
    fused.compute_inline(fused.get_sblock("compute"))
    loops = fused.get_loops(fused.get_sblock("conv2d_nchw"))
    fused.reverse_compute_at(fused.get_sblock("PadInput"), loops[3])  # into the conv's 6x6 loops
    assert not covers_every_iteration(fused, domains)


def _unroll_steps(module) -> list[int]:
    import re

    return [int(step) for step in re.findall(r'"pragma_auto_unroll_max_step": (\d+)', module.script())]


def test_a_drawn_schedule_unrolls_at_most_the_cap_and_keeps_its_tiling() -> None:
    # LLVM took 31 s to compile one MobileNetV2 conv unrolled 512 iterations deep, 0.2 s at 64.
    import tvm
    from tvm import te, topi

    from pytest_tvmdeploy.tuning.sampled import MAX_UNROLL, capped_unroll, light_context
    from pytest_tvmdeploy.tuning.targets import tuning_target

    data = te.placeholder((1, 32, 14, 14), name="data")
    weight = te.placeholder((32, 32, 1, 1), name="weight")
    module = tvm.IRModule({"main": te.create_prim_func([data, weight, topi.nn.conv2d_nchw(data, weight, 1, 0, 1)])})
    context = light_context(module, tuning_target(parse_target("llvm")), seed=1)
    postprocs = context.space_generator.postprocs
    deepest = None
    for _ in range(40):  # MetaSchedule draws 0, 16, 64 or 512 with equal odds
        for schedule in context.generate_design_space():
            schedule.enter_postproc()
            if all(p.apply(schedule) for p in postprocs) and max(_unroll_steps(schedule.mod), default=0) > MAX_UNROLL:
                deepest = schedule
                break
        if deepest is not None:
            break
    assert deepest is not None, "no draw unrolled deeper than the cap"
    capped = capped_unroll(deepest, module, postprocs)
    assert _unroll_steps(capped.mod) == [MAX_UNROLL]
    # the same tiling, only the unrolling differs
    assert capped.mod.script().replace(f": {MAX_UNROLL},", ": 512,") == deepest.mod.script()
    shallow = capped_unroll(capped, module, postprocs)
    assert shallow is capped  # nothing to cap: the schedule itself


def test_every_sampled_schedule_unrolls_at_most_the_cap(prepared) -> None:
    from pytest_tvmdeploy.tuning.sampled import MAX_UNROLL, schedule_unscheduled

    module, target = prepared
    scheduled, _ = schedule_unscheduled(module, target)
    steps = _unroll_steps(scheduled)
    assert steps and max(steps) <= MAX_UNROLL


RELAX_CONV = """
@I.ir_module
class Module:
    @R.function
    def main(DATA: R.Tensor((1, 16, 14, 14), "float32"), WEIGHT: R.Tensor((16, 16, 3, 3), "float32")):
        with R.dataflow():
            conv = R.nn.conv2d(DATA, WEIGHT, padding=1)
            out = R.nn.relu(conv)
            R.output(out)
        return out
"""


def test_a_function_named_otherwise_replays_the_schedule_kept_for_its_computation() -> None:
    # A model's ONNX export and its PyTorch import name one layer's buffers differently
    # (DenseNet-121: 3 of 135 functions alike by text, 133 by structure and block names).
    import tvm

    from pytest_tvmdeploy.tuning.sampled import schedule_unscheduled, unscheduled_tasks
    from pytest_tvmdeploy.tuning.targets import tuning_target
    from pytest_tvmdeploy.tuning.tasks import prepare_module

    target = tuning_target(parse_target("llvm"))
    forms = [prepare_module(tvm.script.from_source(RELAX_CONV.replace("DATA", data).replace("WEIGHT", weight)), target)
             for data, weight in (("x", "w"), ("image", "kernel"))]
    texts = [{task.extracted.dispatched[0].script() for task in unscheduled_tasks(form, target)} for form in forms]
    assert len(texts[0]) == len(texts[1]) >= 1 and not texts[0] & texts[1]  # no function alike by text
    kept: dict[str, object] = {}
    sampled: list[str] = []

    def remember(key: str, compute):
        if key not in kept:
            sampled.append(key)
            kept[key] = compute()
        return kept[key]

    first, count = schedule_unscheduled(forms[0], target, remember=remember)
    second, again = schedule_unscheduled(forms[1], target, remember=remember)
    assert count == again == len(sampled) == len(texts[0])  # the second form sampled nothing
    assert second.script().count("T.parallel(") == first.script().count("T.parallel(") >= 1


@pytest.fixture(scope="module")
def classifier_tasks():
    """TinyConvNet's tasks for plain ``llvm``: a conv, a mean and an 8 -> 10 matmul."""
    import numpy as np

    from models import TinyConvNet
    from pytest_tvmdeploy.tuning.sampled import unscheduled_tasks
    from pytest_tvmdeploy.tuning.targets import tuning_target
    from pytest_tvmdeploy.tuning.tasks import prepare_module

    module = open_source(seeded(TinyConvNet())).to_relax(
        ShapeSignature.of({"x": np.zeros((1, 3, 16, 16), "float32")}))
    target = tuning_target(parse_target("llvm"))
    return unscheduled_tasks(prepare_module(module, target), target)


def _named(draws: dict[str, int], part: str) -> str:
    return next(name for name in draws if part in name)


def test_functions_doing_a_tiny_share_of_the_flops_get_fewer_draws(classifier_tasks) -> None:
    from pytest_tvmdeploy.tuning import sampled

    draws = sampled.draw_counts(classifier_tasks)
    # the matmul (8 -> 10 classes) does 0.15% of the conv's flops
    assert draws[_named(draws, "conv2d")] == sampled.CANDIDATES > sampled.SMALL_CANDIDATES
    assert draws[_named(draws, "matmul")] == sampled.SMALL_CANDIDATES


def test_a_function_whose_flops_cannot_be_estimated_keeps_every_draw(classifier_tasks,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tvm.s_tir import analysis

    from pytest_tvmdeploy.tuning import sampled

    estimate = analysis.estimate_tir_flops

    def failing_for_the_conv(function):
        if "conv2d" in function.script():
            raise RuntimeError("injected: no estimate")
        return estimate(function)

    monkeypatch.setattr(analysis, "estimate_tir_flops", failing_for_the_conv)
    draws = sampled.draw_counts(classifier_tasks)
    assert draws[_named(draws, "conv2d")] == sampled.CANDIDATES  # unknown: full draws
    # the others are weighed among the functions that have an estimate (not against an infinite
    # total): beside the mean over 8x16x16 values, the matmul is no longer small
    assert draws[_named(draws, "matmul")] == sampled.CANDIDATES
