"""The job context implementation: what an actor's ``current_job()`` returns for one attempt.

The public surface (what actor authors may rely on) is ``node.job``; this module is runtime internals.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..contract.inputs import check_reference
from ..contract.job_options import JobOptions
from ..errors import InvalidInput, ObjectNotFound, Preempted, StorageError
from ..retrying import Deadline, retry
from ..storage import Storage
from .checkpoints import Checkpointer
from .stream import ChunkWriter

logger = logging.getLogger(__name__)

#: Guards building an attempt's parts and its stop flag (rare: once per attempt that uses them).
_build_lock = threading.Lock()


def artifact_key(job_id: str, attempt_id: str, name: str) -> str:
    """Where attempt ``attempt_id`` stores artifact ``name``: under the attempt, so a stale attempt can never
    overwrite what a newer one stored; the record's ``artifacts`` map (written only by the newest attempt)
    says which attempt's artifacts are the job's. Raises ``ValueError`` for a name no store can take."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_ARTIFACT_NAME:
        shown = repr(name)[:60]
        raise ValueError(f"artifact name {shown}: must be a string of 1-{MAX_ARTIFACT_NAME} characters")
    try:
        return Storage.check_key(f"jobs/{job_id}/artifacts/{attempt_id}/{name}")
    except StorageError:
        raise ValueError(
            f"artifact name {name[:60]!r}: use a relative path such as 'model.bin' or 'eval/scores.json' "
            "(no empty, '.' or '..' segment, no control character)"
        ) from None


#: Longest artifact name (S3 keys are at most 1,024 bytes; the job id and attempt id come before it).
MAX_ARTIFACT_NAME = 255


class JobCheckpoint(Checkpointer):
    """A ``Checkpointer`` that also knows the actor's checkpoint interval (``checkpoint_every_s``) and keeps a
    stream job's chunk count in each checkpoint, so a resumed attempt numbers its chunks on from there."""

    def __init__(self, *args: Any, every_s: float, started_at: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every_s = every_s
        self._started_at = time.monotonic() if started_at is None else started_at  # the attempt's start
        self.stream: ChunkWriter | None = None
        self._read_by_actor: dict[str, Any] | None = None

    def latest(self) -> dict[str, Any] | None:
        manifest = super().latest()
        if threading.current_thread() is not self._thread:  # the actor's read, not the uploader's
            self._read_by_actor = manifest
        return manifest

    def load(self) -> bytes | None:
        data = super().load()
        self._resume_stream()
        return data

    def load_to(self, path: str | os.PathLike[str]) -> Path | None:
        restored = super().load_to(path)
        self._resume_stream()
        return restored

    def save(self, state: bytes | str | os.PathLike[str], **meta: Any) -> int:
        if self.stream is not None:
            meta.setdefault("stream_seq", self.stream.next_seq)
        return super().save(state, **meta)

    def _resume_stream(self) -> None:
        manifest = self._read_by_actor
        if self.stream is not None and manifest is not None:
            seq = (manifest.get("meta") or {}).get("stream_seq")
            if isinstance(seq, int) and seq >= 0:
                self.stream.next_seq = seq

    def due(self) -> bool:
        """True when ``checkpoint_every_s`` has passed since the last save (or the attempt's start)."""
        return time.monotonic() - (self.last_save_monotonic or self._started_at) >= self.every_s


class Artifacts:
    """Results of one attempt, stored before the message is acked.

    Parameters:
        storage: Where artifacts go.
        job_id: The job.
        attempt_id: The attempt (artifacts are stored under it).
        patience_s: How long ``put`` retries a failing store before raising.
    """

    def __init__(self, storage: Storage, job_id: str, attempt_id: str, *, patience_s: float = 60.0) -> None:
        self.storage = storage
        self.job_id = job_id
        self.attempt_id = attempt_id
        self.patience_s = patience_s
        self.keys: dict[str, str] = {}

    def put(self, name: str, data: bytes | str | os.PathLike[str]) -> str:
        """Store ``data`` (bytes or a file path) as artifact ``name`` (e.g. ``result.json``); returns its key.

        Retries a failing store; raises ``StorageUnavailable`` if it stays down (the attempt is then handed
        back, an interruption rather than a failure, so nothing is acked without its results). Raises at once,
        without retrying, for a bad ``name`` (``ValueError``), ``data`` of another type (``TypeError``), or a
        path that is no file.
        """
        key = artifact_key(self.job_id, self.attempt_id, name)
        # What the actor got wrong fails at once: only the store's own failures are worth retrying.
        if isinstance(data, bytes | bytearray | memoryview):
            payload, source = bytes(data), None
        elif isinstance(data, str | os.PathLike):
            payload, source = None, Path(data)
            if source.is_dir():
                raise IsADirectoryError(
                    f"artifact {name!r}: {str(source)!r} is a directory (store a file, or an archive)"
                )
            if not source.is_file():
                hint = " (to store text, pass bytes: text.encode())" if isinstance(data, str) else ""
                raise FileNotFoundError(f"artifact {name!r}: no file {str(source)[:200]!r}{hint}")
        else:
            raise TypeError(f"artifact {name!r}: data must be bytes or a file path, got {type(data).__name__}")

        def store() -> None:
            if source is None:
                self.storage.put(key, payload)
            else:
                self.storage.upload_file(key, source)

        retry(store, deadline=Deadline(self.patience_s), what=f"Storing artifact {key}")
        self.keys[name] = key
        return key


class Inputs:
    """Job inputs passed by storage reference (``node.contract.inputs``)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def get(self, ref: str) -> bytes:
        """The bytes of stored input ``ref``.

        Raises:
            InvalidInput: ``ref`` is not an input reference, or nothing is stored under it (every node reads
                the same storage: retrying cannot help, so the job is dead-lettered naming it).
        """
        try:
            return self.storage.get(_checked(ref))[0]
        except ObjectNotFound:
            raise _missing(ref) from None

    def download(self, ref: str, path: str | os.PathLike[str]) -> Path:
        """Write stored input ``ref`` to ``path`` (raises as ``get`` does)."""
        try:
            self.storage.download_file(_checked(ref), Path(path))
        except ObjectNotFound:
            raise _missing(ref) from None
        return Path(path)


def _checked(ref: object) -> str:
    try:
        return check_reference(ref)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


def _missing(ref: str) -> InvalidInput:
    return InvalidInput(f"input {ref} is not in storage (store it with Client.put_input or `burrow put` first)")


class AttemptContext:
    """One attempt of one job, as its actor sees it (see ``node.job.JobContext`` for the contract).

    Its checkpoint, artifacts, inputs and stream are built on first use (``parts``: a callable returning
    them) — most short jobs touch none of them, and building them costs more than such a job.
    """

    def __init__(
        self,
        *,
        options: JobOptions,
        attempt: int,
        attempt_id: str,
        checkpoint: JobCheckpoint | None = None,
        artifacts: Artifacts | None = None,
        node_id: str = "",
        slot: str = "",
        stream: ChunkWriter | None = None,
        inputs: Inputs | None = None,
        parts: Callable[[AttemptContext], tuple[JobCheckpoint, Artifacts, Inputs, ChunkWriter | None]] | None = None,
    ) -> None:
        self.options = options
        self.job_id = options.job_id
        self.attempt = attempt
        self.attempt_id = attempt_id
        self._checkpoint = checkpoint
        self._artifacts = artifacts
        self._stream = stream
        self._inputs = inputs
        self._parts = parts
        self.node_id = node_id
        self.slot = slot
        self.stop_reason: str | None = None
        self.progress_value: dict[str, Any] | None = None
        self._stopped = False
        self._stop_event: threading.Event | None = None  # made by the first ``wait_for_stop``

    def _built(self) -> AttemptContext:
        """This context, with its parts built (once, on the first use of any)."""
        if self._parts is not None:
            with _build_lock:
                parts, self._parts = self._parts, None
                if parts is not None:
                    self._checkpoint, self._artifacts, self._inputs, self._stream = parts(self)
        return self

    @property
    def built(self) -> bool:
        """Whether its checkpoint, artifacts, inputs and stream exist (were used, or given)."""
        return self._parts is None

    @property
    def checkpoint(self) -> JobCheckpoint:
        return self._built()._checkpoint  # type: ignore[return-value]

    @property
    def artifacts(self) -> Artifacts:
        return self._built()._artifacts  # type: ignore[return-value]

    @property
    def inputs(self) -> Inputs | None:
        return self._built()._inputs

    @property
    def stream(self) -> ChunkWriter | None:
        return self._built()._stream

    @property
    def should_stop(self) -> bool:
        """True once the job is asked to stop: preemption, its reservation timed out, or it was fenced out."""
        return self._stopped

    def request_stop(self, reason: str) -> None:
        """Ask the actor to stop at its next check (the first reason given is kept)."""
        with _build_lock:
            if self._stopped:
                return
            self.stop_reason = reason
            self._stopped = True  # before the event is looked at: see ``wait_for_stop``
            event = self._stop_event
        logger.info("Job %s attempt %d asked to stop: %s", self.job_id, self.attempt, reason)
        if event is not None:
            event.set()

    def wait_for_stop(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking early if a stop is requested (for actors that poll)."""
        with _build_lock:
            if self._stopped:
                return True
            if self._stop_event is None:
                self._stop_event = threading.Event()
            event = self._stop_event
        return event.wait(timeout_s)

    def progress(self, fraction: float, note: str = "") -> None:
        """Report progress (0..1); written to the job record every few seconds and when the attempt ends."""
        self.progress_value = {
            "fraction": max(0.0, min(1.0, float(fraction))),
            "note": str(note)[:200],
            "at": time.time(),
        }

    def emit(self, chunk: Any) -> int:
        """Send a partial result (bytes or a JSON value) to the stream job's callers; returns its number."""
        if self.stream is None:
            raise RuntimeError(f"job {self.job_id} has no chunk stream")
        return self.stream.emit(chunk)

    def hand_back(self) -> None:
        """Stop here and let the job re-run elsewhere from its last checkpoint (save one first)."""
        raise Preempted(self.stop_reason or "handed back")
