"""A content-addressed store of built artifacts: ``<root>/<key[:2]>/<key>/{model.so, meta.json}``.

Entries are written into a temporary folder and renamed into place, under a file
lock per key, so concurrent pytest-xdist workers build each artifact once and never
see half of one. Every ``.so`` is checked against its recorded sha256 before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from pytest_tvmdeploy.errors import ArtifactError
from pytest_tvmdeploy.files import out_of_space, storage_error, write_atomic
from pytest_tvmdeploy.hashing import file_sha256

ARTIFACT_NAME = "model.so"
META_NAME = "meta.json"


@dataclass(frozen=True)
class Artifact:
    """A built ``.so`` with its recorded hash and build metadata."""

    path: Path
    key: str
    sha256: str
    size: int
    meta: Mapping[str, Any]

    def verify(self) -> None:
        """Raise :class:`ArtifactError` unless the file still has its recorded size and hash."""
        verify_file(self.path, sha256=self.sha256, size=self.size)


def verify_file(path: Path, *, sha256: str, size: int) -> None:
    """Check ``path`` against a recorded size and sha256 before anything loads it."""
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact missing")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ArtifactError(f"{path}: artifact is {actual_size} bytes, recorded {size}: truncated or replaced")
    actual = file_sha256(path)
    if actual != sha256:
        raise ArtifactError(f"{path}: artifact sha256 {actual[:16]}… does not match recorded {sha256[:16]}…: corrupted")



def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of everything an artifact depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ArtifactCache:
    """Build-once storage of artifacts keyed by :func:`cache_key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> Artifact | None:
        """The stored artifact for ``key`` if present and intact; a damaged entry is set aside."""
        folder = self.entry_dir(key)
        meta_path = folder / META_NAME
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            artifact = Artifact(folder / ARTIFACT_NAME, key, meta["sha256"], int(meta["size"]), meta)
            artifact.verify()
        except (ArtifactError, ValueError, KeyError) as exc:
            quarantine = self._quarantine(folder)
            warnings.warn(f"tvmdeploy cache entry {folder} is damaged ({exc}); moved to {quarantine} and rebuilding",
                          stacklevel=2)
            return None
        return artifact

    def remembered(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """A JSON value computed once per ``key`` and kept in ``<root>/<kind>/<key>.json``.

        An unreadable file is computed again and replaced; values are written atomically, so
        concurrent workers at worst compute the same value twice."""
        path = self.root / kind / f"{key}.json"
        try:
            return json.loads(path.read_text())["value"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"tvmdeploy cache file {path} is unreadable ({exc}); computing it again", stacklevel=2)
        value = compute()
        write_atomic(path, json.dumps({"key": key, "value": value}, sort_keys=True))
        return value

    def get_or_build(
        self, key: str, build: Callable[[Path], Mapping[str, Any]]
    ) -> tuple[Artifact, bool]:
        """Return ``(artifact, built)``; ``build(folder)`` writes ``model.so`` there and returns metadata."""
        found = self.lookup(key)
        if found is not None:
            return found, False
        self.root.mkdir(parents=True, exist_ok=True)
        lock_dir = self.root / "locks"
        lock_dir.mkdir(exist_ok=True)
        with FileLock(str(lock_dir / f"{key}.lock")):
            found = self.lookup(key)  # another worker may have built it while we waited
            if found is not None:
                return found, False
            self._remove_abandoned()
            final = self.entry_dir(key)
            try:
                staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(os.getpid())}{key[:12]}-", dir=self.root))
            except OSError as exc:
                raise storage_error(final, exc) from exc
            try:
                extra = dict(build(staging))
                so_path = staging / ARTIFACT_NAME
                meta = {
                    **extra,
                    "key": key,
                    "sha256": file_sha256(so_path),
                    "size": so_path.stat().st_size,
                    "created": time.time(),
                }
                write_atomic(staging / META_NAME, json.dumps(meta, indent=2, sort_keys=True, default=str))
                final.parent.mkdir(parents=True, exist_ok=True)
                if not final.exists():
                    os.replace(staging, final)
            except OSError as exc:
                if not out_of_space(exc):
                    raise
                raise storage_error(final, exc) from exc
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        artifact = self.lookup(key)
        if artifact is None:
            raise ArtifactError(f"{self.entry_dir(key)}: artifact vanished right after it was stored")
        return artifact, True

    def _remove_abandoned(self) -> None:
        """Staging folders left by processes of this host that died mid-build (a crashed or
        killed worker): never an entry, but they would pile up."""
        host = _staging_host()
        for folder in self.root.glob(f"{host}*-*"):
            pid = folder.name[len(host):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)

    def _quarantine(self, folder: Path) -> Path:
        target = self.root / "damaged" / f"{folder.name}-{int(time.time() * 1000)}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(folder, target)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
        return target


def _staging_host() -> str:
    return f"tmp-{socket.gethostname()}-"


def _staging_prefix(pid: int) -> str:
    """How the folder an entry is built in (then renamed into place) starts: host and process."""
    return f"{_staging_host()}{pid}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
