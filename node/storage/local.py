"""A local-directory backend: the embedded default, and what tests compare S3 against."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import ObjectNotFound, PreconditionFailed
from .base import ObjectInfo, Storage

_ETAG_XATTR = "user.burrow.etag"
#: Conditional writes lock one of this many stripe files (by key hash), so lock files never pile up.
LOCK_STRIPES = 64


class LocalStorage(Storage):
    """Objects are files under ``root``; every write is atomic and durable (temp file, fsync, rename, fsync
    of the directory).

    A create-if-absent links the written file in (``link`` fails if the name exists); a replace-if-unchanged
    holds an ``flock`` (one of ``LOCK_STRIPES`` stripe files) around check-and-replace. Both are safe between
    processes on one machine, which is all a local directory can serve.

    The ETag of an object is a random token stored with the file as an extended attribute, written before
    the rename: it can never repeat, unlike inode numbers and modification times (ext4 reuses inodes, and a
    coarse clock repeats mtimes). On a filesystem without user extended attributes the ETag is a hash of the
    content (S3's own rule).

    Parameters:
        root: The directory holding the objects; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._xattrs = True
        self._locks_ready = False
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / self.check_key(key)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        locks = self.root / ".locks"
        if not self._locks_ready:
            locks.mkdir(parents=True, exist_ok=True)
            self._locks_ready = True
        stripe = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest(), "big") % LOCK_STRIPES
        with open(locks / f"{stripe:02d}", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _etag_of(self, target: int | str, read: Callable[[], bytes]) -> str:
        if self._xattrs:
            try:
                return os.getxattr(target, _ETAG_XATTR).decode()
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    self._xattrs = False
                elif e.errno != errno.ENODATA:
                    raise
        return hashlib.blake2b(read(), digest_size=16).hexdigest()  # no token: a file written by other means

    def _temp_file(self, path: Path) -> tuple[int, str]:
        # Unique without mkstemp's random-name retries: pid, thread and a counter name it.
        tmp = f"{path.parent}/.{path.name}.{os.getpid()}.{threading.get_ident()}.{next(self._counter)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(tmp, flags, 0o644), tmp
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(tmp, flags, 0o644), tmp

    def _write_atomically(self, path: Path, write: Callable[[BinaryIO], None], *, create_only: bool = False) -> str:
        """Write through a temp file; replace ``path``, or with ``create_only`` link it in only if it is absent
        (an atomic create-if-absent without a lock: ``link`` fails when the name exists)."""
        fd, tmp = self._temp_file(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                etag = uuid.uuid4().hex
                if self._xattrs:
                    try:
                        os.setxattr(handle.fileno(), _ETAG_XATTR, etag.encode())
                    except OSError as e:
                        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                            raise
                        self._xattrs = False
                os.fsync(handle.fileno())
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(f"{path.relative_to(self.root).as_posix()!r} already exists") from None
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself must survive a power cut
        finally:
            os.close(directory)
        return etag if self._xattrs else self._etag_of(str(path), path.read_bytes)

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectInfo:
        path = self._path(key)
        if if_match is None:
            etag = self._write_atomically(path, lambda h: h.write(data), create_only=if_none_match)
            return ObjectInfo(key=key, etag=etag, size=len(data))
        with self._locked(key):
            current = self.head(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key!r} already exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key!r} changed since etag {if_match!r} was read")
            return ObjectInfo(key=key, etag=self._write_atomically(path, lambda h: h.write(data)), size=len(data))

    def get(self, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                etag = self._etag_of(handle.fileno(), lambda: data)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        return data, ObjectInfo(key=key, etag=etag, size=len(data))

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                etag = self._etag_of(handle.fileno(), handle.read)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return ObjectInfo(key=key, etag=etag, size=size)

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
            etag = self._write_atomically(target, lambda h: shutil.copyfileobj(source, h, 1 << 20))
        return ObjectInfo(key=key, etag=etag, size=target.stat().st_size)

    def download_file(self, key: str, path: str | Path) -> ObjectInfo:
        source = self._path(key)
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(key)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with open(source, "rb") as handle, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(handle, out, 1 << 20)
            os.replace(tmp, target)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return info
