"""A local-directory backend: the embedded default, and what tests compare S3 against."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ObjectNotFound, PreconditionFailed
from .base import ObjectInfo, Storage


class LocalStorage(Storage):
    """Objects are files under ``root``; writes are atomic (temp file + rename).

    Conditional writes hold a per-key ``flock`` around check-and-replace, so they are safe between processes
    on one machine (which is all a local directory can serve). An ETag is the file's identity from ``stat``
    (inode, modification time, size): every write replaces the file with a new inode, so it changes on every
    write, and reading it costs one system call (checkpoint uploads run beside a CPU-bound job that holds
    the GIL, where every extra I/O call costs a thread switch).

    Parameters:
        root: The directory holding the objects; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / self.check_key(key)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()
        with open(locks / name, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _etag(stat: os.stat_result) -> str:
        return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"

    def _info(self, key: str, path: Path) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(key=key, etag=self._etag(stat), size=stat.st_size)

    def _write_atomically(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        path = self._path(key)
        if if_match is None and not if_none_match:
            self._write_atomically(path, lambda h: h.write(data))
            return self._info(key, path)
        with self._locked(key):
            current = self.head(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key!r} already exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key!r} changed since etag {if_match!r} was read")
            self._write_atomically(path, lambda h: h.write(data))
            return self._info(key, path)

    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        return data, ObjectInfo(key=key, etag=self._etag(stat), size=len(data))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            stat = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.st_mode & 0o100000:  # not a regular file
            return None
        return ObjectInfo(key=key, etag=self._etag(stat), size=stat.st_size)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue  # temp files and locks
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def upload_file(self, key: str, path: str | Path) -> ObjectInfo:
        target = self._path(key)
        with open(path, "rb") as source:
            self._write_atomically(target, lambda h: shutil.copyfileobj(source, h, 1 << 20))
        return self._info(key, target)

    def download_file(self, key: str, path: str | Path) -> ObjectInfo:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        with open(source, "rb") as handle:
            self._write_atomically(Path(path), lambda h: shutil.copyfileobj(handle, h, 1 << 20))
        return self._info(key, source)
