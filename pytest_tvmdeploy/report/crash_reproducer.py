"""The reproducer folder of a TVM crash: the model file, the inputs and what was asked of TVM,
replayed by ``python -m pytest_tvmdeploy.replay <folder>`` in a child process.

Layout: ``model.pt2`` or ``model.onnx``, ``inputs/<name>.npy``, ``calibration/<i>/<name>.npy``
(when the int8 calibration ran) and ``reproducer.json`` (``"kind": "crash"``, the stage, the
signal, the target and quantization, the worker's last stderr lines). For a crash in import,
build or run, :func:`crash_prefix_lines` also looks for the smallest prefix of the graph that
crashes the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pytest_tvmdeploy.build.compile import tvm_version
from pytest_tvmdeploy.checks.localize.crash_prefix import PREFIX_FILE, opened_graph, smallest_crashing_prefix
from pytest_tvmdeploy.deployment.config import DeployConfig
from pytest_tvmdeploy.deployment.pipeline import TVM_SIDE, TvmJob
from pytest_tvmdeploy.deployment.sandbox import Sandbox
from pytest_tvmdeploy.deployment.worker import Job
from pytest_tvmdeploy.errors import SandboxError, TvmDeployError
from pytest_tvmdeploy.report.reproducer import load_arrays, publish, save_arrays, staging_folder
from pytest_tvmdeploy.report.upstream import write_upstream
from pytest_tvmdeploy.shapes import ShapeSignature
from pytest_tvmdeploy.sources.base import ModelFile

CRASH = "crash"


def write_crash_reproducer(folder: Path, *, test_id: str, error: SandboxError, job: Job) -> Path:
    """Write (or replace) the reproducer of a crashed, hung or oversized TVM job; returns ``folder``."""
    staging = staging_folder(folder)
    model, arrays, samples, settings = _contents(job)
    model_name = f"model{model.path.suffix}"
    shutil.copy2(model.path, staging / model_name)
    save_arrays(staging / "inputs", arrays)
    for index, sample in enumerate(samples or []):
        save_arrays(staging / "calibration" / str(index), sample)
    manifest = {
        "kind": CRASH, "job": job.function, "test": test_id, "model": model.description, "source_kind": model.kind,
        "model_file": model_name, "inputs": list(arrays), "calibration": [list(s) for s in samples or []],
        "stage": error.stage, "cause": error.cause, "message": str(error).splitlines()[0], "stderr": error.stderr,
        **settings,
    }
    return publish(staging, folder, manifest)


def _contents(job: Job) -> tuple[ModelFile, dict[str, Any], list[dict[str, Any]] | None, dict[str, Any]]:
    """The model file, inputs, calibration samples and the JSON settings of a job."""
    payload = job.payload
    if job.function == TVM_SIDE:
        tvm_job, config = payload["job"], payload["config"]
        settings = {"target": config.spec.as_dict, "quantize": config.quant.to_json() if config.quant else None,
                    "cc": config.cc, "shapes": tvm_job.shapes.to_json()}
        return tvm_job.source, tvm_job.arrays, tvm_job.samples, settings
    return payload["source"], payload["inputs"], None, {"target": payload["target"].as_dict,
                                                        "tolerances": payload["rules"].to_json()}


def crash_job(folder: Path, manifest: dict[str, Any], cache_dir: Path) -> Job:
    """The job a crash reproducer describes, ready for a sandbox."""
    from pytest_tvmdeploy.checks.tolerances import ToleranceRules
    from pytest_tvmdeploy.targets import parse_target

    model = ModelFile(folder / manifest["model_file"], manifest["model"], manifest["source_kind"])
    arrays = load_arrays(folder / "inputs", manifest["inputs"])
    if manifest["job"] != TVM_SIDE:
        return Job(manifest["job"], {"source": model, "inputs": arrays, "target": parse_target(manifest["target"]),
                                     "rules": ToleranceRules.from_json(manifest["tolerances"])})
    samples = [load_arrays(folder / "calibration" / str(i), names) for i, names in enumerate(manifest["calibration"])]
    config = DeployConfig(target=manifest["target"], quantize=manifest["quantize"], cc=manifest["cc"],
                          cache_dir=cache_dir)
    shapes = ShapeSignature.from_json(manifest["shapes"]) if "shapes" in manifest else ShapeSignature.of(arrays)
    return Job(TVM_SIDE, {"job": TvmJob(model, arrays, shapes, samples or None, "replay"), "config": config},
               reports_progress=True)


#: Crashes whose graph prefixes can crash the same way (quantize and tune run on the whole model).
PREFIX_STAGES = ("import", "build", "run")


def crash_prefix_lines(sandbox: Sandbox, error: SandboxError, folder: Path) -> str:
    """For a crash (a signal, not a hang or a memory limit, which each probe would meet again) in
    import, build or run: the smallest prefix of the graph that still crashes, each candidate run
    in ``sandbox``, with its upstream script in ``folder`` (lines of the failure; empty when there
    is none)."""
    job = error.job
    if job is None or job.function != TVM_SIDE or error.stage not in PREFIX_STAGES \
            or not str(error.cause).startswith("SIG"):
        return ""
    tvm_job, target = job.payload["job"], job.payload["config"].spec

    def crashes(value: str) -> bool:
        try:
            sandbox.run(Job(PREFIX_FILE, {"source": tvm_job.source, "inputs": tvm_job.arrays, "target": target,
                                          "value": value}))
        except SandboxError:
            return True
        except TvmDeployError:
            return False
        return False

    try:
        prefix = smallest_crashing_prefix(opened_graph(tvm_job.source, tvm_job.arrays), crashes)
    except Exception as exc:  # noqa: BLE001 - the crash stands without its prefix
        return f"\n  could not look for the smallest crashing prefix: {type(exc).__name__}: {exc}"
    if prefix is None:
        return "\n  no prefix of the graph crashes on its own: the crash needs the whole model"
    text = f"\n  {prefix.describe()}"
    if prefix.case is not None:
        script = write_upstream(folder, prefix.case, target.as_dict, tvm_version())
        text += f"\n  upstream reproducer of {prefix.case.op}: python {script}"
    return text
