"""TVM's runtime runs deployed models on all available cores, shared among pytest-xdist workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_tvmdeploy.threads import BIND_VARIABLE, VARIABLE, available_cores, configure_threads, runtime_threads

CLEAN = {name: value for name, value in os.environ.items()
         if name not in (VARIABLE, "OMP_NUM_THREADS", BIND_VARIABLE) and not name.startswith("PYTEST_XDIST")}


def test_configure_threads_defaults_to_the_cores_and_keeps_what_the_user_set() -> None:
    environ: dict[str, str] = {}
    assert configure_threads(environ=environ) == available_cores()
    assert environ == {VARIABLE: str(available_cores()), BIND_VARIABLE: "0"}
    shared: dict[str, str] = {}
    assert configure_threads(processes=available_cores() * 2, environ=shared) == 1
    users = {VARIABLE: "7", BIND_VARIABLE: "1"}
    assert configure_threads(environ=users) == 7 and users[BIND_VARIABLE] == "1"
    assert configure_threads(3, environ=users) == 3
    assert runtime_threads({"OMP_NUM_THREADS": "5"}) == 5
    assert runtime_threads({VARIABLE: "many"}) == 1  # TVM reads it with atoi
    with pytest.raises(ValueError, match="at least 1"):
        configure_threads(0, environ={})


def test_a_deployed_model_runs_on_every_core_without_pinning_the_process(tmp_path: Path, fixtures_dir: Path) -> None:
    # Without the variables TVM's runtime takes half the hardware threads on x86 (one on a
    # 2-core machine) and pins the calling thread, and every later child process, to CPU 0.
    script = f"""
import json, os, sys
sys.path.insert(0, {str(tmp_path)!r})
from models import TinyConvNet
from pytest_tvmdeploy import deploy
d = deploy(TinyConvNet(), {{"x": ((1, 3, 16, 16), "float32")}}, target="llvm", cache_dir={str(tmp_path / 'cache')!r})
import tvm
print(json.dumps([d.threads, tvm.get_global_func("runtime.NumThreads")(), sorted(os.sched_getaffinity(0))]))
"""
    (tmp_path / "models.py").write_text((fixtures_dir / "models.py").read_text())
    done = subprocess.run([sys.executable, "-c", script], env=CLEAN, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded, pool, affinity = json.loads(done.stdout.strip().splitlines()[-1])
    assert recorded == pool == available_cores()
    assert affinity == sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize(("args", "threads"), [
    ((), available_cores()),
    (("-p", "xdist", "-n", "2"), max(1, available_cores() // 2)),
    (("--tvm-threads=3",), 3),
])
def test_the_header_names_the_threads_each_pytest_process_gives_tvm(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], threads: int) -> None:
    for name in (VARIABLE, "OMP_NUM_THREADS", BIND_VARIABLE, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_env="""
import os

def test_env():
    print("WORKER THREADS", os.environ["TVM_NUM_THREADS"])
""")
    result = pytester.runpytest_subprocess(*args, "-s", "-rA")
    result.stdout.fnmatch_lines([f"*TVM runtime threads: {threads}*"])
    assert result.ret == 0
    if "-n" not in args:  # xdist workers' output is not shown with -s
        result.stdout.fnmatch_lines([f"*WORKER THREADS {threads}"])
