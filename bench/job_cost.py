"""What a short job costs: drain rate of no-op jobs through plain Dramatiq, the bare Burrow broker, and the full
node stack (local storage and an S3 endpoint), with the same `dramatiq` processes and threads, in one run.

Each configuration: the queue is filled with N no-op messages while no worker runs, then `dramatiq` workers
start and the broker's ready count is polled; the rate is the jobs taken between the 10th and the 90th per
cent of the drain over the time that took (the steady per-job cost: the workers' start-up is left out; the
whole drain's rate is printed beside it). The configurations run in interleaved rounds (this machine's speed
drifts by tens of per cent within minutes); printed are the median rates and, for each ratio, the median of
the per-round ratios, and beside each rate the CPU per job of the worker processes and of RabbitMQ over the
same part of the drain.

    python bench/job_cost.py [--jobs 3000] [--rounds 3] [--processes 2] [--threads 1] [--no-s3]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import psutil
from dramatiq import Message

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

PLAIN = """
import os, dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
broker = RabbitmqBroker(url=os.environ["AMQP_URL"])
dramatiq.set_broker(broker)
@dramatiq.actor(queue_name=os.environ["BENCH_QUEUE"])
def noop(n=0):
    pass
"""

BARE = """
import os, dramatiq
from node.broker import QuorumRabbitmqBroker
from node.middleware import Prefetch
broker = QuorumRabbitmqBroker(url=os.environ["AMQP_URL"], queue_prefix=os.environ["BURROW_QUEUE_PREFIX"],
                              middleware=[Prefetch(prefetch=int(os.environ.get("BURROW_PREFETCH", "1")))])
dramatiq.set_broker(broker)
@dramatiq.actor(queue_name=os.environ["BENCH_QUEUE"])
def noop(n=0):
    pass
"""

ACTORS = """
import os, dramatiq
@dramatiq.actor(queue_name=os.environ["BENCH_QUEUE"])
def noop(n=0):
    pass
"""


def ready(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def fill(queue: str, jobs: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    now = int(time.time() * 1000)
    logical = queue.rsplit(".", 1)[-1] if "." in queue else queue
    for n in range(jobs):
        body = Message(queue_name=logical, actor_name="noop", args=(), kwargs={"n": n}, options={},
                       message_timestamp=now).encode()  # fmt: skip
        channel.basic_publish("", queue, body)
    while ready(channel, queue) < jobs:
        time.sleep(0.05)
    connection.close()


def stop(process: subprocess.Popen) -> None:
    """Kill the workers and their children (a graceful Dramatiq shutdown can take long; nothing is left to do)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _start(argv: list[str], env: dict[str, str], workdir: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _check_running(process: subprocess.Popen, name: str, log: Path) -> None:
    """Stop the benchmark, showing why, if the workers exited (a configuration they refuse): else it would
    wait for the queue to drain forever."""
    if process.poll() is not None:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        sys.exit(f"{name}: the workers exited (code {process.returncode}); last lines of {log}:\n" + "\n".join(tail))


def measure(name: str, module_source: str, env: dict[str, str], queue: str, jobs: int, argv_extra: list[str]) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="burrow-bench-"))
    (workdir / "bench_target.py").write_text(module_source)
    env = {**os.environ, **env, "PYTHONPATH": f"{workdir}:{ROOT}", "AMQP_URL": URL}
    # Declare the queues (start the workers once, briefly), then fill while no worker runs.
    target = env.pop("BENCH_TARGET", "bench_target")
    argv = [sys.executable, "-m", "dramatiq", target, *argv_extra]
    log = workdir / "workers.log"
    warm = _start(argv, env, workdir, log)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    while True:
        try:
            channel.queue_declare(queue, passive=True)
            break
        except pika.exceptions.ChannelClosedByBroker:
            channel = connection.channel()
            _check_running(warm, name, log)
            time.sleep(0.1)
    stop(warm)
    fill(queue, jobs)
    workers = _start(argv, env, workdir, log)
    # Timed over the middle of the drain (from the 10th to the 90th percent of the jobs taken): the steady
    # per-job cost, without the workers' start-up (imports, connections, first heartbeats: tens of ms of CPU
    # and a late second process, which weigh on a drain of a few seconds) and without the last few jobs.
    first, last = jobs - jobs * WINDOW[0], jobs - jobs * WINDOW[1]
    window_start = first_taken = None
    while True:
        _check_running(workers, name, log)
        left = ready(channel, queue)
        if first_taken is None and left < jobs:
            first_taken = time.monotonic()
        if window_start is None and left <= first:
            window_start, left_at_start, cpu_before = time.monotonic(), left, _cpu(workers.pid)
        if window_start is not None and left <= last:
            elapsed, taken, cpu_after = time.monotonic() - window_start, left_at_start - left, _cpu(workers.pid)
            break
        time.sleep(0.005)
    while ready(channel, queue) > 0:
        _check_running(workers, name, log)
        time.sleep(0.005)
    whole_rate = jobs / (time.monotonic() - first_taken)
    stop(workers)
    prefix = env.get("BURROW_QUEUE_PREFIX", "")
    for suffix in ("", ".XQ", ".DQ"):
        try:
            channel.queue_delete(queue + suffix)
        except pika.exceptions.ChannelClosedByBroker:
            channel = connection.channel()
    if prefix:  # what a node declares beside its work queue (the broker is shared: leave nothing behind)
        for method, declared in (
            ("queue_delete", "burrow.nodes"),
            ("exchange_delete", "burrow.dead-letter"),
            ("exchange_delete", "burrow.cancel"),
        ):
            try:
                getattr(channel, method)(prefix + declared)
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()
    connection.close()
    rate = taken / elapsed
    worker_us, broker_us = (1e6 * (a - b) / taken for a, b in zip(cpu_after, cpu_before, strict=True))
    CPU[name].append((worker_us, broker_us))
    print(f"{name:55} {rate:8.0f} jobs/s   CPU per job: workers {worker_us:4.0f} µs, RabbitMQ {broker_us:4.0f} µs"
          f"   (whole drain, start-up included: {whole_rate:.0f} jobs/s)", flush=True)  # fmt: skip
    return rate


#: The part of each drain that is timed: from this fraction of the jobs taken to this one.
WINDOW = (0.1, 0.9)

#: CPU per job (workers, RabbitMQ) of each measurement, by configuration label.
CPU: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the worker processes under ``pid`` and of the RabbitMQ server (``beam.smp``;
    0 if it is not on this machine). The processes' CPU while the queue drains, per job, shows what a job
    costs where the drain rate alone mixes it with latency."""
    workers = 0.0
    try:
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                workers += times.user + times.system
    except psutil.Error:
        pass
    broker = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                broker += times.user + times.system
    return workers, broker


def _s3_pairs_worker(endpoint: str, count: int, results) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    began = time.perf_counter()
    for n in range(count):
        key = f"records/{os.getpid()}-{n}.json"
        try:
            client.get_object(Bucket="bench", Key=key)
        except client.exceptions.NoSuchKey:
            pass
        client.put_object(Bucket="bench", Key=key, Body=b"x" * 600, IfNoneMatch="*")
    results.put(count / (time.perf_counter() - began))


def s3_pairs(endpoint: str, processes: int, count: int = 300) -> float:
    """What the S3 endpoint alone sustains of a short job's storage traffic (its record read and its one
    conditional write) from ``processes`` processes: the ceiling of any full stack on that endpoint."""
    import multiprocessing

    results = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_s3_pairs_worker, args=(endpoint, count, results)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(results.get() for _ in workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--s3-jobs", type=int, default=600, help="jobs per S3 round (the endpoint is slow)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--short-prefetch", type=int, default=16, help="prefetch for the short-job configuration")
    parser.add_argument("--short-threads", type=int, default=2, help="threads for the short-job configuration")
    parser.add_argument("--no-s3", action="store_true", help="leave out the S3 endpoint")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated configurations to run (plain, bare, local, durable, plain_short, plain_short_p, "
        "bare_short, fast, s3): e.g. bare,local for many short paired rounds of the prefetch-1 goal",
    )
    args = parser.parse_args()
    same = ["--processes", str(args.processes), "--threads", str(args.threads)]
    short = ["--processes", str(args.processes), "--threads", str(args.short_threads)]
    print(f"{args.jobs} no-op jobs, {args.processes} processes, {args.rounds} interleaved rounds; "
          f"broker {URL.split('@')[-1]}\n")  # fmt: skip

    def node_env(storage_url: str, extra: dict[str, str] | None = None) -> Callable[[], dict[str, str]]:
        def env() -> dict[str, str]:
            state = tempfile.mkdtemp(prefix="burrow-bench-state-")
            return {"BENCH_TARGET": "node.actors", "BURROW_ACTOR_MODULES": "bench_target",
                    "BURROW_STORAGE_URL": storage_url() if callable(storage_url) else storage_url,
                    "BURROW_STATE_DIR": state, "BURROW_GPUS": "none", "BURROW_CPU_SLOTS": str(args.processes),
                    **(extra or {})}  # fmt: skip

        return env

    def local_store() -> str:
        return Path(tempfile.mkdtemp(prefix="burrow-bench-store-")).as_uri()

    short_env = {"BURROW_PREFETCH": str(args.short_prefetch)}
    p, t = args.short_prefetch, args.short_threads
    # key: (label, module source, extra environment, queue prefix, dramatiq arguments, jobs)
    configs: dict[str, tuple] = {
        "plain": (f"plain Dramatiq, classic queue ({args.threads} thread)", PLAIN, dict, "", same, args.jobs),
        "bare": ("bare Burrow broker, quorum queue, prefetch 1", BARE, dict, "benchb.", same, args.jobs),
        "local": ("full stack, local storage, prefetch 1", ACTORS, node_env(local_store), "benchl.", same, args.jobs),
        "durable": (
            "full stack, local storage ?sync=full, prefetch 1",
            ACTORS,
            node_env(lambda: local_store() + "?sync=full"),
            "benchd.",
            same,
            args.jobs,
        ),  # fmt: skip
        "plain_short": (f"plain Dramatiq, classic queue ({t} threads)", PLAIN, dict, "", short, args.jobs),
        # Not the goal's baseline (plain Dramatiq as it comes, prefetch 2 x threads), but plain Dramatiq given
        # the same prefetch as the full stack's short-job settings: what the prefetch alone is worth.
        "plain_short_p": (
            f"plain Dramatiq, classic queue ({t} threads, prefetch {p})",
            PLAIN,
            lambda: {"dramatiq_queue_prefetch": str(p)},
            "",
            short,
            args.jobs,
        ),  # fmt: skip
        "bare_short": (
            f"bare Burrow broker, prefetch {p}, {t} threads",
            BARE,
            lambda: dict(short_env),
            "benchb.",
            short,
            args.jobs,
        ),  # fmt: skip
        "fast": (
            f"full stack, local storage, prefetch {p}, {t} threads",
            ACTORS,
            node_env(local_store, short_env),
            "benchf.",
            short,
            args.jobs,
        ),  # fmt: skip
    }
    server = None
    s3_floor = None
    if not args.no_s3:
        try:
            import logging

            import boto3
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            s3_floor = s3_pairs(endpoint, args.processes)
            print(f"{'S3 endpoint alone: a GET + a conditional PUT per job':55} {s3_floor:8.0f} jobs/s", flush=True)
            configs["s3"] = ("full stack, S3 endpoint (moto on loopback), prefetch 1", ACTORS,
                             node_env("s3://bench", {"BURROW_S3_ENDPOINT_URL": endpoint}), "benchs.", same,
                             args.s3_jobs)  # fmt: skip
        except ImportError:
            print("(moto not installed: S3 configuration skipped)")
    if args.only:
        wanted = [key.strip() for key in args.only.split(",") if key.strip()]
        unknown = sorted(set(wanted) - set(configs))
        if unknown:
            sys.exit(f"--only: unknown configuration {unknown[0]!r} (known: {', '.join(configs)})")
        configs = {key: configs[key] for key in wanted}
    rates: dict[str, list[float]] = {key: [] for key in configs}
    for round_number in range(args.rounds):  # interleaved: this machine's speed drifts, both sides alike
        print(f"-- round {round_number + 1}", flush=True)
        for key, (label, source, extra, prefix, argv, jobs) in configs.items():
            name = f"bench{uuid.uuid4().hex[:8]}"
            env = {"BENCH_QUEUE": name, "BURROW_QUEUE_PREFIX": prefix, **extra()}
            rates[key].append(measure(label, source, env, prefix + name, jobs, argv))
    if server is not None:
        server.stop()
    rate = {key: statistics.median(values) for key, values in rates.items()}

    def show(text: str, a: str, b: str, goal: float | None = None) -> None:
        """One ratio: the median of the per-round ratios, their range and quartiles, and how many rounds met
        the goal (a round pairs two drains minutes apart at most: the machine's drift cancels in the pair)."""
        if a not in rates or b not in rates:
            return
        per_round = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        line = f"{text:50} {statistics.median(per_round):5.2f}x  (rounds {min(per_round):.2f}-{max(per_round):.2f}"
        if len(per_round) >= 4:
            low, _, high = statistics.quantiles(per_round, n=4)
            line += f", middle half {low:.2f}-{high:.2f}"
        line += ")"
        if goal is not None:
            met = sum(r >= goal for r in per_round)
            line += f"   goal >= {goal}: {met} of {len(per_round)} rounds"
        print(line)

    print("\nmedians (CPU per job while draining: workers, RabbitMQ):")
    for key, (label, *_rest) in configs.items():
        worker_us = statistics.median(w for w, _ in CPU[label])
        broker_us = statistics.median(b for _, b in CPU[label])
        print(f"  {label:55} {rate[key]:8.0f} jobs/s   {worker_us:5.0f} µs, {broker_us:5.0f} µs")
    print()
    show("bare Burrow broker / plain Dramatiq", "bare", "plain")
    show("full stack (local) / bare Burrow broker", "local", "bare", goal=0.8)
    show("full stack (local, sync=full) / bare broker", "durable", "bare")
    show("full stack (local) / plain Dramatiq", "local", "plain")
    if "s3" in rates and s3_floor:
        print(f"{'full stack (S3) / S3 endpoint alone':50} {statistics.median(rates['s3']) / s3_floor:5.2f}x")
    show("short-job settings: bare broker / plain Dramatiq", "bare_short", "plain_short")
    show("short-job settings: full stack / bare broker", "fast", "bare_short")
    show("short-job settings: full stack / plain Dramatiq", "fast", "plain_short", goal=0.5)
    show("short-job settings: full stack / plain, same prefetch", "fast", "plain_short_p")


if __name__ == "__main__":
    main()
