"""What submitting costs: a sync job's round trip, and a CSV batch against the broker's publishing floor.

1. Sync round trip: ``Client.submit(echo, job_type="sync").result()`` into one idle node (``dramatiq
   node.actors``, 1 process × 1 thread, local storage), one job at a time, ``--samples`` of them: p50 and p99
   from the caller's submit to the result in its hands. Baseline in the same run: a bare AMQP round trip
   (publish with confirm to a queue that a plain pika consumer answers on a reply queue) — what the broker
   alone costs.
2. Batch: ``burrow submit --file`` of ``--rows`` CSV rows (every row checked, manifest written, pipelined
   confirms) against the floor in the same run: the same message bodies published with aio-pika's pipelined
   confirms and nothing else; and, for reference, pika's blocking one-confirm-per-message publisher.

    python bench/submit_latency.py [--samples 300] [--rows 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aio_pika
import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud.batch import STRETCH, read_rows, submit_batch  # noqa: E402
from cloud.submit import Client  # noqa: E402
from node.contract.queues import WAIT_BUCKETS_MS  # noqa: E402
from node.settings import Settings  # noqa: E402

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_round_trips(prefix: str, samples: int) -> list[float]:
    """Publish (confirmed) → a consumer thread replies → the caller has the reply."""
    queue = prefix + "bare"
    ready = threading.Event()
    stop = threading.Event()

    def server() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        channel = connection.channel()
        channel.queue_declare(queue, arguments={"x-queue-type": "quorum"}, durable=True)
        channel.confirm_delivery()

        def on_message(ch, method, properties, body):
            ch.basic_publish("", properties.reply_to, body)
            ch.basic_ack(method.delivery_tag)

        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue, on_message)
        ready.set()
        while not stop.is_set():
            connection.process_data_events(time_limit=0.1)
        channel.queue_delete(queue)
        connection.close()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    ready.wait(30)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.confirm_delivery()
    reply = channel.queue_declare("", exclusive=True).method.queue
    got: list[bytes] = []
    channel.basic_consume(reply, lambda ch, method, properties, body: got.append(body), auto_ack=True)
    timings = []
    for n in range(samples):
        began = time.perf_counter()
        channel.basic_publish("", queue, str(n).encode(), pika.BasicProperties(reply_to=reply, delivery_mode=2))
        while str(n).encode() not in got:
            connection.process_data_events(time_limit=None)
        timings.append(time.perf_counter() - began)
    connection.close()
    stop.set()
    thread.join()
    return timings


def sync_round_trips(client: Client, samples: int) -> list[float]:
    client.submit("echo", -1, job_type="sync").result(timeout=120)  # the node is up and warm
    timings = []
    for n in range(samples):
        began = time.perf_counter()
        assert client.submit("echo", n, job_type="sync").result(timeout=60) == n
        timings.append(time.perf_counter() - began)
    return timings


def floor_rate(bodies: list[tuple[str, bytes]], pipelined: bool) -> float:
    if pipelined:

        async def run() -> None:
            connection = await aio_pika.connect(URL)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                for first in range(0, len(bodies), STRETCH):
                    await asyncio.gather(
                        *(
                            channel.default_exchange.publish(
                                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=q
                            )
                            for q, body in bodies[first : first + STRETCH]
                        )
                    )

        began = time.perf_counter()
        asyncio.run(run())
        return len(bodies) / (time.perf_counter() - began)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.confirm_delivery()
    began = time.perf_counter()
    for queue, body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    rate = len(bodies) / (time.perf_counter() - began)
    connection.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved floor/batch rounds (medians printed)")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    work = Path(tempfile.mkdtemp(prefix="burrow-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env.update(
        AMQP_URL=URL,
        BURROW_QUEUE_PREFIX=prefix,
        BURROW_STORAGE_URL=(work / "storage").as_uri(),
        BURROW_STATE_DIR=str(work / "state"),
        BURROW_ACTOR_MODULES="tests.workload",
        BURROW_GPUS="none",
        BURROW_CPU_SLOTS="1",
        BURROW_NODE_HEARTBEAT_S="0",
        PYTHONPATH=str(ROOT),
    )
    client = Client(Settings.from_env(env))
    node = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sync = sync_round_trips(client, args.samples)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait()
    bare = bare_round_trips(prefix, args.samples)
    ms = lambda v: f"{v * 1000:7.1f} ms"  # noqa: E731
    print(f"\nsync round trip, {args.samples} jobs one at a time   p50        p99")
    print(f"  bare AMQP request/reply (baseline)   {ms(percentile(bare, 0.5))} {ms(percentile(bare, 0.99))}")
    print(f"  Client.submit(sync).result()         {ms(percentile(sync, 0.5))} {ms(percentile(sync, 0.99))}")
    print(f"  ratio p50                            {statistics.median(sync) / statistics.median(bare):7.1f}x")

    sample = client.build("counted", (), {"job_key": "row-0"}, job_id="b-0000000000-2", job_type="batch").encode()
    floor_queue = prefix + "floor"
    channel = pika.BlockingConnection(pika.URLParameters(URL)).channel()
    channel.queue_declare(floor_queue, durable=True, arguments={"x-queue-type": "quorum"})
    bodies = [(floor_queue, sample)] * args.rows
    # Interleaved rounds (floor, then a batch of new rows), medians: this machine's speed drifts within a run.
    floors, batches = [], []
    for round_ in range(args.rounds):
        floors.append(floor_rate(bodies, pipelined=True))
        csv_file = work / f"jobs-{round_}.csv"
        csv_file.write_text("job_key\n" + "".join(f"row-{round_}-{n}\n" for n in range(args.rows)))
        rows, _ = read_rows(csv_file)
        began = time.perf_counter()
        batch = submit_batch(client, "counted", rows, convert=True, source=str(csv_file))
        batches.append(len(batch.jobs) / (time.perf_counter() - began))
        print(f"  round {round_ + 1}: floor {floors[-1]:6.0f}/s, batch {batches[-1]:6.0f}/s", flush=True)
    pipelined, batch_rate = statistics.median(floors), statistics.median(batches)
    blocking = floor_rate(bodies[: max(1, args.rows // 5)], pipelined=False)
    print(f"\nbatch of {args.rows} CSV rows, median of {args.rounds} rounds   jobs/s   vs floor")
    print(f"  pipelined confirms, bodies only (floor)  {pipelined:8.0f}    1.00")
    print(f"  blocking confirm per message             {blocking:8.0f}    {blocking / pipelined:4.2f}")
    print(f"  burrow submit --file (check + manifest)  {batch_rate:8.0f}    {batch_rate / pipelined:4.2f}")
    # Everything the node and the bench declared under the prefix (the broker is shared: leave nothing behind).
    work = sorted(client.broker.get_declared_queues() | {"tests", "failed-jobs"})
    names = [*work, *(f"{q}.XQ" for q in work), "floor", "bare", "burrow.chunks", "burrow.nodes"]
    names += [f"burrow.wait.{ms}ms" for ms in WAIT_BUCKETS_MS]
    for name in names:
        channel.queue_delete(prefix + name)
        channel.exchange_delete(prefix + name)
    channel.exchange_delete(prefix + "burrow.dead-letter")
    channel.exchange_delete(prefix + "burrow.cancel")
    channel.connection.close()
    client.close()


if __name__ == "__main__":
    main()
