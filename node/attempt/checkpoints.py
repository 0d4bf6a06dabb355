"""Fenced, background checkpoint uploads (``jobs/<job_id>/checkpoints/``).

``save()`` snapshots the state and returns at once; a background thread uploads it, newest wins (a save
made while an older one is still uploading replaces the older one once that finishes), and a failing or slow
store is retried with backoff, never raised into the job. Once the blob is stored, the ``latest.json``
manifest is replaced with a conditional write that first checks the manifest's attempt: an older attempt
that is still running somewhere can never replace a newer attempt's checkpoint — it is *fenced out* instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import metrics
from ..errors import CorruptCheckpoint, FencedOut, NodeError, ObjectNotFound, PreconditionFailed
from ..storage import Storage
from .gil import fast_switching

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("burrow.node")

#: How often ``load`` re-reads the manifest when the blob it names vanished (an older attempt replaced it).
LOAD_TRIES = 5


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoints/latest.json"


KINDS = ("bytes", "file", "dir")


def parse_manifest(data: bytes, job_id: str) -> dict[str, Any]:
    """Job ``job_id``'s checkpoint manifest from its stored bytes; raises ``CorruptCheckpoint`` naming what
    is wrong (a manifest names the blob to read: one outside the job's own checkpoints is never followed)."""
    key = manifest_key(job_id)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CorruptCheckpoint(key, f"is not JSON ({str(e)[:200]})", manifest=key) from None
    problem = _manifest_problem(manifest, job_id)
    if problem is not None:
        raise CorruptCheckpoint(key, f"is unusable: {problem}", manifest=key)
    return manifest


def _manifest_problem(manifest: Any, job_id: str) -> str | None:
    if not isinstance(manifest, dict):
        return f"it is a JSON {type(manifest).__name__}, not an object"
    for name in ("attempt", "seq"):
        if type(manifest.get(name)) is not int:
            return f"{name} must be an integer, got {type(manifest.get(name)).__name__}"
    if manifest.get("kind") not in KINDS:
        return f"kind {str(manifest.get('kind'))[:40]!r} is not one of {', '.join(KINDS)}"
    blob, folder = manifest.get("key"), f"jobs/{job_id}/checkpoints/"
    name = blob[len(folder) :] if isinstance(blob, str) and blob.startswith(folder) else ""
    if name in ("", ".", "..") or "/" in name:  # one object in the job's own checkpoint folder, nothing else
        return f"key must be under {folder}, got {str(blob)[:200]!r}"
    return None


@dataclass
class _Snapshot:
    seq: int
    kind: str  # "bytes", "file" or "dir"
    data: bytes | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    taken_at: float = 0.0

    def discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path.parent, ignore_errors=True)


class Checkpointer:
    """Checkpoints of one attempt of one job.

    Parameters:
        storage: Where checkpoints go.
        job_id: The job.
        attempt: This attempt's number (1, 2, …); the fence.
        on_fenced: Called (from the upload thread) when a newer attempt is found to own the job.
        claim: Called once before the first upload; returns the attempt's definitive number (an attempt that
            has not written its record yet does so then, so its fence is known to everyone).
        retry_min_s: First pause after a failed upload.
        retry_max_s: Longest pause between upload retries.
    """

    def __init__(
        self,
        storage: Storage,
        job_id: str,
        attempt: int,
        *,
        on_fenced: Callable[[], None] = lambda: None,
        claim: Callable[[], int] | None = None,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.storage = storage
        self.job_id = job_id
        self.attempt = attempt
        self.on_fenced = on_fenced
        self.claim = claim
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.fenced = False
        self.last_error: str | None = None
        self.uploaded: dict[str, Any] | None = None  # the manifest this attempt last published
        self.last_save_at: float | None = None
        self.last_save_monotonic: float | None = None
        self._seq = 0
        self._pending: _Snapshot | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # The attempt's trace context: uploads run on another thread, their spans are the attempt's children.
        self._otel_context = otel_context.get_current()

    # -- reading ------------------------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        """The job's newest checkpoint manifest (from any attempt), or ``None``."""
        try:
            data = self.storage.get(manifest_key(self.job_id))[0]
        except ObjectNotFound:
            return None
        return parse_manifest(data, self.job_id)

    def load(self) -> bytes | None:
        """The newest checkpoint saved as bytes, or ``None`` if the job has none yet."""
        for tries_left in reversed(range(LOAD_TRIES)):
            manifest = self.latest()
            if manifest is None:
                return None
            if manifest["kind"] != "bytes":
                raise NodeError(f"checkpoint of {self.job_id} is a {manifest['kind']}; use load_to(path)")
            try:
                return self.storage.get(manifest["key"])[0]
            except ObjectNotFound:
                if not tries_left:
                    raise
                # An older attempt still running published a newer blob and deleted this one: read again.
        raise AssertionError("unreachable")

    def load_to(self, path: str | os.PathLike[str]) -> Path | None:
        """Restore the newest checkpoint (file or directory) at ``path``; ``None`` if there is none."""
        for tries_left in reversed(range(LOAD_TRIES)):
            manifest = self.latest()
            if manifest is None:
                return None
            try:
                return self._restore(manifest, Path(path))
            except ObjectNotFound:
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    def _restore(self, manifest: dict[str, Any], target: Path) -> Path:
        if manifest["kind"] == "dir":
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "checkpoint.tar"
                self.storage.download_file(manifest["key"], archive)
                if target.exists():
                    shutil.rmtree(target)
                try:
                    with tarfile.open(archive) as tar:
                        tar.extractall(target, filter="data")
                except tarfile.TarError as e:  # (FilterError too: a member outside the target)
                    problem = f"is not a readable archive ({str(e)[:200]})"
                    raise CorruptCheckpoint(manifest["key"], problem, manifest=manifest_key(self.job_id)) from None
        elif manifest["kind"] == "file":
            self.storage.download_file(manifest["key"], target)
        else:
            target.write_bytes(self.storage.get(manifest["key"])[0])
        return target

    # -- saving -------------------------------------------------------------------------------------------

    def save(self, state: bytes | str | os.PathLike[str], **meta: Any) -> int:
        """Snapshot ``state`` (bytes, a file or a directory) and upload it in the background.

        Returns the checkpoint's sequence number at once; ``meta`` (JSON values) is kept in the manifest.
        Raises ``TypeError`` / ``ValueError`` at once for ``meta`` that is not standard JSON (the upload, in
        the background, would fail on every try while the job believed itself checkpointed).
        """
        try:
            json.dumps(meta, allow_nan=False)
        except TypeError as e:
            raise TypeError(f"checkpoint meta must be JSON values: {e}") from None
        except (ValueError, RecursionError) as e:
            raise ValueError(f"checkpoint meta must be standard JSON values (no NaN or infinity): {e}") from None
        self._seq += 1
        snapshot = self._snapshot(self._seq, state, meta)
        self.last_save_at = snapshot.taken_at
        self.last_save_monotonic = time.monotonic()
        with self._cond:
            if self._closed or self.fenced:
                snapshot.discard()
                return snapshot.seq
            if self._pending is not None:
                self._pending.discard()  # newest wins
            self._pending = snapshot
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"checkpoint-{self.job_id}", daemon=True)
                self._thread.start()
        return snapshot.seq

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every save so far is uploaded (or superseded); ``False`` if ``timeout_s`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout_s)

    def close(self) -> None:
        """Stop the upload thread (pending uploads are dropped: call ``flush`` first to keep them)."""
        with self._cond:
            self._closed = True
            if self._pending is not None:
                self._pending.discard()
                self._pending = None
            self._cond.notify_all()

    def _snapshot(self, seq: int, state: bytes | str | os.PathLike[str], meta: dict[str, Any]) -> _Snapshot:
        taken_at = time.time()
        if isinstance(state, bytes | bytearray | memoryview):
            return _Snapshot(seq, "bytes", data=bytes(state), meta=meta, taken_at=taken_at)
        source = Path(state)
        holder = Path(tempfile.mkdtemp(prefix="burrow-ckpt-"))
        if source.is_dir():
            archive = holder / "checkpoint.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(source, arcname=".")
            return _Snapshot(seq, "dir", path=archive, meta=meta, taken_at=taken_at)
        if source.is_file():
            copy = holder / "checkpoint.bin"
            shutil.copyfile(source, copy)
            return _Snapshot(seq, "file", path=copy, meta=meta, taken_at=taken_at)
        shutil.rmtree(holder, ignore_errors=True)
        raise NodeError(f"cannot checkpoint {state!r}: not bytes, a file or a directory")

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                snapshot, self._pending, self._busy = self._pending, None, True
            try:
                self._upload_with_retries(snapshot)
            finally:
                snapshot.discard()
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _upload_with_retries(self, snapshot: _Snapshot) -> None:
        pause = self.retry_min_s
        while True:
            try:
                with (
                    fast_switching(),
                    tracer.start_as_current_span("checkpoint upload", context=self._otel_context) as span,
                ):
                    span.set_attributes({"burrow.job.id": self.job_id, "burrow.checkpoint.seq": snapshot.seq})
                    self._upload(snapshot)
                metrics.checkpoint_duration.record(max(0.0, time.time() - snapshot.taken_at))
                metrics.checkpoint_bytes.add(self.uploaded.get("size", 0) if self.uploaded else 0)
                self.last_error = None
                return
            except FencedOut as e:
                logger.warning("Checkpoint of %s attempt %d fenced out: %s", self.job_id, self.attempt, e)
                self.fenced = True
                self.on_fenced()
                return
            except Exception as e:  # a store that is down must never crash the job
                metrics.checkpoint_failures.add(1)
                self.last_error = f"{type(e).__name__}: {e}"
                logger.warning(
                    "Checkpoint %d of %s not stored (%s); retrying in %.1fs.", snapshot.seq, self.job_id, e, pause
                )
            with self._cond:
                # A newer save supersedes this one; closing abandons it.
                if self._cond.wait_for(lambda: self._closed or self._pending is not None, pause):
                    return
            pause = min(self.retry_max_s, pause * 2)

    def _upload(self, snapshot: _Snapshot) -> None:
        if self.claim is not None:
            self.attempt = self.claim()
            self.claim = None
        try:
            current = self.latest()
        except CorruptCheckpoint as e:  # nothing valid to fence against: this save replaces it
            logger.warning("Job %s attempt %d: %s; replacing it.", self.job_id, self.attempt, e)
            current = None
        self._check_fence(current)
        suffix = ".tar" if snapshot.kind == "dir" else ""
        key = f"jobs/{self.job_id}/checkpoints/{self.attempt:05d}-{snapshot.seq:06d}{suffix}"
        if snapshot.kind == "bytes":
            size = self.storage.put(key, snapshot.data or b"").size
        else:
            assert snapshot.path is not None
            size = self.storage.upload_file(key, snapshot.path).size
        manifest = {
            "size": size,
            "attempt": self.attempt,
            "seq": snapshot.seq,
            "key": key,
            "kind": snapshot.kind,
            "taken_at": snapshot.taken_at,
            "stored_at": time.time(),
            "meta": snapshot.meta,
        }
        self._replace_manifest(manifest)
        previous, self.uploaded = self.uploaded, manifest
        if previous is not None and previous["key"] != key:
            try:
                self.storage.delete(previous["key"])  # keep only the newest blob of this attempt
            except Exception as e:
                logger.debug("Could not delete old checkpoint %s: %s", previous["key"], e)

    def _check_fence(self, current: dict[str, Any] | None) -> None:
        if current is not None and current["attempt"] > self.attempt:
            raise FencedOut(f"attempt {current['attempt']} owns the job's checkpoints; this is attempt {self.attempt}")

    def _replace_manifest(self, manifest: dict[str, Any]) -> None:
        key = manifest_key(self.job_id)
        body = json.dumps(manifest).encode()
        while True:
            try:
                data, info = self.storage.get(key)
            except ObjectNotFound:
                try:
                    self.storage.put(key, body, if_none_match=True)
                    return
                except PreconditionFailed:
                    continue
            try:
                current = parse_manifest(data, self.job_id)
            except CorruptCheckpoint:
                current = {"attempt": -1, "seq": -1}  # damaged: replaced (if nobody rewrote it meanwhile)
            self._check_fence(current)
            if current["attempt"] == self.attempt and current["seq"] > manifest["seq"]:
                return  # a newer save of this attempt is already published
            try:
                self.storage.put(key, body, if_match=info.etag)
                return
            except PreconditionFailed:
                continue  # someone wrote in between: re-read and check the fence again
