"""The fault catalogue: every way a deployment can go wrong, each failing only its own test with a
message that names the cause, while the cache and the snapshots stored before stay intact.

One pytest session (serial, in a child process) runs every session fault between healthy tests
that own a cache entry and a snapshot; each case below then reads its own test's verdict. Faults
that need a process or a disk of their own (a full disk, concurrent writers, a setup module that
does not import) have their own tests at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_tvmdeploy.build.cache import META_NAME, ArtifactCache

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
pytestmark = pytest.mark.xdist_group("fault-catalogue")  # one worker runs the shared session

#: Limits of the faulty session: small, so the hang and the memory blow-up are quick to meet.
TIMEOUT, MEMORY = "20", "1.5G"


@dataclass(frozen=True)
class Fault:
    """A test of the faulty session: its marker and body, and what its failure must say."""

    name: str
    test: str                  # the decorator and body, ``{name}`` for the test's name
    says: tuple[str, ...]      # fragments the failure message must contain
    stage: str
    crash: str | None = None   # the cause a crash record names (a signal, timeout, memory-limit)
    outcome: str = "error"     # a fault TVM's side meets errors the test's setup; a recovered one passes

    def source(self) -> str:
        return textwrap.dedent(self.test).strip().replace("{name}", f"test_{self.name}") + "\n"


def marked(model: str, inputs: str, body: str = "pass", **extra: str) -> str:
    arguments = "".join(f", {key}={value}" for key, value in extra.items())
    return f"@pytest.mark.tvm_model(model={model}, inputs={inputs}{arguments})\ndef {{name}}(tvm_deployment): {body}\n"


TINY = '{"x": ((1, 3, 16, 16), "float32")}'

FAULTS = (
    # -- bad model files: told before TVM is involved, naming the file
    Fault("missing_model_file", marked('"no_such_model.onnx"', TINY),
          ("no_such_model.onnx", "model file not found"), "import"),
    Fault("corrupt_onnx", marked('"corrupt.onnx"', TINY), ("corrupt.onnx", "not a valid ONNX model"), "import"),
    Fault("empty_onnx", marked('"empty.onnx"', TINY), ("empty.onnx", "model file is empty"), "import"),
    Fault("truncated_pt2", marked('"truncated.pt2"', TINY),
          ("truncated.pt2", "not a loadable ExportedProgram"), "import"),
    Fault("onnx_bytes_in_a_pt_file", marked('"swapped.pt"', TINY),
          ("swapped.pt", "not a loadable TorchScript file"), "import"),
    Fault("unknown_file_kind", marked('"model.h5"', TINY), ("model.h5", "unknown model file type", ".onnx"), "import"),
    Fault("model_factory_raises", marked("broken_factory", TINY), ("broken_factory", "ZeroDivisionError"), "import"),
    Fault("operator_tvm_cannot_import", marked("UnsupportedOp()", TINY, cpp='"off"'),
          ("UnsupportedOp", "cannot import operator(s) special_i0e"), "import"),
    # -- bad inputs: named, with what is wrong
    Fault("input_of_the_wrong_shape", marked("seeded(TinyConvNet())", '{"x": ((1, 4, 16, 16), "float32")}'),
          ("TinyConvNet", "(1, 4, 16, 16)", "expected input[1, 4, 16, 16] to have 3 channels"), "inputs"),
    Fault("unknown_dtype", marked("seeded(TinyConvNet())", '{"x": ((1, 3, 16, 16), "float99")}'),
          ("input 'x'", "unsupported dtype 'float99'"), "inputs"),
    Fault("input_name_the_model_lacks", marked('"tiny_convnet.onnx"', '{"y": ((1, 3, 16, 16), "float32")}'),
          ("tiny_convnet.onnx", "inputs ['y'] do not match the model's inputs ['x']"), "inputs"),
    Fault("missing_input", marked("TwoInThreeOut()", '{"a": ((2, 4), "float32")}'),
          ("TwoInThreeOut", "inputs ['a'] do not match the model's inputs ['a', 'b']"), "inputs"),
    Fault("text_as_input", marked("seeded(TinyConvNet())", '{"x": "an image"}'),
          ("input 'x'", "'an image' is neither an array"), "inputs"),
    Fault("empty_value_range", marked("seeded(TinyConvNet())", '{"x": ((1, 3, 16, 16), "float32", (1.0, 0.0))}'),
          ("'x'", "empty value range"), "inputs"),
    Fault("index_out_of_range", marked("Embedding()", '{"input": np.array([0, 10**9])}'),
          ("Embedding", "index out of range"), "inputs"),
    # -- crashes in TVM, one per stage (run and build are TVM 0.27's own; the others abort on purpose)
    Fault("crash_in_import", marked("CrashInImport()", '{"crash_in_import": ((4,), "float32")}'),
          ("TVM worker crashed in stage import: killed by SIGABRT",), "import", "SIGABRT"),
    Fault("crash_in_quantize", marked("CrashInQuantize()", '{"crash_in_quantize": ((4,), "float32")}',
                                      quantize='"global_scale"'),
          ("TVM worker crashed in stage quantize: killed by SIGABRT",), "quantize", "SIGABRT"),
    Fault("crash_in_tune", marked("CrashInTune()", '{"crash_in_tune": ((4,), "float32")}', tune="1"),
          ("TVM worker crashed in stage tune: killed by SIGABRT",), "tune", "SIGABRT"),
    Fault("crash_in_build", marked("Concatenate(5000)", '{"x": ((1, 4), "float32")}', cpp='"off"'),
          ("TVM worker crashed in stage build: killed by SIGSEGV",), "build", "SIGSEGV"),
    Fault("crash_in_run", marked("FloorDivide()", '{"x": np.array([7, INT64_MIN]), "y": np.array([2, -1])}'),
          ("TVM worker crashed in stage run: killed by SIGFPE",), "run", "SIGFPE"),
    Fault("crash_in_localize", marked("CrashInLocalize()", '{"crash_in_localize": ((4,), "float32", (0.5, 1.5))}',
                                      cpp='"off"'),
          ("could not localise the divergence: TVM worker crashed in stage localize: killed by SIGABRT",),
          "compare", outcome="failed"),
    Fault("worker_killed_mid_write", marked("KillMidWrite()", '{"kill_mid_write": ((4,), "float32")}'),
          ("TVM worker crashed in stage build: killed by SIGKILL",), "build", "SIGKILL"),
    # -- limits
    Fault("hang", marked("SquareMatmul()", '{"x": ((4096, 4096), "float32")}', cpp='"off"'),
          (f"timed out in stage run after {TIMEOUT} s", "--tvm-timeout"), "run", "timeout"),
    Fault("memory_blow_up", marked("Outer()", '{"a": ((24000,), "float32"), "b": ((24000,), "float32")}',
                                   cpp='"off"', snapshot="False"),
          (MEMORY, "--tvm-memory-limit"), "run", "memory-limit"),
    # -- stored state that went bad: named, and never silently replaced
    Fault("damaged_snapshot", marked("seeded(TinyConvNet(), 3)", TINY, snapshot="True"),
          ("test_damaged_snapshot.tensors: not a readable tensor snapshot",), "compare", outcome="failed"),
    Fault("stale_snapshot", marked("seeded(TinyConvNet(), SEED)", TINY, snapshot="True"),
          ("the model changed since the snapshot was taken", "--snapshot-update"), "compare",
          outcome="failed"),
    Fault("damaged_cache_entry", marked("seeded(TinyConvNet(), 4)", '{"x": ((1, 3, 12, 12), "float32")}'),
          ("is damaged", "artifact is", "rebuilding"), "", outcome="passed"),
)

HEADER = '''
import os
import numpy as np
import pytest
import torch
from models import FloorDivide, Outer, SquareMatmul, TinyConvNet, TwoInThreeOut, UnsupportedOp, seeded

INT64_MIN = np.iinfo(np.int64).min
SEED = int(os.environ.get("CATALOGUE_SEED", "0"))


def broken_factory():
    return 1 / 0


class CrashIn(torch.nn.Module):
    """relu(x) + 1; each subclass names its input so that crashes.py crashes in a stage. No
    weights: on positive inputs the wrong build crashes.py makes for localize always differs."""

    def forward(self, x):
        return torch.relu(x) + 1


class CrashInImport(CrashIn):
    def forward(self, crash_in_import):
        return super().forward(crash_in_import)


class CrashInQuantize(CrashIn):
    def forward(self, crash_in_quantize):
        return super().forward(crash_in_quantize)


class CrashInTune(CrashIn):
    def forward(self, crash_in_tune):
        return super().forward(crash_in_tune)


class CrashInLocalize(CrashIn):
    def forward(self, crash_in_localize):
        return super().forward(crash_in_localize)


class KillMidWrite(CrashIn):
    def forward(self, kill_mid_write):
        return super().forward(kill_mid_write)


class Concatenate(torch.nn.Module):
    def __init__(self, copies):
        super().__init__()
        self.copies = copies

    def forward(self, x):
        return torch.cat([x] * self.copies)


class Embedding(torch.nn.Embedding):
    def __init__(self):
        super().__init__(10, 4)


@pytest.mark.tvm_model(model=seeded(TinyConvNet(), 1), inputs={"x": ((1, 3, 16, 16), "float32")}, snapshot=True)
def test_healthy_first(tvm_deployment): pass

'''

FOOTER = '''
@pytest.mark.tvm_model(model=seeded(TinyConvNet(), 2), inputs={"x": ((1, 3, 8, 8), "float32")}, snapshot=True)
def test_healthy_last(tvm_deployment): pass
'''

#: Files of the faulty project, beside its test file.
PROJECT_FILES = ("models.py", "faults.py", "crashes.py", "tiny_convnet.onnx", "tiny_convnet.pt2", "corrupt.onnx")
#: Tests that store a cache entry or a snapshot before the faults run.
STORING = "healthy or snapshot or cache_entry"


@dataclass
class FaultySession:
    """What the faulty session left: each test's report record and failure text, its output, and
    the stored files before and after."""

    records: dict[str, dict]
    texts: dict[str, str]
    output: str
    stored_before: dict[str, str]
    stored_after: dict[str, str]
    project: Path
    damaged_entry: str  # the cache entry broken on purpose, to be set aside and rebuilt
    damaged_library: str  # the library that entry's model.so is a hard link to: broken with it


def _run(project: Path, *args: str, seed: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CATALOGUE_SEED": str(seed), "PYTHONPATH": str(project)}
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    # plain loops: a sampled schedule runs the 4096² matmul of the hang in a second
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--tvm-cache-dir=cache",
                           "--tvm-setup=crashes", "--tvm-schedule=none", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=1500)


def _stored(project: Path) -> dict[str, str]:
    """sha256 of every stored file: cache entries, tuning databases, model files, snapshots."""
    files = [*(project / "cache").rglob("*"), *(project / "__snapshots__").rglob("*")]
    return {str(f.relative_to(project)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files
            if f.is_file() and not ({"locks", "sandbox"} & set(f.relative_to(project).parts))}


def _damage(project: Path) -> tuple[str, str]:
    """Break two stored things on purpose: a snapshot file and one artifact (its entry's folder
    and the folder of the compiled library it is a link to are returned)."""
    (project / "__snapshots__" / "test_faults" / "test_damaged_snapshot.tensors").write_text("not a snapshot\n")
    meta = next(meta for meta in (project / "cache").glob(f"*/*/{META_NAME}")
                if json.loads(meta.read_text())["inputs"] == [["x", [1, 3, 12, 12], "float32"]])
    so = meta.with_name("model.so")
    so.write_bytes(so.read_bytes()[: so.stat().st_size // 2])  # in place: the library linked to it too
    library = json.loads(meta.read_text())["library"]["key"]
    return str(meta.parent.relative_to(project)), f"cache/libraries/{library[:2]}/{library}"


def _failure_texts(junit: Path) -> dict[str, str]:
    texts = {}
    for case in ET.parse(junit).iter("testcase"):
        parts = [f"{e.get('message', '')}\n{e.text or ''}" for e in case if e.tag in ("failure", "error")]
        texts[case.get("name")] = "\n".join(parts)
    return texts


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> FaultySession:
    project = tmp_path_factory.mktemp("faulty")
    for name in PROJECT_FILES:
        shutil.copy(FIXTURES / name, project / name)
    (project / "empty.onnx").write_bytes(b"")
    (project / "truncated.pt2").write_bytes((FIXTURES / "tiny_convnet.pt2").read_bytes()[:300])
    shutil.copy(FIXTURES / "tiny_convnet.onnx", project / "swapped.pt")
    (project / "model.h5").write_bytes(b"HDF")
    (project / "pytest.ini").write_text("[pytest]\ntvm_snapshot = off\n")
    (project / "test_faults.py").write_text(HEADER + "\n\n".join(f.source() for f in FAULTS) + FOOTER)
    storing = _run(project, "-k", STORING, "--snapshot-update", seed=0)
    assert storing.returncode == 0, storing.stdout[-3000:] + storing.stderr[-3000:]
    damaged_entry, damaged_library = _damage(project)
    before = _stored(project)
    session = _run(project, "-rA", f"--tvm-timeout={TIMEOUT}", f"--tvm-memory-limit={MEMORY}",
                   "--tvm-report=out", "--junitxml=junit.xml", seed=5)
    report = json.loads((project / "out" / "report.json").read_text())
    records = {r["test"].rsplit("::", 1)[-1]: r for r in report["tests"]}
    return FaultySession(records, _failure_texts(project / "junit.xml"), session.stdout + session.stderr,
                         before, _stored(project), project, damaged_entry, damaged_library)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_the_fault_fails_only_its_test_naming_its_cause(faulty: FaultySession, fault: Fault) -> None:
    record = faulty.records[f"test_{fault.name}"]
    assert record["outcome"] == fault.outcome, record
    text = faulty.texts[f"test_{fault.name}"] if fault.outcome != "passed" else faulty.output
    for fragment in fault.says:
        assert fragment in text, f"{fragment!r} not in:\n{text[-3000:]}"
    if fault.stage:
        assert record["stage"] == fault.stage, record
    assert record.get("crash") == fault.crash, record
    _assert_stored_state_intact(faulty)


def test_the_healthy_tests_around_the_faults_pass(faulty: FaultySession) -> None:
    assert faulty.records["test_healthy_first"]["outcome"] == "passed"
    assert faulty.records["test_healthy_last"]["outcome"] == "passed"
    assert len(faulty.records) == len(FAULTS) + 2, sorted(faulty.records)


def _assert_stored_state_intact(faulty: FaultySession) -> None:
    """Every file stored before the faults is still there, byte for byte (the damaged artifact,
    set aside and rebuilt with the library it links to, is the one change), and every cache entry is whole."""
    changed = {path for path, digest in faulty.stored_before.items() if faulty.stored_after.get(path) != digest}
    assert changed <= {f"{folder}/{name}" for folder in (faulty.damaged_entry, faulty.damaged_library)
                       for name in (META_NAME, "model.so")}, changed
    assert not list((faulty.project / "cache").glob("tmp-*")), "a build folder left behind"
    cache = ArtifactCache(faulty.project / "cache")
    entries = [meta.parent.name for meta in (faulty.project / "cache").glob(f"*/*/{META_NAME}")
               if meta.parent.parent.name != "damaged"]
    assert entries and all(cache.lookup(key) is not None for key in entries)


# -- faults that need a disk, processes or a session of their own

FULL_DISK_SCRIPT = """
import json, os, sys
from pathlib import Path
from pytest_tvmdeploy import SnapshotFile, check, deploy
from pytest_tvmdeploy.build.cache import ArtifactCache
from pytest_tvmdeploy.errors import StorageError

disk, fixtures = Path(sys.argv[1]), Path(sys.argv[2])
first = deploy(fixtures / "tiny_convnet.onnx", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=disk / "cache")
snapshot = disk / "golden.tensors"
check(first, snapshot=SnapshotFile(snapshot, update=True))
stored = snapshot.read_bytes()
filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # takes the rest of the disk
try:
    while os.write(filler, bytes(4096)):
        pass
except OSError:
    os.close(filler)
errors = {}
try:
    deploy(fixtures / "tiny_convnet.pt2", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=disk / "cache")
except StorageError as exc:
    errors["cache"] = str(exc)
other = deploy(fixtures / "tiny_convnet.onnx", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=disk / "cache", seed=1)
try:
    check(other, snapshot=SnapshotFile(snapshot, update=True))
except StorageError as exc:
    errors["snapshot"] = str(exc)
print(json.dumps({
    "errors": errors,
    "snapshot_intact": snapshot.read_bytes() == stored,
    "first_entry_intact": ArtifactCache(disk / "cache").lookup(first.artifact.key) is not None,
    "entries": len(list((disk / "cache").glob("*/*/meta.json"))),
    "leftovers": sorted(p.name for p in disk.rglob("*") if p.name.startswith((".", "tmp-"))),
}))
"""


def test_a_full_disk_is_named_and_damages_nothing(tmp_path: Path) -> None:
    """On a real full disk (a 600 KB tmpfs, mounted in a mount namespace of our own), a cache
    write and a snapshot update each fail naming their path; what was stored stays whole."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    mount = f"mount -t tmpfs -o size=600k tmpfs {disk} && exec {sys.executable} {script} {disk} {FIXTURES}"
    try:
        run = subprocess.run(["unshare", "--mount", "sh", "-c", mount], capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        pytest.skip("no unshare(1) to mount a small disk")
    if "mount" in run.stderr and run.returncode != 0 and not run.stdout:
        pytest.skip(f"cannot mount a small tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"]["cache"].startswith(f"cannot write {disk}/cache/"), result
    assert "the disk is full (ENOSPC)" in result["errors"]["cache"]
    assert result["errors"]["snapshot"].startswith(f"cannot write {disk}/golden.tensors: the disk is full"), result
    assert result["snapshot_intact"] and result["first_entry_intact"] and result["entries"] == 1, result
    assert result["leftovers"] == [], result


CONCURRENT_WRITER = """
import sys
from pathlib import Path
from pytest_tvmdeploy import SnapshotFile, check, deploy

path, fixtures, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
d = deploy(fixtures / "tiny_convnet.onnx", {"x": ((1, 3, 16, 16), "float32")}, cache_dir=path.parent / "cache",
           seed=seed)
for _ in range(150):
    assert check(d, snapshot=SnapshotFile(path, update=True)).snapshot == "written"
"""


def test_two_processes_updating_one_snapshot_leave_one_whole_file(tmp_path: Path) -> None:
    """Two writers update the same snapshot 150 times each while it is read: every read sees one
    writer's whole file, never a mix or a half."""
    from pytest_tvmdeploy.checks.snapshot_file import decode, read_snapshot_file

    path = tmp_path / "shared.tensors"
    script = tmp_path / "writer.py"
    script.write_text(CONCURRENT_WRITER)
    writers = [subprocess.Popen([sys.executable, str(script), str(path), str(FIXTURES), str(seed)])
               for seed in (0, 1)]
    reads, seeds = 0, set()
    while any(w.poll() is None for w in writers) or reads == 0:
        if path.exists():
            snapshot = decode(read_snapshot_file(path), where=str(path))
            seeds.add(snapshot.metadata["input_fingerprint"])
            reads += 1
    assert [w.wait() for w in writers] == [0, 0]
    assert reads > 10 and len(seeds) == 2, (reads, seeds)  # both writers were seen, each whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "shared.tensors", "writer.py"]


def test_a_setup_module_that_fails_to_import_is_named(project: pytest.Pytester) -> None:
    project.makepyfile(broken_setup="raise RuntimeError('no licence for the custom op library')")
    project.makepyfile(test_model="""
        import pytest
        from models import TinyConvNet, seeded

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")})
        def test_model(tvm_deployment): pass
    """)
    isolated = project.runpytest_subprocess("--tvm-setup=broken_setup", "--tvm-cache-dir=cache")
    isolated.assert_outcomes(errors=1)
    isolated.stdout.fnmatch_lines(["*--tvm-setup module 'broken_setup' failed to import: RuntimeError: "
                                   "no licence for the custom op library*"])
    in_process = project.runpytest_subprocess("--tvm-setup=broken_setup", "--tvm-isolate=off")
    assert in_process.ret == pytest.ExitCode.USAGE_ERROR
    in_process.stderr.fnmatch_lines(["*--tvm-setup module 'broken_setup' failed to import*"])


def test_a_snapshot_update_on_a_full_disk_fails_its_test_naming_the_file(project: pytest.Pytester) -> None:
    project.makepyfile(test_model="""
        import pytest
        from models import TinyConvNet, seeded

        @pytest.mark.tvm_model(model=seeded(TinyConvNet()), inputs={"x": ((1, 3, 16, 16), "float32")}, cpp="off",
                               snapshot=True)
        def test_model(tvm_deployment): pass
    """)
    snapshots = project.path / "__snapshots__"
    snapshots.mkdir()
    command = (f"mount -t tmpfs -o size=8k tmpfs {snapshots} && head -c 8192 /dev/zero > {snapshots}/.filler; "
               f"exec {sys.executable} -m pytest -p no:cacheprovider --tvm-cache-dir=cache --snapshot-update")
    run = subprocess.run(["unshare", "--mount", "sh", "-c", command], cwd=project.path, capture_output=True,
                         text=True, timeout=600)
    if "mount" in run.stderr and "collected" not in run.stdout:
        pytest.skip(f"cannot mount a small tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout[-3000:]
    assert (f"snapshot: cannot write {snapshots}/test_model/test_model.tensors: the disk is full (ENOSPC); "
            "nothing stored there before was changed") in run.stdout
