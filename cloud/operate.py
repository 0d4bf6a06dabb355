"""Operator commands on the quarantine: ``burrow quarantine list | show ID | requeue ID… | purge``.

A requeue is not done here: it is a ``requeue`` message to the router, which places the job and removes
the entry exactly once (``cloud.routing.router``), so two operators, or an operator and a crash, cannot put a
job back twice.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
from typing import Any

from dramatiq import Message

from node.contract.queues import FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE
from node.errors import BurrowError
from node.settings import Settings
from node.storage import storage_from_settings

from .routing.quarantine import Quarantine

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class OperateError(BurrowError):
    """An operator command cannot be carried out (the message says why)."""


def parse_age(text: str) -> float:
    """``30m`` → 1800.0; raises ``OperateError`` naming the value."""
    match = _AGE.fullmatch(text.strip())
    if not match:
        raise OperateError(f"--older-than {text!r} is not an age like 90s, 30m, 2h or 7d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _age(entry: dict[str, Any], now: float) -> str:
    seconds = max(0.0, now - float(entry.get("quarantined_at") or now))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def quarantine(args: argparse.Namespace, settings: Settings) -> int:
    store = Quarantine(storage_from_settings(settings))
    now = time.time()
    if args.action == "list":
        print(f"{'id':38} {'age':>7} {'attempts':>8} {'actor':16} {'queue':32} reason")
        count = 0
        for entry in store.entries():
            count += 1
            print(
                f"{entry['id']:38} {_age(entry, now):>7} {len(entry.get('attempts') or []):>8} "
                f"{entry.get('actor') or '?':16} {entry.get('queue') or '?':32} {entry.get('reason')}"
            )
        print(f"({count} quarantined)")
        return 0
    if args.action == "show":
        entry = _entry(store, args.id)
        at = entry.get("quarantined_at")
        if at is None:
            when = "at an unknown time"
        else:
            when = datetime.datetime.fromtimestamp(at, tz=datetime.UTC).isoformat(timespec="seconds")
            when += f" ({_age(entry, now)} ago)"
        print(f"job {entry.get('job_id') or '(unreadable)'}  actor {entry.get('actor')}  queue {entry.get('queue')}")
        print(f"quarantined {when}: {entry['reason']}")
        if entry.get("error"):
            print(f"last error: {entry['error']}")
        print("attempts:")
        for attempt in entry.get("attempts") or []:
            print(
                f"  #{attempt.get('number', '?')} node {attempt.get('node', '?')} slot {attempt.get('slot', '?')}: "
                f"{attempt.get('outcome') or 'open'}" + (f" — {attempt['error']}" if attempt.get("error") else "")
            )
        print("router decisions:")
        for decision in entry.get("routing") or []:
            where = decision.get("queue") or ""
            print(f"  {decision.get('kind')}: {decision.get('action')} {where} — {decision.get('reason')}")
        if entry.get("raw"):
            print(f"message (base64, unreadable): {entry['raw'][:200]}")
        return 0
    if args.action == "requeue":
        return _requeue(store, args, settings)
    return _purge(store, args, now)


def _entry(store: Quarantine, entry_id: str) -> dict[str, Any]:
    entry = store.get(entry_id)
    if entry is None:
        raise OperateError(f"nothing quarantined under {entry_id!r} (see `burrow quarantine list`)")
    return entry


def _requeue(store: Quarantine, args: argparse.Namespace, settings: Settings) -> int:
    from .client import connect

    entries = [_entry(store, entry_id) for entry_id in dict.fromkeys(args.ids)]  # (an id given twice: once)
    for entry in entries:
        if not entry.get("message") or not entry.get("job_id"):
            raise OperateError(f"{entry['id']} is not a readable job ({entry['reason']}): it cannot be requeued")
    broker = connect(settings)
    try:
        if args.to is not None and broker.topology is not None and not broker.topology.has(args.to):
            raise OperateError(f"--to {args.to!r} is not a queue of the topology")
        if args.to is not None and broker.inspect_queue(args.to) is None:
            # the router would only quarantine the job again ("queue does not exist")
            raise OperateError(f"--to {args.to!r}: no such queue on the broker (see `burrow queues`)")
        for entry in entries:
            request = Message(
                queue_name=FAILED_JOBS_QUEUE,
                actor_name=FAILED_JOBS_ACTOR,
                args=(),
                kwargs={"kind": "requeue", "id": entry["id"], "job": entry["message"], "to": args.to},
                options={},
            )
            broker.send_elsewhere(request)
            print(f"{entry['id']}: requeue sent to the router")
    finally:
        broker.close()
    return 0


def _confirmed(question: str) -> bool:
    """Ask on the terminal; anything but y/yes is a no (and says so)."""
    print(f"{question} [y/N] ", end="", flush=True)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    print("nothing deleted")
    return False


def work_queue_names(broker) -> list[str]:
    """The work queues a command looks at: the topology's, else the actors' (one queue per actor)."""
    return broker.topology.queue_names() if broker.topology else sorted(broker.get_declared_queues())


def _purge(store: Quarantine, args: argparse.Namespace, now: float) -> int:
    older_than = parse_age(args.older_than) if args.older_than is not None else 0.0
    doomed = [e["id"] for e in store.entries() if now - float(e.get("quarantined_at") or now) >= older_than]
    if not doomed:
        print("nothing to purge")
        return 0
    if not args.yes and not _confirmed(f"Delete {len(doomed)} quarantined job(s) for good?"):
        return 1
    for entry_id in doomed:
        store.delete(entry_id)
    print(f"{len(doomed)} deleted")
    return 0


def queue_rows(broker, registry_views, names: list[str]) -> list[dict[str, Any]]:
    """One row per queue: ready and dead-lettered (the broker), subscribers (the broker), serving slots and
    running jobs (the node registry). Nothing is declared: a queue the broker lacks shows as missing.

    Running jobs come from the registry because RabbitMQ reports unacked counts only through its management
    API, and a slot's priority consumer holds no subscription for the broker to count.
    """
    from dramatiq.common import xq_name

    live = [beat for view in registry_views.values() if view.live for beat in view.slots]
    rows = []
    for name in names:
        ready, subscribers, dead = broker.inspect_queue(name), None, broker.inspect_queue(xq_name(name))
        if ready is not None:
            ready, subscribers = ready
        rows.append(
            {
                "queue": broker.physical(name),
                "ready": ready,
                "running": sum(beat.running_queues.count(name) for beat in live),
                "slots": sum(1 for beat in live if name in beat.queues),
                "subscribers": subscribers,
                "dead": dead[0] if dead is not None else None,
            }
        )
    return rows


def dlq(args: argparse.Namespace, settings: Settings) -> int:
    """``burrow dlq list | show ID | requeue ID… | purge`` over the work queues' dead-letter queues."""
    import pika

    from . import dlq as letters_of
    from .client import connect

    broker = connect(settings)
    names = work_queue_names(broker)
    names = [args.queue] if getattr(args, "queue", None) else [*names, FAILED_JOBS_QUEUE]
    # A missing queue would close the channel that holds the others: look first, on another channel.
    from dramatiq.common import xq_name

    names = [name for name in names if broker.inspect_queue(xq_name(name)) is not None]
    connection = pika.BlockingConnection(broker.parameters)
    try:
        channel = connection.channel()
        channel.tx_select()
        held = [letter for name in names for letter in letters_of.read(channel, broker, name)]
        now = time.time()
        if args.action == "list":
            print(f"{'id':38} {'age':>7} {'failures':>8} {'actor':16} {'queue':32} reason")
            for letter in held:
                seen = letters_of.age(letter, now)
                shown_age = "?" if seen is None else _age({"quarantined_at": now - seen}, now)
                failures = "?" if letter.failures is None else letter.failures
                why = letter.reason + (f": {letter.detail}" if letter.detail else "")
                print(f"{letter.id:38} {shown_age:>7} {failures:>8} {letter.actor or '?':16} {letter.queue:32} {why}")
            print(f"({len(held)} dead-lettered)")
            return 0
        if args.action == "show":
            matching = [letter for letter in held if letter.id == args.id]
            if not matching:
                raise OperateError(f"no dead letter {args.id!r} (see `burrow dlq list`)")
            for letter in matching:
                print(f"{letter.id} in {broker.physical(letter.queue)}.XQ: {letter.reason} {letter.detail}")
                print(letters_of.shown_body(letter))
            return 0
        if args.action == "requeue":
            wanted = set(args.ids)
            chosen = [letter for letter in held if letter.id in wanted]
            missing = wanted - {letter.id for letter in chosen}
            if missing:
                raise OperateError(f"no dead letter {sorted(missing)[0]!r} (see `burrow dlq list`)")
            for letter in chosen:
                if letter.message is None:
                    raise OperateError(f"{letter.id} is not a readable job ({letter.reason}): it cannot be requeued")
            broker._ensure_unannounced(FAILED_JOBS_QUEUE)  # a publish to a missing queue would vanish
            for letter in chosen:
                body = letters_of.requeue_request(letter, args.to)
                channel.basic_publish(
                    "", broker.physical(FAILED_JOBS_QUEUE), body, pika.BasicProperties(delivery_mode=2)
                )
                channel.basic_ack(letter.tag)
                channel.tx_commit()  # the request and the ack, together
                print(f"{letter.id}: requeue sent to the router")
            return 0
        older_than = parse_age(args.older_than) if args.older_than is not None else 0.0
        doomed = [letter for letter in held if (letters_of.age(letter, now) or 0.0) >= older_than]
        if not doomed:
            print("nothing to purge")
            return 0
        if not args.yes and not _confirmed(f"Delete {len(doomed)} dead letter(s) for good?"):
            return 1
        for letter in doomed:
            channel.basic_ack(letter.tag)
        channel.tx_commit()
        print(f"{len(doomed)} deleted")
        return 0
    finally:
        if connection.is_open:
            connection.close()  # returns every dead letter not acked above, in order
        broker.close()
