"""CPU per no-op job of the node's job middleware, in one process, without a broker.

Drives the hooks a worker thread runs for each message through the middleware list ``node.boot.build_broker``
gives a worker (Dramatiq's ``Callbacks``, ``Pipelines`` and ``CurrentMessage``, then ``JobSubmission``,
``Tracing``, ``JobLifecycle`` over local storage with its journal, and the node's other middleware),
dispatched as the node's broker does, for N no-op jobs, and prints the process CPU per job next to a baseline
measured in the same run: the same loop through Dramatiq's own per-message work only (decoding the body, the
message proxy, ``CurrentMessage``). The broker round trip is left out on purpose: this is the figure the node
core can cut (bench/README.md, "where the time goes"). ``--profile`` prints the top functions by own time.
``--cold`` writes 16 MB of memory between two jobs (not timed), as a worker's caches are flushed by RabbitMQ,
the kernel and its other threads while it waits for the next delivery: closer to what a job costs in a worker.

    python bench/lifecycle_cpu.py [--jobs 3000] [--profile] [--cold]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import dramatiq
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.attempt.journal import Journal  # noqa: E402
from node.boot import build_broker  # noqa: E402
from node.broker.consumer import DeliveredMessage  # noqa: E402
from node.broker.hooks import HookDispatch  # noqa: E402
from node.contract.envelope import check_fields  # noqa: E402
from node.settings import Settings  # noqa: E402
from node.storage import LocalStorage  # noqa: E402

#: Memory written between two jobs with ``--cold``: about what RabbitMQ, the kernel and the other threads
#: run through a worker's caches while it waits for its next delivery.
COLD_BYTES = 16 * 2**20


class _NodeStubBroker(HookDispatch, StubBroker):
    """A stub broker dispatching hooks as the node's broker does."""


def _broker(middleware: list, *, node: bool) -> tuple[StubBroker, dramatiq.Actor]:
    broker = (_NodeStubBroker if node else StubBroker)(middleware=middleware)
    actor = dramatiq.Actor(lambda: None, broker=broker, actor_name="noop", queue_name="q", priority=0, options={})
    broker.declare_actor(actor)
    return broker, actor


def run(jobs: int, *, full: bool, folder: Path, profiler: cProfile.Profile | None = None, cold: bool = False) -> float:
    """CPU seconds per job for ``jobs`` no-op jobs (``full``: through the node's job middleware)."""
    middleware = [CurrentMessage()]
    if full:  # the middleware list a node's worker runs, as the node builds it
        settings = Settings.from_env({"BURROW_STATE_DIR": str(folder / "state")})
        storage = LocalStorage(folder / "store")
        journal = Journal(folder / "journal", "cpu-0", "bench")
        middleware = build_broker(settings, storage=storage, slot_id="cpu-0", journal=journal).middleware
    broker, actor = _broker(middleware, node=full)
    bodies = [
        broker.enqueue(Message(queue_name="q", actor_name="noop", args=(), kwargs={}, options={})).encode()
        for _ in range(jobs)
    ]
    broker.flush_all()
    # The node's consumer checks each envelope before Dramatiq sees it (the bare broker does too): not counted.
    checked = [check_fields(Message.decode(body).asdict(), delivered_on="q") if full else None for body in bodies]
    if profiler is not None:
        profiler.enable()
    spent = 0.0
    thrash = bytearray(COLD_BYTES) if cold else None
    began = time.process_time()
    for tag, (body, job) in enumerate(zip(bodies, checked, strict=True)):
        if thrash is not None:  # what a worker's caches go through between two jobs: not counted
            thrash[tag % 64 :: 64] = bytes(len(range(tag % 64, COLD_BYTES, 64)))
            began = time.process_time()
        if full:  # as the node's consumer hands it over
            message = DeliveredMessage(False, tag, Message.decode(body), 0, {}, job)
        else:
            message = MessageProxy(Message.decode(body))
        try:
            broker.emit_before("process_message", message)
            result = actor.fn()
            broker.emit_after("process_message", message, result=result)
        except dramatiq.middleware.SkipMessage:
            broker.emit_after("skip_message", message)
        if thrash is not None:
            spent += time.process_time() - began
    if thrash is None:
        spent = time.process_time() - began
    if profiler is not None:
        profiler.disable()
    return spent / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cold", action="store_true", help="evict the caches between jobs, as a worker's are")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            profiler = cProfile.Profile()
            run(args.jobs, full=True, folder=Path(tmp) / "profile", profiler=profiler, cold=args.cold)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return
        bare, full = [], []
        for n in range(args.rounds):  # interleaved, so drift hits both alike
            bare.append(run(args.jobs, full=False, folder=Path(tmp) / f"bare-{n}", cold=args.cold))
            full.append(run(args.jobs, full=True, folder=Path(tmp) / f"full-{n}", cold=args.cold))
    bare_us, full_us = min(bare) * 1e6, min(full) * 1e6
    print(f"{args.jobs} no-op jobs, best of {args.rounds} interleaved rounds, process CPU per job:")
    print(f"  Dramatiq's own per-message work (baseline): {bare_us:7.1f} µs")
    print(f"  + node job middleware (local storage):      {full_us:7.1f} µs ({full_us / bare_us:.1f}× baseline)")
    print(f"  the node middleware's own cost:             {full_us - bare_us:7.1f} µs per job")


if __name__ == "__main__":
    main()
