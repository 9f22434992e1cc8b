"""Crash-safe writes: build in a temporary sibling, fsync, then ``os.replace`` into place.

A reader sees either the old content or the new, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the usual permissions under the umask.

    A model repository is often mounted read-only into a container that runs as another user.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (best effort where the platform cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        public_mode(Path(tmp))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success rename it to ``final``, else delete it.

    ``final`` must not exist yet (directories cannot be atomically replaced).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    public_mode(tmp, directory=True)
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def point_symlink(link: Path, target_name: str) -> None:
    """Atomically make ``link`` a symlink to ``target_name`` (relative, in the same directory)."""
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` that becomes ``path`` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    public_mode(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
