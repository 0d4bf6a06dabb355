"""Actors used by the tests: they leave traces in storage so a test can count runs and see who ran what."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import dramatiq

from node.context import node

QUEUE = "tests"


def _trace(key: str, **data: object) -> None:
    context = node()
    trace = {"pid": os.getpid(), "time": time.time(), "node": context.settings.node_id, **data}
    context.storage.put(key, json.dumps(trace).encode())


@dramatiq.actor(queue_name=QUEUE)
def tracked(job_key: str, work_s: float = 1.0) -> None:
    """Record the start (per pid), burn CPU for ``work_s`` seconds, record the result."""
    context = node()
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", slot=context.slot.id)
    deadline = time.monotonic() + work_s
    total = 0
    while time.monotonic() < deadline:
        total += sum(i * i for i in range(10_000))
    _trace(f"results/{job_key}.json", slot=context.slot.id, total=total)


@dramatiq.actor(queue_name="tests.poison", max_failures=3, min_backoff_s=0.1, max_backoff_s=0.4)
def crash_always(job_key: str, how: str = "sigkill") -> None:
    """Record the run, then die the way an OOM kill or a CUDA fault does (or ``os._exit``)."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")
    if how == "exit":
        os._exit(13)
    os.kill(os.getpid(), signal.SIGKILL)


@dramatiq.actor(queue_name=QUEUE)
def counted(job_key: str) -> None:
    """Record one execution and store a result artifact."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")
    from node.job import current_job

    current_job().artifacts.put("done.json", b"{}")


@dramatiq.actor(queue_name="tests.failing", max_failures=3, min_backoff_s=0.4, max_backoff_s=10.0)
def always_fails(job_key: str) -> None:
    """Record the run, then raise."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")
    raise RuntimeError(f"{job_key} always fails")


class _DieBeforeAck(dramatiq.Middleware):
    """Kills the worker after the job's record says *succeeded* but before the ack: a real redelivery."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if message.actor_name != "dies_before_ack" or exception is not None:
            return
        marker = f"runs/{message.kwargs['job_key']}/died-before-ack"
        if node().storage.head(marker) is None:
            node().storage.put(marker, b"")
            os.kill(os.getpid(), signal.SIGKILL)


# Dramatiq calls "after" hooks in reverse order: inserted before JobLifecycle, this runs after it.
from node.middleware import JobLifecycle  # noqa: E402

if any(isinstance(m, JobLifecycle) for m in dramatiq.get_broker().middleware):  # on nodes only
    dramatiq.get_broker().add_middleware(_DieBeforeAck(), before=JobLifecycle)


@dramatiq.actor(queue_name=QUEUE)
def dies_before_ack(job_key: str) -> None:
    """Record one execution; its process is then killed before the ack (see _DieBeforeAck)."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")


@dramatiq.actor(queue_name=QUEUE, max_run_s=1.0)
def hangs_once(job_key: str) -> None:
    """First run: stuck in "C code" (a sleep that never checks should_stop). Later runs: done at once."""
    from node.job import current_job

    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")
    marker = f"runs/{job_key}/hung"
    if node().storage.head(marker) is None:
        node().storage.put(marker, b"")
        time.sleep(600)
    current_job().artifacts.put("done.json", b"{}")


@dramatiq.actor(queue_name="training", checkpoint_every_s=0.3)
def train_until_stopped(
    seed: int, dim: int = 8, chunk: int = 200, extra_steps: int = 2_000, until_file: str = ""
) -> None:
    """Event-sized training: the first attempt trains until it is asked to stop (checkpointing every
    ``checkpoint_every_s``), then checkpoints and hands back; a resumed attempt trains ``extra_steps`` more
    from the checkpoint and stores the result, whose fingerprint a test recomputes from its step count.
    With ``until_file``, the first attempt also finishes (storing its result) once that file exists."""
    from actors.training import decode, encode, fingerprint, initial_state, train_steps
    from node.job import current_job

    job = current_job()
    saved = job.checkpoint.load()
    if saved is None:
        state, resumed_from = initial_state(seed, dim), 0
        while not (until_file and os.path.exists(until_file)):
            state = train_steps(state, chunk)
            job.progress(0.5, f"step {state['step']}")
            if job.should_stop:
                job.checkpoint.save(encode(state), step=state["step"])
                job.hand_back()
            if job.checkpoint.due():
                job.checkpoint.save(encode(state), step=state["step"])
    else:
        state = decode(saved)
        resumed_from = state["step"]
        state = train_steps(state, extra_steps)
    result = {"steps": state["step"], "fingerprint": fingerprint(state["weights"]), "resumed_from": resumed_from}
    job.artifacts.put("result.json", json.dumps(result).encode())


@dramatiq.actor(queue_name=QUEUE)
def waits_for_file(job_key: str, path: str) -> None:
    """Store the result, then return only once ``path`` exists on this machine (a test's cue)."""
    from node.job import current_job

    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")
    current_job().artifacts.put("done.json", json.dumps({"job_key": job_key}).encode())
    while not os.path.exists(path):
        time.sleep(0.05)


@dramatiq.actor(queue_name=QUEUE)
def twin(job_key: str) -> None:
    """Run as two live attempts of one job: the older one finishes only after the newer one succeeded."""
    from node.job import current_job
    from node.storage.records import RecordStore

    job = current_job()
    job.checkpoint.save(b"claimed")  # records the attempt: its number is now the job's fence
    job.checkpoint.flush(60)
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", attempt=job.attempt)
    if job.attempt == 1:
        records = RecordStore(node().storage)
        while (records.get(job.job_id) or {}).get("status") != "succeeded":
            time.sleep(0.05)
    job.artifacts.put("result.json", json.dumps({"attempt": job.attempt}).encode())


@dramatiq.actor(queue_name=QUEUE, max_run_s=0.5, max_failures=2, min_backoff_s=0.1, max_backoff_s=0.4)
def hangs_always(job_key: str) -> None:
    """Stuck in "C code" on every run: never checks should_stop, so its process is killed every time."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")
    while True:
        time.sleep(60)


@dramatiq.actor(queue_name=QUEUE, model="llama3-8b", job_type="sync")
def inference(job_key: str) -> None:
    """A short job for a model (routed by the topology): records that it ran."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}")


@dramatiq.actor(queue_name=QUEUE, max_failures=1, min_backoff_s=0.1, max_backoff_s=0.2)
def fails_on_node(job_key: str, bad_node: str = "") -> None:
    """Record the run and the node; raise on ``bad_node`` (every other node succeeds)."""
    from node.job import current_job

    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", node=node().settings.node_id)
    if node().settings.node_id == bad_node or bad_node == "*":
        raise RuntimeError(f"{job_key} always fails on {bad_node}")
    current_job().artifacts.put("done.json", b"{}")


@dramatiq.actor(queue_name=QUEUE)
def holds_slot(job_key: str, release_file: str) -> None:
    """Keep this worker busy until ``release_file`` exists (an event, not a duration)."""
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", node=node().settings.node_id)
    while not os.path.exists(release_file):
        time.sleep(0.05)


@dramatiq.actor(queue_name=QUEUE, job_type="stream", max_failures=1, min_backoff_s=0.1, max_backoff_s=0.2)
def streams_tokens(job_key: str, tokens: int, checkpoint_at: int, hold_at: int, release_file: str) -> int:
    """Emit ``t0 … t{tokens-1}``; checkpoint after ``checkpoint_at`` tokens; after ``hold_at`` tokens, wait
    until ``release_file`` exists (a test kills the node meanwhile, so chunks after the checkpoint are sent
    again by the attempt that resumes)."""
    from node.job import current_job

    job = current_job()
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", node=node().settings.node_id)
    start = int(job.checkpoint.load() or b"0")
    for index in range(start, tokens):
        job.emit(f"t{index}")
        if index + 1 == checkpoint_at:
            job.checkpoint.save(str(index + 1).encode())
            job.checkpoint.flush()
        if index + 1 == hold_at:
            _trace(f"held/{job_key}", node=node().settings.node_id)
            while not os.path.exists(release_file):
                time.sleep(0.02)
    return tokens


@dramatiq.actor(queue_name=QUEUE, job_type="polling")
def runs_until_stopped(job_key: str) -> str:
    """Record the start, then wait for ``should_stop`` (e.g. a cancel) and raise as most actors would."""
    from node.job import current_job

    job = current_job()
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", node=node().settings.node_id)
    while not job.wait_for_stop(0.05):
        job.progress(0.5, "waiting")
    raise RuntimeError(f"stopped: {job.stop_reason}")


@dramatiq.actor(queue_name=QUEUE, job_type="sync")
def echo(value: object, repeat: int = 1) -> object:
    """Return ``value`` (``repeat`` times in a list when ``repeat`` > 1): the job's result."""
    return value if repeat == 1 else [value] * repeat


@dramatiq.actor(queue_name=QUEUE, job_type="sync")
async def async_echo(value: object) -> object:
    """An ``async def`` actor: awaits, then returns ``value`` with the job id its job context gives it."""
    import asyncio

    from node.job import current_job

    await asyncio.sleep(0)
    return {"value": value, "job_id": current_job().job_id}


@dramatiq.actor(queue_name=QUEUE)
def checkpoints_once(job_key: str) -> None:
    """Store one checkpoint (waiting until it is stored), then succeed."""
    from node.job import current_job

    job = current_job()
    job.checkpoint.save(job_key.encode())
    job.checkpoint.flush()


@dramatiq.actor(queue_name=QUEUE)
def runs_long(job_key: str, steps: int, step_s: float) -> dict:
    """A long job: ``steps`` steps of ``step_s`` seconds (a GPU kernel stands in for the sleep), checkpointed
    after each; each execution is traced with the step it resumed from, and the result says so too."""
    from node.job import current_job

    job = current_job()
    saved = job.checkpoint.load()
    start = int(saved) if saved else 0
    _trace(f"runs/{job_key}/{os.getpid()}-{uuid.uuid4().hex[:6]}", resumed_from=start)
    for step in range(start, steps):
        if job.should_stop:
            job.hand_back()
        time.sleep(step_s)
        job.checkpoint.save(str(step + 1).encode(), step=step + 1)
    return {"steps": steps, "resumed_from": start}
