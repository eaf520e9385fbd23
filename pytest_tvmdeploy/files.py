"""Writing files so that no reader, in this process or another, ever sees half of one."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from pytest_tvmdeploy.errors import StorageError


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a unique temporary file beside ``path``, then rename it into place.

    A failed write (a full disk, no permission) raises :class:`StorageError` naming ``path`` and
    leaves whatever ``path`` held before as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would give; mkstemp makes files private
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from exc
        raise


def link_or_copy(source: Path, destination: Path) -> None:
    """Make ``destination`` a hard link to ``source`` (no second copy on disk), or a copy where
    links are impossible (another file system)."""
    import shutil

    try:
        os.link(source, destination)
    except OSError:
        try:
            shutil.copyfile(source, destination)
        except OSError as exc:
            raise storage_error(destination, exc) from exc


def out_of_space(exc: OSError) -> bool:
    """Whether ``exc`` says the disk (or the user's quota, or the file size limit) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def storage_error(path: Path, exc: OSError) -> StorageError:
    """A clear error for a failed write of ``path``: a full disk is said as such."""
    cause = "the disk is full" if out_of_space(exc) else (exc.strerror or str(exc))
    return StorageError(f"cannot write {path}: {cause} ({errno.errorcode.get(exc.errno or 0, 'error')}); "
                        f"nothing stored there before was changed")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
