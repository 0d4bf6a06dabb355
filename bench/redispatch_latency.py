"""How fast the network reacts: a failed job's restart on another node, and what the priority scheme costs.

1. Failure → restart: nodes A and B and a router (cooldowns 0). Jobs fail on A (giving up at once,
   ``max_failures=0``) and succeed on B; for each job that A took first, the time from its failure on A to
   its start on B, p50/p99 over ``--jobs`` such jobs. This is the router's round trip: the report, a
   registry read, the decision in the record, the committed re-dispatch, B's next poll.
2. Dispatch latency, one job at a time into an idle node, ``--samples`` each: a node serving a topology's
   three priority queues through its polling consumer, against the same node on one queue with a plain
   subscription (the baseline), in the same run.

    python bench/redispatch_latency.py [--jobs 200] [--samples 40]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dramatiq
from dramatiq import Message

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.broker import QuorumRabbitmqBroker  # noqa: E402
from node.contract.topology import load_topology  # noqa: E402
from node.middleware import JobSubmission  # noqa: E402
from node.storage.local import LocalStorage  # noqa: E402

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

ACTORS = """
import time, dramatiq
from node.context import node

@dramatiq.actor(queue_name="bench", max_failures=0)
def probe(key: str, fail_on: str = "") -> None:
    me = node().settings.node_id
    stamp = time.time()
    node().storage.put(f"bench/{key}/{stamp:.6f}-{me}", b"")
    if me == fail_on:
        raise RuntimeError("fails here")
"""

TOPOLOGY = """
job_types = ["batch"]
priorities = ["urgent", "bulk", "test"]
[subclouds.public]
models = ["any"]
"""


def starts(storage: LocalStorage, key: str) -> list[tuple[float, str]]:
    """(time, node) of each start of job ``key``, in order."""
    found = []
    for name in storage.list(f"bench/{key}/"):
        stamp, node = name.rsplit("/", 1)[1].split("-", 1)
        found.append((float(stamp), node))
    return sorted(found)


def on_b(storage: LocalStorage, key: str) -> bool:
    seen = starts(storage, key)
    return bool(seen) and seen[-1][1] == "bench-b"


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms   (n={len(values)})"


class Run:
    def __init__(self, work: Path, prefix: str) -> None:
        self.work, self.prefix, self.processes = work, prefix, []
        self.storage = LocalStorage(work / "storage")
        (work / "bench_actors.py").write_text(ACTORS)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BURROW_")},
            "AMQP_URL": URL,
            "BURROW_QUEUE_PREFIX": prefix,
            "BURROW_STORAGE_URL": (work / "storage").as_uri(),
            "BURROW_ACTOR_MODULES": "bench_actors",
            "BURROW_GPUS": "none",
            "BURROW_CPU_SLOTS": "1",
            "BURROW_NODE_HEARTBEAT_S": "1",
            "BURROW_ROUTER_COOLDOWN_S": "0",
            "BURROW_ROUTER_AVOID_DELAY_S": "0",
            "PYTHONPATH": f"{work}{os.pathsep}{ROOT}",
        }

    def start(self, module: str, **env: str) -> None:
        argv = [sys.executable, "-m", "dramatiq", module, "--processes", "1", "--threads", "1"]
        log = open(self.work / f"{module}-{len(self.processes)}.log", "wb")  # noqa: SIM115 - lives with the process
        self.processes.append(
            subprocess.Popen(argv, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        )

    def stop(self) -> None:
        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes = []


def failure_to_restart(run: Run, jobs: int) -> list[float]:
    broker = QuorumRabbitmqBroker(url=URL, queue_prefix=run.prefix)
    run.start("node.actors", BURROW_NODE_ID="bench-a", BURROW_STATE_DIR=str(run.work / "state-a"))
    run.start("node.actors", BURROW_NODE_ID="bench-b", BURROW_STATE_DIR=str(run.work / "state-b"))
    run.start("cloud.router")
    time.sleep(5)  # nodes booted and in the registry (a benchmark may wait; tests may not)
    latencies: list[float] = []
    sent = 0
    while len(latencies) < jobs:
        keys = [f"f{sent + i}" for i in range(20)]
        for key in keys:
            broker.enqueue(Message("bench", "probe", (), {"key": key, "fail_on": "bench-a"}, {}))
        sent += len(keys)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(on_b(run.storage, k) for k in keys):
            time.sleep(0.1)
        for key in keys:
            seen = starts(run.storage, key)
            failed_on_a = [t for t, node in seen if node == "bench-a"]
            b_starts = [t for t, node in seen if node == "bench-b"]
            if failed_on_a and b_starts:
                latencies.append(b_starts[0] - failed_on_a[-1])
    run.stop()
    broker.close()
    return latencies[:jobs]


def dispatch_latency(run: Run, samples: int, *, topology: Path | None) -> list[float]:
    env = {"BURROW_NODE_ID": "bench-solo", "BURROW_STATE_DIR": str(run.work / f"state-{uuid.uuid4().hex[:6]}")}
    middleware = [JobSubmission()]
    if topology is not None:
        env["BURROW_TOPOLOGY"] = str(topology)
        broker = QuorumRabbitmqBroker(
            url=URL, queue_prefix=run.prefix, middleware=middleware, topology=load_topology(topology)
        )
        for name in broker.topology.queue_names():
            broker.declare_queue(name, ensure=True)
    else:
        broker = QuorumRabbitmqBroker(url=URL, queue_prefix=run.prefix, middleware=middleware)
    dramatiq.Actor(
        lambda key, fail_on="": None, broker=broker, actor_name="probe", queue_name="bench", priority=0, options={}
    )
    run.start("node.actors", **env)
    time.sleep(5)
    latencies = []
    for n in range(samples):
        key = f"d{uuid.uuid4().hex[:8]}-{n}"
        time.sleep(1.0)  # an idle network: the polling consumer has backed off
        sent_at = time.time()
        broker.enqueue(Message("bench", "probe", (), {"key": key}, {}))
        while not starts(run.storage, key):
            time.sleep(0.005)
        latencies.append(starts(run.storage, key)[0][0] - sent_at)
    run.stop()
    broker.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = Run(work, f"bench-{uuid.uuid4().hex[:8]}.")
        topology = work / "topology.toml"
        topology.write_text(TOPOLOGY)
        try:
            restart = failure_to_restart(run, args.jobs)
            single = dispatch_latency(run, args.samples, topology=None)
            priority = dispatch_latency(run, args.samples, topology=topology)
        finally:
            run.stop()
            cleanup(run.prefix, topology)
    print(f"failure on A -> start on B (router, cooldown 0):  {percentiles(restart)}")
    print(f"send -> start, one queue, subscription (baseline):  {percentiles(single)}")
    print(f"send -> start, 3 priority queues, polling:          {percentiles(priority)}")
    print(f"priority scheme / baseline, p50: {statistics.median(priority) / statistics.median(single):.1f}x")


def cleanup(prefix: str, topology: Path) -> None:
    import pika

    from node.contract.queues import WAIT_BUCKETS_MS

    names = ["bench", "failed-jobs", "burrow.nodes", *load_topology(topology).queue_names()]
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    for name in [prefix + n for n in names] + [prefix + n + ".XQ" for n in names]:
        channel.queue_delete(name)
    for ms in WAIT_BUCKETS_MS:
        channel.queue_delete(f"{prefix}burrow.wait.{ms}ms")
        channel.exchange_delete(f"{prefix}burrow.wait.{ms}ms")
    channel.exchange_delete(prefix + "burrow.dead-letter")
    channel.exchange_delete(prefix + "burrow.cancel")
    connection.close()


if __name__ == "__main__":
    main()
