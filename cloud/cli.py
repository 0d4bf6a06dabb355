"""The ``burrow`` command: run a node, submit jobs, look at queues and records, run the demo.

Errors are one line on stderr (``burrow: error: …``) with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika.exceptions
from dramatiq.errors import BrokerError

from cloud.arguments import parse_json
from node.contract.job_options import check_job_id
from node.errors import BurrowError, MalformedMessage
from node.retrying import Deadline, deadline_scope
from node.settings import Settings

#: How long a CLI command retries a publish through a broker outage before it reports the error.
PUBLISH_PATIENCE_S = 10.0

logger = logging.getLogger("burrow.cli")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="[%(asctime)s] [PID %(process)d] [%(name)s] [%(levelname)s] %(message)s",
    )
    # The CLI reports broker trouble in one line; pika's and Dramatiq's own logs would repeat it in fifty.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    logging.getLogger("dramatiq").setLevel(logging.CRITICAL if not verbose else logging.DEBUG)


class UsageError(BurrowError):
    """A command-line argument is wrong."""


def cmd_node(args: argparse.Namespace, settings: Settings) -> int:
    from node.supervisor.command import run_node

    if args.grace_s is not None:
        settings = Settings.from_env({**os.environ, "BURROW_GRACE_S": str(args.grace_s)})
    return run_node(settings, os.environ, processes=args.processes)


def _json_argument(option: str, text: str) -> object:
    """A JSON command-line value, or ``@file`` holding it (for payloads past the shell's argument limit)."""
    source = option
    if text.startswith("@"):
        path = text[1:]
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{option} {path}: {e}") from None
        source = f"{option} @{path}"
    try:
        return parse_json(text)
    except ValueError as e:
        raise UsageError(f"{source} is not JSON: {e}") from None


def _routing(args: argparse.Namespace) -> dict[str, object]:
    options = {"job_type": args.type, "model": args.model, "priority": args.priority, "subcloud": args.subcloud}
    options["ttl_s"] = args.ttl_s
    return {k: v for k, v in options.items() if v is not None}


def _telemetry(service: str) -> None:
    """Traces and metrics of this command, as the ``OTEL_*`` variables say (nothing when none is set)."""
    from observability.setup import configure

    try:
        configure(service)
    except ValueError as e:
        raise UsageError(f"telemetry: {e}") from None


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Submit one job (``--kwargs``), or one per row of a CSV/JSONL file (``--file``)."""
    kwargs = _json_argument("--kwargs", args.kwargs)
    if not isinstance(kwargs, dict):
        raise UsageError(f"--kwargs must be a JSON object of keyword arguments, got {type(kwargs).__name__}")
    positional = _json_argument("--args", args.args)
    if not isinstance(positional, list):
        raise UsageError(f"--args must be a JSON list of positional arguments, got {type(positional).__name__}")
    if args.file is not None and (args.kwargs != "{}" or args.args != "[]" or args.key or args.count != 1):
        raise UsageError("--file takes the arguments from its rows: drop --kwargs, --args, --key and --count")
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    _telemetry("burrow-submit")
    from cloud.submit import Client

    client = Client(settings)
    try:
        if args.file is not None:
            return _submit_file(client, args)
        for n in range(args.count):
            key = args.key if args.count == 1 or args.key is None else f"{args.key}#{n}"
            handle = client.submit(args.actor, *positional, idempotency_key=key, **_routing(args), **kwargs)
            print(handle.job_id, flush=True)
            if args.wait:
                _print_outcome(handle, args.timeout_s)
    finally:
        client.close()
    return 0


def _print_outcome(handle, timeout_s: float | None) -> None:
    if handle.job_type == "stream":
        for chunk in handle.stream(timeout=timeout_s):
            print(chunk if isinstance(chunk, str) else json.dumps(chunk), flush=True)
        return
    print(json.dumps(handle.result(timeout=timeout_s)))


def _submit_file(client, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cloud.batch import read_rows, submit_batch

    path = Path(args.file)
    rows, unreadable = read_rows(path)
    bar = None

    def published(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="published", unit="job", file=sys.stderr, disable=args.quiet)
        bar.update(done - bar.n)

    batch = submit_batch(
        client,
        args.actor,
        rows,
        batch_id=args.batch_id,
        skip_invalid=args.skip_invalid,
        source=str(path),
        unreadable=unreadable,
        convert=path.suffix.lower() == ".csv",
        on_published=published,
        **_routing(args),
    )
    if bar is not None:
        bar.close()
    skipped = len(rows) + len(unreadable) - len(batch.jobs)
    again = len(batch.jobs) - batch.published_now
    print(
        f"batch {batch.batch_id}: {len(batch.jobs)} job(s)"
        + (f", {skipped} bad row(s) skipped" if skipped else "")
        + (f", {again} already submitted earlier" if again else ""),
        flush=True,
    )
    if not args.wait:
        return 0
    with tqdm(total=len(batch.jobs), desc="settled", unit="job", file=sys.stderr, disable=args.quiet) as bar_done:

        def progress(counts) -> None:
            from cloud.batch import settled_count

            bar_done.update(settled_count(counts) - bar_done.n)
            bar_done.set_postfix({s: n for s, n in sorted(counts.items())}, refresh=False)

        counts = batch.wait(args.timeout_s, on_progress=progress)
    print(" ".join(f"{status} {n}" for status, n in sorted(counts.items())))
    return 0 if counts.get("succeeded", 0) == len(batch.jobs) else 1


def cmd_result(args: argparse.Namespace, settings: Settings) -> int:
    """Print a job's result (its return value), or save one of its artifacts."""
    from cloud.submit import Client, JobFailed

    client = Client(settings, broker=_no_broker(settings))
    from cloud.batch import submitted_in_batch

    handle = client.job(args.job_id)
    if handle.record() is None and submitted_in_batch(client.storage, args.job_id) is None and not args.wait_s:
        raise UsageError(f"no job {args.job_id!r} in {settings.storage_url} (no node nor submitter recorded it)")
    try:
        if args.artifact is not None:
            handle.wait(args.wait_s)
            data = handle.artifact(args.artifact)
        else:
            value = handle.result(timeout=args.wait_s)
            data = json.dumps(value, indent=2).encode() + b"\n"
    except JobFailed as e:
        print(f"burrow: {e}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"burrow: job {args.job_id} is {handle.status()}: no result yet", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"saved {len(data)} bytes to {args.output}")
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel jobs: queued ones never start; running ones stop at their next check."""
    from cloud.submit import Client

    client = Client(settings, broker=_no_broker(settings))
    for job_id in args.job_ids:
        handle = client.job(job_id)
        known = handle.record() is not None
        left = handle.cancel()
        if left == "running":
            print(f"{job_id}: stopping (it sees should_stop, reason cancelled)")
        elif not known:
            # An id no node or submitter recorded: a typo, or a job sent with actor.send() not yet started.
            print(f"{job_id}: cancelled before it was seen (no record yet): a job with this id will not start")
        else:
            print(f"{job_id}: {left}")
    return 0


def cmd_put(args: argparse.Namespace, settings: Settings) -> int:
    """Store an input file; print the reference to pass as an argument (``current_job().inputs.get(ref)``)."""
    from cloud.submit import Client

    path = Path(args.file)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory (store one file at a time)")
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file (store a file; for a stream, save it to a file first)")
    print(Client(settings, broker=_no_broker(settings)).put_input(path))
    return 0


def _no_broker(settings: Settings):
    """A broker object that never connects (commands that only read and write storage)."""
    from cloud.client import connect

    return connect(settings, check=False)


def cmd_queues(args: argparse.Namespace, settings: Settings) -> int:
    """Ready, running, serving slots, subscribers and dead letters per work queue, and ``failed-jobs``."""
    from cloud.client import connect
    from cloud.operate import queue_rows, work_queue_names
    from cloud.registry import NodeRegistry
    from node.contract.queues import FAILED_JOBS_QUEUE

    broker = connect(settings)
    try:
        names = work_queue_names(broker)
        views = NodeRegistry(broker.parameters, settings.queue_prefix, window_s=600).nodes()
        rows = queue_rows(broker, views, [*names, FAILED_JOBS_QUEUE])
    finally:
        broker.close()
    shown = lambda v: "MISSING" if v is None else v  # noqa: E731
    print(f"{'queue':44} {'ready':>8} {'running':>8} {'slots':>6} {'subscr':>6} {'dead':>8}")
    for row in rows:
        print(
            f"{row['queue']:44} {shown(row['ready']):>8} {row['running']:>8} {row['slots']:>6} "
            f"{'' if row['subscribers'] is None else row['subscribers']:>6} {shown(row['dead']):>8}"
        )
    return 0


def cmd_topology(args: argparse.Namespace, settings: Settings) -> int:
    from cloud import topology as topology_ops
    from cloud.client import connect
    from node.contract.topology import load_topology
    from node.errors import ConfigError

    path = args.file or settings.topology
    if path is None:
        raise ConfigError("BURROW_TOPOLOGY", "no topology file: pass one or set BURROW_TOPOLOGY")
    topology = load_topology(path)
    broker = connect(settings)
    if args.action == "apply":
        names = topology_ops.apply(broker, topology)
        print(f"{len(names)} queue(s) of {path} declared.")
        if args.users:
            from cloud.access import ManagementApi, apply_users, vhost_of

            management = os.environ.get("BURROW_RABBITMQ_MANAGEMENT_URL", "")
            if not management:
                broker.close()
                raise ConfigError(
                    "BURROW_RABBITMQ_MANAGEMENT_URL", "needed by --users (http://admin:password@host:15672)"
                )
            users = apply_users(
                ManagementApi(management), topology, prefix=settings.queue_prefix, vhost=vhost_of(settings.amqp_url)
            )
            for user in users:
                if user.password is not None:
                    print(
                        f"user {user.user} created for subcloud {user.subcloud}; password (shown once): {user.password}"
                    )
                else:
                    print(f"user {user.user} (subcloud {user.subcloud}): permissions set")
    else:
        print(f"{'queue':50} {'on broker':>10} {'ready':>8}")
        for state in topology_ops.show(broker, topology):
            on_broker = "yes" if state.ready is not None else "MISSING"
            print(f"{broker.physical(state.name):50} {on_broker:>10} {'' if state.ready is None else state.ready:>8}")
    broker.close()
    return 0


def cmd_router(args: argparse.Namespace, settings: Settings) -> int:
    """Run the router (``dramatiq cloud.router``) until SIGTERM/SIGINT."""
    from cloud.routing.config import router_config
    from cloud.routing.policy import load_policy

    config, policy = router_config(os.environ)
    load_policy(policy, config)  # a bad setting is one line here, not a worker's log
    argv = [sys.executable, "-m", "dramatiq", "cloud.router", "--processes", str(args.processes)]
    argv += ["--threads", str(args.threads)]
    process = subprocess.Popen(argv)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        return process.wait()


def cmd_nodes(args: argparse.Namespace, settings: Settings) -> int:
    """List the nodes heard from in the last hour: live, draining, stopped or silent."""
    from cloud.client import connect
    from cloud.registry import NodeRegistry
    from node.contract.registry import describe, describe_offset

    broker = connect(settings)
    views = NodeRegistry(broker.parameters, settings.queue_prefix, window_s=args.window_s).nodes()
    broker.close()
    now = time.time()
    print(f"{'node':24} {'state':9} {'subcloud':12} {'models':20} {'slots':12} {'seen':>9} {'version':8} running")
    for view in sorted(views.values(), key=lambda v: (not v.live, v.node)):
        row = describe(view, now)
        print(
            f"{row['node']:24} {row['state']:9} {row['subcloud']:12} {row['models']:20} {row['slots']:12} "
            f"{row['seen']:>9} {row['version']:8} {row['running']}"
        )
    if not views:
        print("(no node heard from)")
    for view in sorted(views.values(), key=lambda v: v.node):
        if view.hosts > 1:
            print(
                f"warning: {view.hosts} machines heartbeat as node {view.node!r}: give each its own "
                "BURROW_NODE_ID (the router cannot send a job away from one of them without avoiding all)"
            )
        if view.storage_failing:
            print(f"warning: node {view.node!r} takes no jobs: its storage fails (see its log)")
        if view.clock_offset_s:
            print(
                f"warning: node {view.node!r}: its clock is {describe_offset(view.clock_offset_s)} its storage's "
                "(corrected for; set it right: NTP)"
            )
    return 0


def cmd_top(args: argparse.Namespace, settings: Settings) -> int:
    from cloud.top import run

    return run(settings, interval_s=args.interval, frames=args.frames)


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from node.contract.signing import new_key_pair

    private, public = new_key_pair(args.key_id)
    print("# Submitters and the router only (a secret):")
    print(f"BURROW_SIGNING_KEY={private}")
    print("# Nodes (comma-separated: add the new key's entry before signing with it, to rotate):")
    print(f"BURROW_TRUSTED_KEYS={public}")
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from node.supervisor.health import check

    healthy, why = check(settings.state_dir)
    print(why)
    return 0 if healthy else 1


def cmd_autoscale(args: argparse.Namespace, settings: Settings) -> int:
    from cloud.autoscale.config import load_config
    from cloud.autoscale.run import run
    from node.errors import ConfigError

    path = args.config or os.environ.get("BURROW_AUTOSCALE_CONFIG")
    if not path:
        raise ConfigError("BURROW_AUTOSCALE_CONFIG", "no autoscaler file: pass --config FILE or set the variable")
    return run(settings, load_config(path), once=args.once, interval_s=args.interval, state_file=args.state)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error (``--help`` shows the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"burrow: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _job_id(text: str) -> str:
    """A job id argument: one a job can have (a storage key segment), else a usage error saying why."""
    try:
        return check_job_id(text)
    except MalformedMessage as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"{e.field}: ")) from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _positive(text: str) -> float:
    """A number of seconds above 0 (argparse type)."""
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _not_negative(text: str) -> float:
    """A number of seconds of 0 or more (argparse type)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _count(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def cmd_quarantine(args: argparse.Namespace, settings: Settings) -> int:
    from cloud import operate

    return operate.quarantine(args, settings)


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from cloud import operate

    return operate.dlq(args, settings)


def _number(value: object) -> bool:
    return type(value) in (int, float)


def cmd_job(args: argparse.Namespace, settings: Settings) -> int:
    """Print a job's record: status, every attempt, checkpoint and artifact pointers."""
    from node.storage import storage_from_settings
    from node.storage.records import RecordStore

    storage = storage_from_settings(settings)
    record = RecordStore(storage).get(args.job_id)
    if record is None:
        from cloud.batch import submitted_in_batch

        batch_id = submitted_in_batch(storage, args.job_id)
        if batch_id is not None:
            print(f"job {args.job_id}  status queued  (batch {batch_id}; no node has started it yet)")
            return 0
        print(
            f"burrow: no record for job {args.job_id!r} in {settings.storage_url} (an unknown id, or a job sent "
            "with actor.send() that no node has started yet)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"job {args.job_id}  actor {record.get('actor')}  queue {record.get('queue')}  status {record.get('status')}")
    if record.get("reason"):
        print(f"reason   {record['reason']}")
    if record.get("cancel") and record["status"] == "running":
        print("cancel   requested: it stops at its next check")
    if record.get("result") is not None:
        print("result   " + ("artifact result.json" if "artifact" in record["result"] else "kept (burrow result ID)"))
    progress = record.get("progress") or {}
    if progress:
        fraction = progress.get("fraction")
        shown = f"{fraction:.1%}" if _number(fraction) else "?"
        print(f"progress {shown} {progress.get('note', '')}")
    for attempt in record["attempts"]:
        ended, started = attempt.get("ended_at"), attempt.get("started_at")
        took = f"{ended - started:.1f}s" if _number(ended) and _number(started) else "" if ended else "running"
        print(
            f"  #{attempt['number']} {attempt['outcome'] or 'running':12} node {attempt.get('node', '?')} "
            f"slot {attempt.get('slot', '?')} pid {attempt.get('pid', '?')} {took}"
            + (f"  {attempt['error']}" if attempt.get("error") else "")
        )
    if record.get("checkpoint"):
        print(f"checkpoint {record['checkpoint'].get('key')} (attempt {record['checkpoint'].get('attempt')})")
    for name, key in sorted(record.get("artifacts", {}).items()):
        print(f"artifact {name}: {key}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start a node, send it demo simulations, print each result as it lands in storage, stop the node."""
    from cloud.client import connect
    from node.storage import storage_from_settings
    from node.storage.records import RecordStore

    storage = storage_from_settings(settings)
    records = RecordStore(storage)
    broker = connect(settings)
    simulate = broker.get_actor("simulate")
    print(f"broker  {settings.masked_amqp_url}\nstorage {settings.storage_url}")
    node = subprocess.Popen([sys.executable, "-m", "cloud.cli", "node", "--processes", str(args.processes)])
    try:
        pending = {simulate.send(seed=seed, samples=args.samples).message_id: seed for seed in range(args.jobs)}
        print(f"submitted {len(pending)} job(s) to queue {broker.physical('simulation')!r}")
        deadline = time.monotonic() + args.timeout_s
        while pending and time.monotonic() < deadline and node.poll() is None:
            for job_id in list(pending):
                record = records.get(job_id)
                if record is not None and record["status"] == "succeeded":
                    result = json.loads(storage.get(record["artifacts"]["result.json"])[0])
                    print(
                        f"job {job_id} done on {result['slot']} (pid {result['pid']}): "
                        f"pi ~ {result['estimate']:.6f} from {result['samples']} samples"
                    )
                    del pending[job_id]
            time.sleep(0.2)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait()
        broker.close()
    if pending:
        print(f"{len(pending)} job(s) did not finish in {args.timeout_s}s", file=sys.stderr)
        return 1
    print("all demo jobs completed")
    return 0


class _ActorsHelp(argparse.Action):
    """``submit --help``: the usual help, then every actor with its parameters (imported, never connected)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            from cloud.submit import describe_actor

            broker = _no_broker(Settings.from_env())
            lines = [f"  {describe_actor(actor)}" for _, actor in sorted(broker.actors.items())]
            parser.epilog = "actors:\n" + ("\n".join(lines) or "  (none)")
        except BurrowError as e:
            parser.epilog = f"actors: cannot list them ({e})"
        parser.print_help()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="burrow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run this machine's worker processes (one per GPU or CPU slot)")
    node.add_argument("--processes", type=_count, default=None, help="worker processes (default: one per slot)")
    node.add_argument("--grace-s", type=float, default=None, help="shutdown grace period (BURROW_GRACE_S)")
    node.set_defaults(func=cmd_node)

    submit = sub.add_parser(
        "submit",
        help="submit a job (or a CSV/JSONL file of jobs) to an actor",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("-h", "--help", action=_ActorsHelp, help="show this help and the actors")
    submit.add_argument("actor", help="actor name, e.g. simulate (see the list below)")
    submit.add_argument("--kwargs", default="{}", help="keyword arguments as JSON, or @file.json")
    submit.add_argument("--args", default="[]", help="positional arguments as a JSON list, or @file.json")
    submit.add_argument("--file", default=None, help="one job per row of a .csv (header = argument names) or .jsonl")
    submit.add_argument("--skip-invalid", action="store_true", help="with --file: submit the good rows anyway")
    submit.add_argument("--batch-id", default=None, help="with --file: the batch's id (default: from its content)")
    submit.add_argument("--type", choices=["sync", "polling", "batch", "stream"], default=None)
    submit.add_argument("--model", default=None)
    submit.add_argument("--priority", choices=["urgent", "bulk", "test"], default=None)
    submit.add_argument("--subcloud", default=None)
    submit.add_argument("--ttl-s", type=float, default=None, help="seconds after which the job must not start")
    submit.add_argument("--key", default=None, help="idempotency key: the same key makes the job once")
    submit.add_argument("--count", type=_count, default=1)
    submit.add_argument("--wait", action="store_true", help="wait and print the result (stream: the chunks)")
    submit.add_argument("--timeout-s", type=_positive, default=None, help="with --wait: give up after this long")
    submit.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    submit.set_defaults(func=cmd_submit)

    result = sub.add_parser("result", help="print a job's result, or save one of its artifacts")
    result.add_argument("job_id", type=_job_id)
    result.add_argument("--artifact", default=None, metavar="NAME", help="an artifact instead of the return value")
    result.add_argument("-o", "--output", default=None, metavar="FILE", help="save to FILE instead of printing")
    result.add_argument("--wait-s", type=_not_negative, default=0.0, help="wait this long for the job to settle")
    result.set_defaults(func=cmd_result)

    cancel = sub.add_parser("cancel", help="cancel jobs: queued ones never start, running ones stop")
    cancel.add_argument("job_ids", nargs="+", metavar="ID", type=_job_id)
    cancel.set_defaults(func=cmd_cancel)

    put = sub.add_parser("put", help="store an input file; prints the reference to pass to a job")
    put.add_argument("file")
    put.set_defaults(func=cmd_put)

    queues = sub.add_parser("queues", help="per queue: ready, running (node registry), slots serving it, dead letters")
    queues.set_defaults(func=cmd_queues)

    topology = sub.add_parser("topology", help="declare the queues of a topology file, or compare them with the broker")
    topology.add_argument("action", choices=["apply", "show"])
    topology.add_argument("file", nargs="?", default=None, help="topology file (default: BURROW_TOPOLOGY)")
    topology.add_argument(
        "--users",
        action="store_true",
        help="apply: also a broker user per subcloud that may consume only its queues (management API)",
    )
    topology.set_defaults(func=cmd_topology)

    router = sub.add_parser("router", help="run the router: re-dispatch failed jobs, quarantine what cannot be placed")
    router.add_argument("--processes", type=_count, default=1)
    router.add_argument("--threads", type=_count, default=4)
    router.set_defaults(func=cmd_router)

    nodes = sub.add_parser("nodes", help="live and recently dead nodes (the node registry)")
    nodes.add_argument("--window-s", type=_positive, default=3600.0, help="how far back to look")
    nodes.set_defaults(func=cmd_nodes)

    top = sub.add_parser("top", help="queue depths, their rates, nodes and slots, redrawn in place (Ctrl-C quits)")
    top.add_argument("--interval", type=_positive, default=2.0, help="seconds between frames (default 2)")
    top.add_argument("--frames", type=_count, default=None, help="stop after this many frames (default: never)")
    top.add_argument("--once", action="store_const", const=1, dest="frames", help="one frame, then exit")
    top.set_defaults(func=cmd_top)

    keygen = sub.add_parser("keygen", help="a new Ed25519 key pair for signed jobs (BURROW_SIGNING_KEY, _TRUSTED_KEYS)")
    keygen.add_argument("key_id", help="the key's id (letters, digits, - and _), e.g. 2026-12")
    keygen.set_defaults(func=cmd_keygen)

    health = sub.add_parser("health", help="exit 0 if this machine's `burrow node` has a live worker (HEALTHCHECK)")
    health.set_defaults(func=cmd_health)

    autoscale = sub.add_parser(
        "autoscale", help="size node pools (local processes, SaladCloud container groups) from their queues' depth"
    )
    autoscale.add_argument("--config", help="the groups' TOML file (default: BURROW_AUTOSCALE_CONFIG)")
    autoscale.add_argument("--once", action="store_true", help="one round, then exit (for a cron trigger)")
    autoscale.add_argument("--interval", type=_positive, default=None, help="seconds between rounds (default: file)")
    autoscale.add_argument(
        "--state", type=Path, default=None, help="where the scale-down delay is remembered between runs"
    )
    autoscale.set_defaults(func=cmd_autoscale)

    quarantine = sub.add_parser("quarantine", help="jobs the router could not place: list, show, requeue, purge")
    qsub = quarantine.add_subparsers(dest="action", required=True)
    qsub.add_parser("list", help="one line per quarantined job")
    show = qsub.add_parser("show", help="a quarantined job's full history")
    show.add_argument("id")
    requeue = qsub.add_parser("requeue", help="send quarantined jobs back through the router (counters reset)")
    requeue.add_argument("ids", nargs="+", metavar="ID")
    requeue.add_argument("--to", default=None, metavar="QUEUE", help="the queue to put them on (default: their own)")
    purge = qsub.add_parser("purge", help="delete quarantined jobs (asks first)")
    purge.add_argument("--older-than", default=None, metavar="AGE", help="only those older than e.g. 30m, 2h, 7d")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    quarantine.set_defaults(func=cmd_quarantine)

    dlq = sub.add_parser("dlq", help="the work queues' dead letters: list, show, requeue, purge")
    dsub = dlq.add_subparsers(dest="action", required=True)
    dlist = dsub.add_parser("list", help="one line per dead letter (none is taken or reordered)")
    dlist.add_argument("--queue", default=None, help="only this work queue's dead letters")
    dshow = dsub.add_parser("show", help="a dead letter's reason and message")
    dshow.add_argument("id")
    dshow.add_argument("--queue", default=None)
    drequeue = dsub.add_parser("requeue", help="send dead-lettered jobs back through the router (counters reset)")
    drequeue.add_argument("ids", nargs="+", metavar="ID")
    drequeue.add_argument("--queue", default=None)
    drequeue.add_argument("--to", default=None, metavar="QUEUE")
    dpurge = dsub.add_parser("purge", help="delete dead letters (asks first)")
    dpurge.add_argument("--queue", default=None)
    dpurge.add_argument("--older-than", default=None, metavar="AGE")
    dpurge.add_argument("--yes", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    job = sub.add_parser("job", help="show a job's record (status, attempts, checkpoint, artifacts)")
    job.add_argument("job_id", type=_job_id)
    job.add_argument("--json", action="store_true", help="print the raw record")
    job.set_defaults(func=cmd_job)

    demo = sub.add_parser("demo", help="run a node on demo jobs and show them complete")
    demo.add_argument("--jobs", type=_count, default=4)
    demo.add_argument("--samples", type=_count, default=2_000_000)
    demo.add_argument("--processes", type=_count, default=2)
    demo.add_argument("--timeout-s", type=_positive, default=120.0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = Settings.from_env()
        with deadline_scope(Deadline(PUBLISH_PATIENCE_S)):
            return args.func(args, settings)
    except BurrowError as e:
        print(f"burrow: error: {e}", file=sys.stderr)
        return 2
    except (BrokerError, pika.exceptions.AMQPError) as e:
        print(f"burrow: error: RabbitMQ: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`burrow dlq list | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as e:  # a file named on the command line: missing folder, no permission, full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"burrow: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
