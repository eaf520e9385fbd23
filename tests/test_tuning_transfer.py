"""Schedules passed between tasks that share a conv and differ in their fused epilogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_tvmdeploy.targets import parse_target
from pytest_tvmdeploy.tuning import build_with_records, read_database, tune
from pytest_tvmdeploy.tuning.local_workers import local_runner
from pytest_tvmdeploy.tuning.pool_builder import PersistentPoolBuilder
from pytest_tvmdeploy.tuning.session import RUN_TIMEOUT_SECONDS, evaluator_config
from pytest_tvmdeploy.tuning.targets import tuning_target
from pytest_tvmdeploy.tuning.tasks import extract_tasks, prepare_module
from pytest_tvmdeploy.tuning.transfer import sibling_groups, transfer_schedules
from pytest_tvmdeploy.vm import relax_vm

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

SPEC = parse_target("llvm")


class Siblings(torch.nn.Module):
    """The same 3x3 conv twice: fused with bias and ReLU, then with a residual addition too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.second = torch.nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.second(torch.relu(self.first(x))) + x)


@pytest.fixture(scope="module")
def siblings() -> tuple[torch.nn.Module, np.ndarray, tvm.IRModule]:
    from tvm.relax.frontend.torch import from_exported_program

    net = Siblings().eval()
    x = np.random.default_rng(0).standard_normal((1, 16, 14, 14)).astype(np.float32)
    return net, x, from_exported_program(torch.export.export(net, (torch.from_numpy(x),)))


def test_tasks_that_compute_the_same_conv_are_siblings(siblings) -> None:
    _, _, module = siblings
    target = tuning_target(SPEC)
    tasks = extract_tasks(prepare_module(module, target), target)
    groups = sibling_groups(tasks)
    assert len(tasks) == 4  # the two fused convs and the layout changes around them
    assert [sorted(task.name for task in group) for group in groups] == [
        ["fused_conv2d_NCHWc_add_add1_relu", "fused_conv2d_NCHWc_add_relu"]]


def test_a_sibling_schedule_is_measured_stored_and_built(siblings, tmp_path: Path) -> None:
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import cpu_count

    net, x, module = siblings
    database = tmp_path / "db"
    tune(module, SPEC, database, max_trials=8)
    target = tuning_target(SPEC)
    (group,) = sibling_groups(extract_tasks(prepare_module(module, target), target))
    stored = len(read_database(database).records)
    (tmp_path / "candidates").mkdir()
    # as many workers as tune() had: the process keeps that pool, and this build shares it
    builder = PersistentPoolBuilder(folder=str(tmp_path / "candidates"), max_workers=cpu_count(logical=True))
    transfers = transfer_schedules(group, ms.database.JSONDatabase(work_dir=str(database)), target, builder,
                                   local_runner(evaluator_config(target), RUN_TIMEOUT_SECONDS),
                                   min_gain=float("-inf"))  # try every sibling, faster or not
    assert sorted((t.task, t.donor) for t in transfers) == [
        ("fused_conv2d_NCHWc_add_add1_relu", "fused_conv2d_NCHWc_add_relu"),
        ("fused_conv2d_NCHWc_add_relu", "fused_conv2d_NCHWc_add_add1_relu")]
    assert all(t.seconds is not None and 0 < t.seconds < 0.1 for t in transfers)
    files = read_database(database)
    assert len(files.records) == stored + 2
    # the transferred records alone: the package's build replays them, and the model computes the same
    built = build_with_records(module, SPEC, files.subset(files.records[-2:]))
    assert built.applied == 2
    got = relax_vm(built.executable)["main"](tvm.runtime.tensor(x))
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    np.testing.assert_allclose(got, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-4)
