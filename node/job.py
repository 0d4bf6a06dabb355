"""The job context: what an actor uses to survive the machine it runs on.  (Public: actor authors import this,
and only this, from ``node``; a test pins the surface.)

from node.job import current_job

@dramatiq.actor(queue_name="training", checkpoint_every_s=60)
def train(seed: int, steps: int) -> None:
    job = current_job()
    state = decode(job.checkpoint.load()) or fresh(seed)   # resumes automatically after a crash
    while state.step < steps:
        state = work(state)
        job.progress(state.step / steps)
        if job.should_stop:                                # preemption (SIGTERM), timeout or fencing
            job.checkpoint.save(encode(state))
            job.hand_back()
        if job.checkpoint.due():
            job.checkpoint.save(encode(state))             # returns at once; uploads in the background
    job.artifacts.put("model.safetensors", state.weights_path)  # stored before the message is acked
    return {"loss": state.loss}                            # the job's result: ``handle.result()``, ``burrow result``

A stream job sends partial results as it goes: ``job.emit(token)``; they reach the caller in order, once each,
also when the job resumes elsewhere from a checkpoint (the chunk count is part of every checkpoint). Inputs
too big for a message travel by storage reference: ``job.inputs.get(ref)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from .attempt import running
from .contract.job_options import JobOptions
from .errors import CorruptCheckpoint, InvalidInput, Preempted

__all__ = [
    "Artifacts",
    "Checkpoint",
    "CorruptCheckpoint",
    "Inputs",
    "InvalidInput",
    "JobContext",
    "JobOptions",
    "Preempted",
    "current_job",
]


class Checkpoint(Protocol):
    """A job's checkpoints: the newest one from any attempt is what ``load`` returns."""

    def load(self) -> bytes | None:
        """The newest checkpoint saved as bytes, or ``None`` if the job has none yet (``CorruptCheckpoint``
        if it cannot be read: catch it to start over, else the job is dead-lettered naming it)."""

    def load_to(self, path: str | os.PathLike[str]) -> Path | None:
        """Restore the newest checkpoint (a file or a directory) at ``path``; ``None`` if there is none
        (``CorruptCheckpoint`` as for ``load``)."""

    def save(self, state: bytes | str | os.PathLike[str], **meta: Any) -> int:
        """Snapshot ``state`` (bytes, a file or a directory) and upload it in the background; returns at once."""

    def due(self) -> bool:
        """True when ``checkpoint_every_s`` has passed since the last save (or the attempt's start)."""

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every save so far is stored; ``False`` if ``timeout_s`` ran out."""


class Artifacts(Protocol):
    """A job's results, stored before its message is acked."""

    def put(self, name: str, data: bytes | str | os.PathLike[str]) -> str:
        """Store ``data`` (bytes or a file path) as artifact ``name``; returns its storage key."""


class Inputs(Protocol):
    """Inputs passed by storage reference (``Client.put_input`` returns the reference)."""

    def get(self, ref: str) -> bytes:
        """The bytes of input ``ref`` (``InvalidInput`` if it is not a reference or nothing is stored there:
        uncaught, the job is dead-lettered naming it)."""

    def download(self, ref: str, path: str | os.PathLike[str]) -> Path:
        """Write input ``ref`` to ``path`` (for inputs too big for memory)."""


class JobContext(Protocol):
    """One attempt of one job, as its actor sees it.

    Attributes:
        job_id: The job's stable id (the same on every attempt, on any node).
        attempt: This attempt's number (1 for the first run of the job anywhere).
        options: The job's options (type, model, priority, subcloud, counters …).
        node_id: The node running this attempt.
        slot: The GPU (or CPU) slot running it, e.g. ``gpu-0``.
        checkpoint: Save and load checkpoints.
        artifacts: Store results.
        inputs: Read inputs passed by storage reference.
        should_stop: True once the job is asked to stop (preemption, ``max_run_s``, a newer attempt, or its
            submitter cancelled it).
        stop_reason: Why: ``preempted``, ``timeout``, ``fenced`` or ``cancelled``. After ``cancelled``, raising
            anything (``hand_back()`` included) ends the job *cancelled*: never retried nor re-dispatched.

    The actor's return value (any JSON value) is the job's result.
    """

    job_id: str
    attempt: int
    options: JobOptions
    node_id: str
    slot: str
    checkpoint: Checkpoint
    artifacts: Artifacts
    inputs: Inputs
    stop_reason: str | None

    @property
    def should_stop(self) -> bool: ...

    def progress(self, fraction: float, note: str = "") -> None:
        """Report progress (0..1); it reaches the job's record every few seconds and at the end."""

    def wait_for_stop(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking early if a stop is requested."""

    def emit(self, chunk: bytes | Any) -> int:
        """Send a partial result (bytes or a JSON value) to the job's callers; returns its sequence number.
        Returns once the broker has it; chunks sent before a checkpoint are never sent again after a resume.
        A chunk is at most 1 MiB (``ValueError``; store more as an artifact) and standard JSON (no NaN)."""

    def hand_back(self) -> None:
        """Stop here (raises ``Preempted``) so the job re-runs elsewhere from its last checkpoint."""


def current_job() -> JobContext:
    """The job context of the running actor.

    Raises:
        RuntimeError: Called outside an actor run by a Burrow node.
    """
    context = running.current()
    if context is None:
        raise RuntimeError("current_job() is only available inside an actor run by a Burrow node")
    return context
