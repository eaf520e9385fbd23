"""What the plugin itself costs: a marked test's warm (cached) re-run against the bare work it
checks, and the wall time of a cold suite serially and with ``-n 2``.

    python benchmarks/overhead.py [--models squeezenet1_1,mobilenet_v3_small,regnet_y_400mf,resnet18]

- bare work, per model, in a fresh process: build the PyTorch model, run it once (the
  reference), load the cached ``.so`` into the Relax VM and run it once; the C++ runner's one run
  as a child process is added, since the marked test runs it too;
- warm: ``pytest`` on that one marked test with the artifact cached (a fresh process too, no
  ``--tvm-report``);
- cold: the suite of all models with an empty artifact cache, serially and with ``-n 2`` under
  each of pytest-xdist's ``--dists`` (``load``, its default, hands each worker a fixed half of a
  short suite; ``worksteal`` lets an idle worker take tests another has not started). The C++
  runner is built once beforehand (its build time is reported apart) and passed to every run
  with ``--tvm-cpp-runner``, so the cold figures are the models' own work.
Each figure is the median of ``--rounds`` runs. JSON goes to benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_tvmdeploy.runners.cpp_build import SessionCppRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = '''
import pytest, torchvision

def factory(name):
    return lambda: getattr(torchvision.models, name)().eval()

@pytest.mark.parametrize("name", [
    pytest.param(name, id=name, marks=pytest.mark.tvm_model(
        model=factory(name), inputs={{"x": ((1, 3, 224, 224), "float32")}}, snapshot=False))
    for name in {models!r}
])
def test_model(name, tvm_deployment):
    pass
'''
BARE = '''
import json, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
start = time.perf_counter()
import torch, torchvision, tvm
from pytest_tvmdeploy.runners.cpp import run_cpp
name, artifact, runner = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
net = getattr(torchvision.models, name)().eval()
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
with torch.no_grad():
    net(torch.from_numpy(x))
vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(artifact), tvm.cpu())
vm["main"](tvm.runtime.tensor(x))
run_cpp(Path(runner), Path(artifact), {"x": x}, work_dir=Path(tempfile.mkdtemp()))
print(json.dumps(time.perf_counter() - start))
'''


def pytest_run(project: Path, cache: Path, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                           f"--tvm-cache-dir={cache}", *extra], cwd=project,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytest failed in {project}:\n{done.stdout[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="squeezenet1_1,mobilenet_v3_small,regnet_y_400mf,resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dists", default="load,worksteal", help="pytest-xdist --dist modes to time with -n 2")
    args = parser.parse_args()
    models = args.models.split(",")
    project = Path(tempfile.mkdtemp(prefix="tvmdeploy-overhead-"))
    (project / "test_models.py").write_text(TEST_FILE.format(models=models))
    (project / "bare.py").write_text(BARE)
    (project / "pytest.ini").write_text("[pytest]\n")
    result: dict = {"models": models, "rounds": args.rounds}
    start = time.perf_counter()
    runner = SessionCppRunner(project / "cpp-runner").executable()
    result["cpp_runner_build_s"] = time.perf_counter() - start
    print(f"C++ runner built in {result['cpp_runner_build_s']:.1f} s", flush=True)
    runner_option = f"--tvm-cpp-runner={runner}"
    dists = args.dists.split(",")
    cold_serial: list[float] = []
    cold_parallel: dict[str, list[float]] = {dist: [] for dist in dists}
    for round_ in range(args.rounds):
        cold_serial.append(pytest_run(project, project / f"cache-serial-{round_}", runner_option,
                                      "--tvm-report=report"))
        for dist in dists:
            cold_parallel[dist].append(pytest_run(project, project / f"cache-n2-{dist}-{round_}", runner_option,
                                                  "--tvm-report=report", "-n", "2", f"--dist={dist}"))
    result["cold_serial_s"] = statistics.median(cold_serial)
    for dist in dists:
        key = "" if dist == "load" else f"_{dist}"
        result[f"cold_n2{key}_s"] = statistics.median(cold_parallel[dist])
        result[f"n2{key}_speedup"] = result["cold_serial_s"] / result[f"cold_n2{key}_s"]
        print(f"cold suite of {len(models)} models: serial {result['cold_serial_s']:.1f} s, "
              f"-n 2 --dist={dist} {result[f'cold_n2{key}_s']:.1f} s, "
              f"speed-up {result[f'n2{key}_speedup']:.2f}x", flush=True)
    cache = project / f"cache-n2-{dists[-1]}-{args.rounds - 1}"  # the report is the last run's
    records = json.loads((project / "report" / "report.json").read_text())["tests"]
    result["per_model"] = []
    for name in models:
        artifact = next(Path(r["artifact"]) for r in records if f"[{name}]" in r["test"])
        warm = [pytest_run(project, cache, runner_option, "-k", name) for _ in range(args.rounds)]
        bare = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            subprocess.run([sys.executable, "bare.py", name, str(artifact), str(runner)], cwd=project, check=True,
                           capture_output=True)
            bare.append(time.perf_counter() - start)
        row = {"model": name, "warm_s": statistics.median(warm), "bare_s": statistics.median(bare)}
        row["ratio"] = row["warm_s"] / row["bare_s"]
        result["per_model"].append(row)
        print(f"{name:20s} warm marked test {row['warm_s']:.2f} s, bare work {row['bare_s']:.2f} s, "
              f"ratio {row['ratio']:.2f}x", flush=True)
    write_results("overhead.json", result)
    shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
