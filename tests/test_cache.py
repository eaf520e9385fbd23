"""Unit tests of pytest_tvmdeploy.build.cache with fake ``model.so`` files (no TVM involved)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import threading
import time
from pathlib import Path

import pytest

from pytest_tvmdeploy.build.cache import (
    ARTIFACT_NAME,
    META_NAME,
    ArtifactCache,
    cache_key,
    file_sha256,
    verify_file,
)
from pytest_tvmdeploy.errors import ArtifactError

PAYLOAD = b"\x7fELF fake shared library " + bytes(range(256)) * 4
KEY = cache_key({"model": "m.onnx", "target": '{"kind": "llvm"}'})


class Builder:
    """Writes a fake model.so and counts its calls."""

    def __init__(self, payload: bytes = PAYLOAD, delay: float = 0.0) -> None:
        self.payload = payload
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, folder: Path) -> dict:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        (folder / ARTIFACT_NAME).write_bytes(self.payload)
        return {"compile_seconds": 1.5, "note": "fake"}


def _not_called(folder: Path) -> dict:
    raise AssertionError("builder must not be called on a cache hit")


def _root_entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


# -- build once -------------------------------------------------------------------------------


def test_get_or_build_builds_once(tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    builder = Builder()
    first, built = cache.get_or_build(KEY, builder)
    assert built is True and builder.calls == 1
    assert first.path == tmp_path / "cache" / KEY[:2] / KEY / ARTIFACT_NAME
    assert first.path.read_bytes() == PAYLOAD
    assert first.key == KEY
    assert first.meta["compile_seconds"] == 1.5 and first.meta["note"] == "fake"

    second, built = cache.get_or_build(KEY, _not_called)
    assert built is False
    assert second.path == first.path
    assert second.sha256 == first.sha256
    assert cache.lookup(KEY) is not None


def test_meta_json_records_sha256_and_size(tmp_path):
    cache = ArtifactCache(tmp_path)
    artifact, _ = cache.get_or_build(KEY, Builder())
    meta = json.loads((artifact.path.parent / META_NAME).read_text())
    assert meta["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert meta["size"] == len(PAYLOAD)
    assert meta["key"] == KEY
    assert abs(meta["created"] - time.time()) < 60
    assert (artifact.sha256, artifact.size) == (meta["sha256"], meta["size"])
    assert file_sha256(artifact.path) == meta["sha256"]
    artifact.verify()  # intact


def test_no_temp_folders_left_after_success(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.get_or_build(KEY, Builder())
    assert _root_entries(tmp_path) == {KEY[:2], "locks"}
    assert {p.name for p in cache.entry_dir(KEY).iterdir()} == {ARTIFACT_NAME, META_NAME}


# -- verify_file --------------------------------------------------------------------------------


def test_verify_file_detects_corruption_with_same_size(tmp_path):
    path = tmp_path / ARTIFACT_NAME
    path.write_bytes(PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    verify_file(path, sha256=digest, size=len(PAYLOAD))
    damaged = bytearray(PAYLOAD)
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ArtifactError) as info:
        verify_file(path, sha256=digest, size=len(PAYLOAD))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "corrupted" in message
    assert digest[:16] in message
    assert hashlib.sha256(bytes(damaged)).hexdigest()[:16] in message


def test_verify_file_detects_truncation(tmp_path):
    path = tmp_path / ARTIFACT_NAME
    path.write_bytes(PAYLOAD[:100])
    with pytest.raises(ArtifactError) as info:
        verify_file(path, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    assert str(info.value) == (
        f"{path}: artifact is 100 bytes, recorded {len(PAYLOAD)}: truncated or replaced"
    )


def test_verify_file_detects_missing_file(tmp_path):
    path = tmp_path / "gone.so"
    with pytest.raises(ArtifactError, match="artifact missing") as info:
        verify_file(path, sha256="0" * 64, size=1)
    assert str(path) in str(info.value)


# -- damaged entries ------------------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


def _delete(path: Path) -> None:
    path.unlink()


def _bad_meta(path: Path) -> None:
    (path.parent / META_NAME).write_text("{not json")


@pytest.mark.parametrize("damage", [_corrupt, _truncate, _delete, _bad_meta])
def test_damaged_entry_is_quarantined_then_rebuilt(tmp_path, damage):
    cache = ArtifactCache(tmp_path)
    artifact, _ = cache.get_or_build(KEY, Builder())
    damage(artifact.path)
    left_behind = {p.name: p.read_bytes() for p in artifact.path.parent.iterdir()}

    with pytest.warns(UserWarning, match="is damaged") as record:
        assert cache.lookup(KEY) is None
    assert str(cache.entry_dir(KEY)) in str(record[0].message)
    assert not cache.entry_dir(KEY).exists()
    quarantined = list((tmp_path / "damaged").iterdir())
    assert len(quarantined) == 1
    assert quarantined[0].name.startswith(f"{KEY}-")
    # nothing deleted: the damaged entry is kept as it was
    assert {p.name: p.read_bytes() for p in quarantined[0].iterdir()} == left_behind

    builder = Builder()
    rebuilt, built = cache.get_or_build(KEY, builder)
    assert built is True and builder.calls == 1
    assert rebuilt.path.read_bytes() == PAYLOAD
    rebuilt.verify()
    assert cache.get_or_build(KEY, _not_called)[1] is False


def test_get_or_build_rebuilds_a_damaged_entry(tmp_path):
    cache = ArtifactCache(tmp_path)
    artifact, _ = cache.get_or_build(KEY, Builder())
    _corrupt(artifact.path)
    builder = Builder()
    with pytest.warns(UserWarning, match="corrupted"):
        again, built = cache.get_or_build(KEY, builder)
    assert built is True and builder.calls == 1
    assert again.sha256 == hashlib.sha256(PAYLOAD).hexdigest()


# -- failing builder --------------------------------------------------------------------------------


class BuildFailed(RuntimeError):
    pass


def test_failing_builder_leaves_no_half_entry(tmp_path):
    cache = ArtifactCache(tmp_path)
    seen: list[Path] = []

    def builder(folder: Path) -> dict:
        seen.append(folder)
        (folder / ARTIFACT_NAME).write_bytes(PAYLOAD[:50])  # half written
        raise BuildFailed("tvm.compile exploded")

    with pytest.raises(BuildFailed, match="tvm.compile exploded"):
        cache.get_or_build(KEY, builder)
    assert len(seen) == 1 and seen[0].parent == tmp_path
    assert not seen[0].exists()
    assert not cache.entry_dir(KEY).exists()
    assert _root_entries(tmp_path) == {"locks"}  # no key folder, no tmp-* folder
    assert cache.lookup(KEY) is None
    # and a later build works
    assert cache.get_or_build(KEY, Builder())[1] is True


def test_builder_that_writes_no_artifact_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(FileNotFoundError):
        cache.get_or_build(KEY, lambda folder: {})
    assert _root_entries(tmp_path) == {"locks"}


# -- concurrency ----------------------------------------------------------------------------------


def test_concurrent_threads_build_once(tmp_path):
    builder = Builder(delay=0.3)
    barrier = threading.Barrier(4)
    results: list = [None] * 4
    errors: list = []

    def worker(i: int) -> None:
        try:
            cache = ArtifactCache(tmp_path)  # each worker its own instance, as xdist workers
            barrier.wait()
            artifact, built = cache.get_or_build(KEY, builder)
            results[i] = (artifact.sha256, built)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert builder.calls == 1
    assert {sha for sha, _ in results} == {hashlib.sha256(PAYLOAD).hexdigest()}
    assert sorted(built for _, built in results) == [False, False, False, True]
    assert _root_entries(tmp_path) == {KEY[:2], "locks"}


def _process_worker(root: str, log: str, barrier, queue) -> None:
    def builder(folder: Path) -> dict:
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.3)
        (folder / ARTIFACT_NAME).write_bytes(PAYLOAD)
        return {}

    barrier.wait()
    artifact, built = ArtifactCache(Path(root)).get_or_build(KEY, builder)
    queue.put((artifact.sha256, built))


def test_concurrent_processes_build_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    queue = ctx.Queue()
    log = tmp_path / "calls.log"
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_process_worker, args=(str(root), str(log), barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert log.read_text().splitlines() == ["built"]
    assert {sha for sha, _ in results} == {hashlib.sha256(PAYLOAD).hexdigest()}
    assert sorted(built for _, built in results) == [False, False, False, True]


# -- cache_key -----------------------------------------------------------------------------------------

BASE = {
    "model": "sha256:abc",
    "target": '{"kind": "llvm"}',
    "inputs": [["x", [1, 3, 16, 16], "float32"]],
    "tvm": "0.27.0",
    "options": {"opt_level": 3, "fuse": True},
}


def test_cache_key_is_stable_and_independent_of_dict_order():
    key = cache_key(BASE)
    assert key == cache_key(dict(reversed(list(BASE.items()))))
    assert key == cache_key({**BASE, "options": {"fuse": True, "opt_level": 3}})
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    expected = hashlib.sha256(json.dumps(BASE, sort_keys=True).encode()).hexdigest()
    assert key == expected


@pytest.mark.parametrize(
    "change",
    [
        {"model": "sha256:abd"},
        {"target": '{"kind": "llvm", "mcpu": "znver4"}'},
        {"inputs": [["x", [1, 3, 16, 17], "float32"]]},
        {"inputs": [["x", [1, 3, 16, 16], "float16"]]},
        {"tvm": "0.27.1"},
        {"options": {"opt_level": 2, "fuse": True}},
        {"extra": None},
    ],
)
def test_cache_key_changes_when_any_part_changes(change):
    assert cache_key({**BASE, **change}) != cache_key(BASE)


def test_cache_key_distinguishes_types():
    assert cache_key({"a": 1}) != cache_key({"a": "1"})
    assert cache_key({"a": Path("m.onnx")}) == cache_key({"a": "m.onnx"})  # default=str



def test_remembered_values_are_computed_once_and_a_damaged_file_again(tmp_path):
    cache = ArtifactCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return ["123", "456"]

    assert cache.remembered("workloads", "k1", compute) == ["123", "456"]
    assert cache.remembered("workloads", "k1", compute) == ["123", "456"]
    assert len(calls) == 1
    path = tmp_path / "workloads" / "k1.json"
    path.write_text('{"key": "k1", "val')  # cut short, as by a crash of another writer
    with pytest.warns(UserWarning, match=r"k1\.json is unreadable"):
        assert cache.remembered("workloads", "k1", compute) == ["123", "456"]
    assert len(calls) == 2
    assert json.loads(path.read_text()) == {"key": "k1", "value": ["123", "456"]}
    assert cache.remembered("workloads", "k2", lambda: [7]) == [7]  # keys do not mix
