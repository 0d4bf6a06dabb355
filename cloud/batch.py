"""Batch submission: many jobs of one actor from a list, a CSV or a JSONL file, idempotent per row.

Every row is checked before anything is published (arguments against the actor's signature, CSV cells
converted by its type hints, the payload limit); bad rows are reported with their line numbers and nothing is
submitted unless the caller skips them. Row ``n`` of batch ``B`` becomes job ``B-n``; the batch id is given,
or derived from the actor and the rows, so submitting the same file twice makes each job once.

The batch's manifest (``batches/<id>.json``) lists its jobs; how many are published is written beside it
(``batches/<id>.published.json``) after each stretch of publisher confirms: a second submission of the same
batch publishes only what the first did not get confirmed (after a crash of the first submitter, at most the
stretches in flight are published twice: the nodes run a copy of a job that already succeeded not again).

Publishing pipelines publisher confirms (``aio-pika``: pika's blocking adapter waits for each confirm before
the next publish, ~4× slower here).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import dramatiq
from dramatiq.common import q_name

from node.broker.tls import context
from node.contract.job_options import ROUTING_OPTIONS
from node.contract.record import SETTLED_STATUSES
from node.errors import MalformedMessage, NoSuchQueue, ObjectNotFound, PreconditionFailed

from .arguments import parse_json, type_hints
from .errors import CloudError

#: Rows published between two manifest writes (and the most a crashed submitter can publish twice).
STRETCH = 1000
_SETTLED = {s.value for s in SETTLED_STATUSES}


class InvalidRows(CloudError):
    """Rows of a batch are bad; nothing was submitted. ``problems``: (line, what is wrong) per bad row."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        shown = "\n".join(f"  line {line}: {problem}" for line, problem in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{len(problems)} bad row(s) in {source}; nothing submitted (--skip-invalid submits the others):\n"
            f"{shown}{more}"
        )
        self.problems = problems


# -- reading rows -------------------------------------------------------------------------------------------


def read_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """The rows of a ``.csv`` or ``.jsonl`` file as (line number, fields), and the lines that could not be read."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel writes one) is not data
    except (OSError, UnicodeDecodeError) as e:
        raise CloudError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl(text)
    if path.suffix.lower() == ".csv":
        return _csv(text)
    raise CloudError(f"{path}: expected a .csv or .jsonl file")


def _jsonl(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    rows, bad = [], []
    for number, line in enumerate(text.split("\n"), start=1):  # JSON strings may hold U+2028: not a line end
        if not line.strip():
            continue
        try:
            value = parse_json(line)
        except ValueError as e:
            bad.append((number, f"not JSON: {e}"))
            continue
        if not isinstance(value, dict):
            bad.append((number, f"must be a JSON object of arguments, got {type(value).__name__}"))
            continue
        rows.append((number, value))
    return rows, bad


def _csv(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    # Read as a file opened with newline="": a quoted cell keeps its line breaks, and only \r and \n end a
    # line (``str.splitlines`` also splits at U+2028 and other separators that are data in a cell). Strict:
    # an unterminated quote is an error on its line, not a cell that runs to the end of the file.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise CloudError(f"no CSV header row ({e})" if str(e) else "empty CSV file") from None
    if not header or any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise CloudError(f"line 1: the header must name each column once, got {header}")
    rows, bad = [], []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.append((reader.line_num, f"not CSV: {e}"))
            continue
        if not cells or not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            bad.append((reader.line_num, f"{len(cells)} values for {len(header)} columns"))
            continue
        rows.append((reader.line_num, {name.strip(): cell for name, cell in zip(header, cells, strict=True) if cell}))
    return rows, bad


def _delimiter(text: str) -> str:
    """The file's column separator: a comma, unless its header line has none but has semicolons (what Excel
    writes where the comma is the decimal separator) or tabs."""
    header = text.split("\n", 1)[0]
    if "," not in header:
        for candidate in (";", "\t"):
            if candidate in header:
                return candidate
    return ","


def convert_cells(fn: Callable[..., Any], fields: dict[str, Any]) -> dict[str, Any]:
    """CSV cells (strings) converted to the types ``fn``'s parameters are annotated with; ``ValueError`` names
    the cell that does not convert. Unannotated cells are JSON when they parse as JSON, else text."""
    hints = type_hints(fn)
    out = {}
    for name, cell in fields.items():
        if not isinstance(cell, str):
            out[name] = cell
            continue
        kind = hints.get(name)
        try:
            if kind is int:
                out[name] = int(cell)
            elif kind is float:
                out[name] = float(cell)
                if not math.isfinite(out[name]):  # "nan", "inf": not a number JSON can carry
                    raise ValueError("not finite")
            elif kind is bool:
                lowered = cell.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("not a boolean")
                out[name] = lowered in ("true", "1", "yes")
            elif kind is str:
                out[name] = cell
            else:
                try:
                    out[name] = parse_json(cell)
                except ValueError:
                    out[name] = cell
        except ValueError:
            raise ValueError(f"column {name!r}: {cell!r} is not {getattr(kind, '__name__', kind)}") from None
    return out


# -- the batch ----------------------------------------------------------------------------------------------


def batch_id_for(actor_name: str, rows: list[tuple[int, dict[str, Any]]]) -> str:
    digest = hashlib.blake2b(digest_size=10)
    digest.update(actor_name.encode())
    for line, fields in rows:
        digest.update(json.dumps([line, fields], sort_keys=True, default=str).encode())
    return "b-" + digest.hexdigest()


def manifest_key(batch_id: str) -> str:
    return f"batches/{batch_id}.json"


def batch_of(job_id: str) -> str | None:
    """The batch a job id belongs to (``B-n`` → ``B``), if it looks like a batch job's."""
    if job_id.startswith("b-") and "-" in job_id[2:]:
        return job_id.rsplit("-", 1)[0]
    return None


@dataclass
class Batch:
    """A submitted batch: its jobs in row order, and what became of them."""

    client: Any
    batch_id: str
    jobs: list[tuple[int, str]]  # (line, job id)
    published_now: int = 0

    def statuses(self) -> list[str]:
        """Each job's status in row order (``queued`` until a node records it)."""

        def one(job_id: str) -> str:
            return (self.client.records.get(job_id) or {}).get("status") or "queued"

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, [job_id for _, job_id in self.jobs]))

    def counts(self) -> Counter:
        return Counter(self.statuses())

    def wait(self, timeout: float | None = None, on_progress: Callable[[Counter], None] | None = None) -> Counter:
        """Wait until every job settled (``TimeoutError`` after ``timeout``); returns the final counts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.counts()
            if on_progress is not None:
                on_progress(counts)
            if settled_count(counts) >= len(self.jobs):
                return counts
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {self.batch_id} not settled after {timeout}s: {dict(counts)}")
            time.sleep(0.5)

    def results(self) -> list[dict[str, Any]]:
        """Per row: line, job id, status, and the result (succeeded) or the reason (otherwise)."""
        out = []
        for (line, job_id), status in zip(self.jobs, self.statuses(), strict=True):
            record = self.client.records.get(job_id) or {}
            row: dict[str, Any] = {"line": line, "job_id": job_id, "status": status}
            if status == "succeeded":
                try:
                    row["result"] = self.client.job(job_id).result(timeout=0)
                except Exception as e:  # a result that cannot be read is reported, not fatal to the listing
                    row["error"] = str(e)
            elif record.get("reason"):
                row["reason"] = record["reason"]
            out.append(row)
        return out


def submit_batch(
    client: Any,
    actor: str | dramatiq.Actor,
    rows: list[tuple[int, dict[str, Any]]],
    *,
    batch_id: str | None = None,
    skip_invalid: bool = False,
    source: str = "the batch",
    unreadable: Iterable[tuple[int, str]] = (),
    convert: bool = False,
    on_published: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Batch:
    """Check every row, then publish them all with pipelined confirms (see the module docstring).

    Args:
        rows: (line number, keyword arguments) per job.
        batch_id: The batch's id (default: derived from the actor and the rows).
        skip_invalid: Submit the good rows even if some are bad (else ``InvalidRows``, nothing submitted).
        unreadable: Lines that could not even be parsed (reported with the bad rows).
        convert: The rows are CSV cells: convert them by the actor's type hints.
        on_published: Called with (published, total) as confirms come in.
        **options: ``job_type`` (default ``batch``), ``model``, ``priority``, ``subcloud``, ``ttl_s``.
    """
    actor = client.actor(actor)
    batch_id = batch_id or batch_id_for(actor.actor_name, rows)
    if batch_of(f"{batch_id}-1") != batch_id or len(batch_id) > 100:
        raise CloudError(f"batch id {batch_id!r} must start with 'b-' and be at most 100 characters")
    options.setdefault("job_type", "batch")
    now = time.time()
    bad = list(unreadable)
    messages = []
    build = client.builder(actor, now=now, **options)
    for line, fields in rows:
        if not isinstance(fields, dict):  # (an API caller's item: dict() of it made no sense of what was wrong)
            bad.append((line, f"must be an object of keyword arguments, got {type(fields).__name__}"))
            continue
        try:
            kwargs = convert_cells(actor.fn, fields) if convert else fields
            messages.append((line, *build((), kwargs, f"{batch_id}-{line}")))
        except (MalformedMessage, ValueError, CloudError) as e:
            bad.append((line, str(e)))
    if bad and not skip_invalid:
        raise InvalidRows(source, sorted(bad))
    if not messages:
        raise CloudError(f"no valid row in {source}")
    jobs = [(line, message.message_id) for line, message, _ in messages]
    published = _open_manifest(client.storage, batch_id, actor.actor_name, jobs, now)
    batch = Batch(client, batch_id, jobs)
    if published < len(messages):
        # Every row has the batch's actor and options, hence its queue: looked up (and checked) once per queue.
        targets: dict[tuple[str, ...], str] = {}
        bodies = []
        for _, message, body in messages:
            job = message.options["job"]
            route_key = (message.queue_name, *(str(job.get(n)) for n in ROUTING_OPTIONS))
            if route_key not in targets:
                targets[route_key] = _target(client.broker, message)
            bodies.append((targets[route_key], body, message.message_id))
        first = messages[0][1]
        batch.published_now = _publish(client, batch_id, jobs, first, bodies, published, on_published)
    elif on_published is not None:
        on_published(len(messages), len(messages))
    return batch


def _open_manifest(storage: Any, batch_id: str, actor: str, jobs: list[tuple[int, str]], now: float) -> int:
    """Create the batch's manifest, or read how much of it a first submission published."""
    key = manifest_key(batch_id)
    manifest = {"batch_id": batch_id, "actor": actor, "created_at": now, "jobs": jobs, "published": 0}
    try:
        storage.put(key, json.dumps(manifest).encode(), if_none_match=True)
        return 0
    except PreconditionFailed:
        existing = read_manifest(storage, batch_id)
    if existing is None:
        raise CloudError(f"batch {batch_id}: its manifest was deleted while this submission read it; submit again")
    if [tuple(j) for j in existing["jobs"]] != [tuple(j) for j in jobs]:
        raise CloudError(f"batch {batch_id} exists with other rows: choose another --batch-id")
    progress = _read_object(storage, progress_key(batch_id), "batch progress") or {}
    return max(_published(existing), _published(progress))


def progress_key(batch_id: str) -> str:
    """Where a batch's published count is kept, apart from its (large, written once) manifest."""
    return f"batches/{batch_id}.published.json"


def read_manifest(storage: Any, batch_id: str) -> dict[str, Any] | None:
    """The batch's manifest (``None``: no such batch); ``CloudError`` naming it if it is damaged."""
    key = manifest_key(batch_id)
    manifest = _read_object(storage, key, "batch manifest")
    jobs = None if manifest is None else manifest.get("jobs")
    if manifest is not None and not (
        isinstance(jobs, list)
        and all(isinstance(j, list) and len(j) == 2 and type(j[0]) is int and isinstance(j[1], str) for j in jobs)
    ):
        raise CloudError(f"batch manifest {key} does not list its jobs as [line, job id] pairs; repair or delete it")
    return manifest


def _read_object(storage: Any, key: str, what: str) -> dict[str, Any] | None:
    """A JSON object from storage (``None``: absent); ``CloudError`` naming it if it is not one."""
    try:
        data = storage.get(key)[0]
    except ObjectNotFound:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CloudError(f"{what} {key} is not JSON ({type(e).__name__}); repair or delete it") from None
    if not isinstance(value, dict):
        raise CloudError(f"{what} {key} is a JSON {type(value).__name__}, not an object; repair or delete it")
    return value


def _published(saved: dict[str, Any]) -> int:
    """The rows a manifest or progress file says were published (0 if it says nothing usable)."""
    value = saved.get("published")
    return value if type(value) is int and value >= 0 else 0


def submitted_in_batch(storage: Any, job_id: str) -> str | None:
    """The batch that submitted ``job_id`` (its manifest lists it), or ``None``."""
    batch_id = batch_of(job_id)
    manifest = read_manifest(storage, batch_id) if batch_id else None
    if manifest and any(j == job_id for _, j in manifest["jobs"]):
        return batch_id
    return None


def settled_count(counts: Counter) -> int:
    """How many of a batch's jobs have settled, from its status counts."""
    return sum(n for status, n in counts.items() if status in _SETTLED)


def _target(broker: Any, message: Any) -> str:
    """The physical queue a message goes to (the topology's choice, declared if it is not a topology queue)."""
    routed = broker._route(message)
    queue = q_name(routed.queue_name)
    if broker.topology is not None and broker.topology.has(queue):
        if broker.inspect_queue(queue) is None:
            raise NoSuchQueue(f"queue {broker.physical(queue)!r} is in the topology but not on the broker")
    else:
        broker.declare_queue(queue, ensure=True)
    return broker.physical(queue)


def _publish(client, batch_id, jobs, first, bodies, start, on_published) -> int:
    url = client.settings.amqp_url.split(";")[0]

    def confirmed(count: int) -> None:
        client.storage.put(progress_key(batch_id), json.dumps({"published": count}).encode())
        if on_published is not None:
            on_published(count, len(bodies))

    tls = context(client.settings.amqp_ca_file) if url.startswith("amqps:") else None
    asyncio.run(_publish_async(url, bodies, start, confirmed, tls))
    return len(bodies) - start


async def _publish_async(url: str, bodies: list[tuple[str, bytes, str]], start: int, confirmed, tls=None) -> None:
    try:
        connection = await aio_pika.connect(url, ssl_context=tls)
    except Exception as e:
        raise CloudError(f"cannot publish the batch: {type(e).__name__} {e}") from None
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        recording: asyncio.Future | None = None
        for first in range(start, len(bodies), STRETCH):
            stretch = bodies[first : first + STRETCH]
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=message_id,
                            content_type="application/json",
                        ),
                        routing_key=target,
                        mandatory=True,
                    )
                    for target, body, message_id in stretch
                )
            )
            # The manifest is written beside the next stretch's publishing, not between them (one write at a
            # time, in order: the count it records is always confirmed).
            if recording is not None:
                await recording
            recording = asyncio.ensure_future(asyncio.to_thread(confirmed, first + len(stretch)))
        if recording is not None:
            await recording
