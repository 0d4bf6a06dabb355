"""The router's handling of one ``failed-jobs`` message: read the job's record, ask the policy, carry it out.

Exactly once, whatever dies when: a counted decision is first written into the job's record (``routing``,
keyed by the message id, under the record's conditional write), so a router that handles the same message
again after a crash carries out the *same* decision rather than deciding anew; quarantine entries are
plain overwrites; and the re-dispatch is not published here but returned, to be committed together with
the message's ack (``cloud.routing.outbox``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from dramatiq import Message
from opentelemetry import metrics, propagate, trace

from node.attempt.routing import next_message
from node.broker import QuorumRabbitmqBroker
from node.contract.envelope import check_fields, decode_fields
from node.contract.job_options import JOB_ID_PATTERN, JobOptions
from node.contract.queues import FAILED_JOBS_ACTOR, FAILED_JOBS_QUEUE, DeadLetterReason, wait_bucket_ms
from node.contract.record import JobStatus, cancel_requested, record_key, set_status, status_of
from node.contract.signing import BadSignature, Signer, verify
from node.contract.topology import Topology
from node.errors import CorruptRecord, InvalidTransition
from node.storage import Storage
from node.storage.records import RecordStore

from ..registry import NodeRegistry
from .outbox import Outgoing, outbox_of
from .policy import JobHistory, Route, RouteRequest, RoutingPolicy
from .quarantine import Quarantine, entry_id, job_of
from .reports import report_problem

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("burrow.router")
decisions = metrics.get_meter("burrow.router").create_counter(
    "burrow.router.decisions", unit="{decision}", description="What the router did with a report, by kind and action"
)

#: A message the router could not handle (storage or broker trouble) comes back after this long.
RETRY_LATER_S = 30.0
#: The longest pause between two looks at a held job (see ``DefaultPolicy``: a node silent only recently).
HOLD_MAX_S = 30.0
#: How often a report the broker dead-lettered from ``failed-jobs`` is handled again before it is quarantined.
MAX_REVIVALS = 3


class Router:
    """Handles ``failed-jobs`` messages (see the module docstring).

    Parameters:
        broker: For queue names, wait queues and checking a target queue exists.
        storage: Where records and the quarantine live.
        registry: The live nodes.
        policy: Decides (``cloud.routing.policy``).
        topology: The queue topology, or ``None`` (one queue per actor).
        clock: Wall clock (Unix seconds).
    """

    def __init__(
        self,
        *,
        broker: QuorumRabbitmqBroker,
        storage: Storage,
        registry: NodeRegistry,
        policy: RoutingPolicy,
        topology: Topology | None,
        clock: Callable[[], float] = time.time,
        signer: Signer | None = None,
        trusted: Mapping[str, Any] | None = None,
    ) -> None:
        self.signer = signer
        # A job it re-dispatches must carry a valid signature first (a node could have altered it), by its
        # own key or one the nodes trust (an older key during a rotation).
        self.trusted = {**(trusted or {}), **(signer.public() if signer is not None else {})}
        self.broker = broker
        self.records = RecordStore(storage)
        self.quarantine = Quarantine(storage)
        self.registry = registry
        self.policy = policy
        self.topology = topology
        self.clock = clock

    # -- entry point --------------------------------------------------------------------------------------

    def _trace(self, request: RouteRequest, kind: str, route: Route) -> None:
        """A span in the job's own trace (its ``trace`` field), so a re-dispatch shows between its attempts."""
        carrier = request.job.trace if request.job is not None else {}
        with tracer.start_as_current_span(
            f"route {FAILED_JOBS_QUEUE}", context=propagate.extract(carrier or {}), kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attributes(
                {
                    "messaging.system": "rabbitmq",
                    "messaging.destination.name": FAILED_JOBS_QUEUE,
                    "burrow.job.id": request.job.job_id if request.job is not None else "",
                    "burrow.report.kind": str(kind),
                    "burrow.route.action": route.action,
                    "burrow.route.queue": route.queue or "",
                }
            )

    def take(self, message: Any) -> None:
        """Handle the ``failed-jobs`` delivery ``message`` (Dramatiq's message proxy): what handling it
        publishes goes into its outbox, committed with its ack. Never raises: Dramatiq acks a message whose
        actor raised (no ``Retries`` here), which would lose the report."""
        try:
            outgoing = self.handle(dict(message.kwargs), message.message_id)
        except Exception:
            # Storage or broker trouble, or a report this router cannot read: never lose it, never spin on it.
            logger.exception("Could not route report %s; it comes back in %.0fs.", message.message_id, RETRY_LATER_S)
            try:
                outgoing = [self.retry_later(getattr(message, "_message", message))]
            except Exception:
                # Not even the delayed copy could be prepared (no broker): reject the report instead; the
                # broker dead-letters it and housekeeping brings it back (``_revive``).
                logger.exception("Could not delay report %s either; rejecting it.", message.message_id)
                message.fail()
                return
        outbox_of(message).extend(outgoing)

    def handle(self, report: dict[str, Any], report_id: str) -> list[Outgoing]:
        """What to publish (with the ack) for ``report``; writes records and quarantine entries on the way."""
        kind = report.get("kind", "failed")
        revived = self._revive(report)
        if revived is not None:
            return self.handle(*revived)
        problem = report_problem(report)
        if problem is not None:
            self._quarantine_unreadable(report, report_id, problem)
            return []
        message, request, raw = self._request(report)
        job_id = request.job.job_id if request.job else None
        try:
            record = self.records.get(job_id) if job_id else None
            earlier = self._earlier(job_id, record, report_id)
        except CorruptRecord as e:  # re-dispatching cannot help, nor can asking again: set aside for an operator
            route = Route("quarantine", reason=f"record: {e}")
            logger.warning("Job %s (%s): quarantined — %s", job_id, kind, route.reason)
            self._quarantine(request, route, report, None, raw)
            return []
        status = status_of(record)
        if status is JobStatus.SUCCEEDED:
            logger.info("Job %s already succeeded: nothing to route (%s).", job_id, kind)
            return []
        if job_id and (status is JobStatus.CANCELLED or (cancel_requested(record) and status is not JobStatus.EXPIRED)):
            # A cancelled job is never re-dispatched (nor quarantined): its record says cancelled, and stops there.
            if status is not JobStatus.CANCELLED:
                self.records.update(job_id, lambda r: set_status(r, JobStatus.CANCELLED, reason="cancelled"))
            logger.info("Job %s was cancelled: not routed (%s).", job_id, kind)
            return []
        if earlier is not None:
            route = earlier
        elif kind == "requeue" and report.get("id") and status is not JobStatus.QUARANTINED and record is not None:
            # (no record at all: e.g. an unreadable one the operator deleted; nothing says it runs elsewhere)
            logger.info("Job %s is not quarantined (%s): requeue ignored.", job_id, status)
            return []
        else:
            history = JobHistory(
                attempts=tuple((record or {}).get("attempts", [])), dispatches=tuple((record or {}).get("routing", []))
            )
            nodes = list(self.registry.nodes().values()) if kind != "requeue" else []
            route = self.policy.decide(request, history, nodes, self.topology, self.clock())
            if route.action == "dispatch" and not self._queue_exists(route.queue):
                route = Route("quarantine", reason=f"{route.reason}; but queue {route.queue!r} does not exist")
            if route.action == "dispatch" and self.signer is not None:
                try:
                    assert message is not None and request.job is not None
                    verify(self.trusted, message.actor_name, message.args, message.kwargs, request.job.to_options())
                except BadSignature as e:
                    route = Route("quarantine", reason=f"bad-signature: {e}")
            if job_id and route.counted:
                try:
                    requeued = kind == "requeue" and status is JobStatus.QUARANTINED
                    record = self._record(job_id, request, route, report_id, requeued=requeued)
                except _NoLongerQuarantined as e:  # another request for it was handled meanwhile
                    logger.info("Job %s is not quarantined any more (%s): requeue ignored.", job_id, e.status)
                    return []
        logger.info("Job %s (%s): %s %s — %s", job_id or "?", kind, route.action, route.queue or "", route.reason)
        decisions.add(1, {"kind": str(kind), "action": route.action})
        self._trace(request, kind, route)
        if route.action == "quarantine":
            self._quarantine(request, route, report, record, raw)
            return []
        if route.action == "hold":
            holds = report.get("holds") if isinstance(report.get("holds"), int) else 0
            if job_id and holds == 0:  # noted once: a failover may hold thousands of jobs at a time
                self._note_hold(job_id, request, route, report_id)
            # Asked about again ever less often (a silent node's grace is minutes; a record read each time)
            delay = min(HOLD_MAX_S, route.delay_s * 2 ** min(holds, 10))
            return [self._hold({**report, "holds": holds + 1}, report_id, delay)]
        if kind == "requeue" and report.get("id"):
            self.quarantine.delete(report["id"])
        assert message is not None and request.job is not None
        job = request.job.replace(expires_at=None) if kind == "requeue" else request.job  # an operator's call
        return [self._dispatch(message, job, route)]

    def _earlier(self, job_id: str | None, record: dict[str, Any] | None, report_id: str) -> Route | None:
        """The decision already taken about report ``report_id`` (a repeated delivery), from the record;
        ``CorruptRecord`` if the record keeps it unreadably."""
        for n, entry in enumerate((record or {}).get("routing", [])):
            if isinstance(entry, dict) and _decided(entry, report_id):
                try:
                    return Route.from_saved(entry.get("route"))
                except ValueError as e:
                    assert job_id is not None
                    raise CorruptRecord(record_key(job_id), f"is unusable: routing[{n}].route: {e}") from None
        return None

    def _revive(self, report: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """A report of ``failed-jobs`` itself that the broker dead-lettered (routers died while holding it,
        delivery limit reached): the report again, with its own id, at most ``MAX_REVIVALS`` times."""
        if report.get("kind") != "dead_letter" or report.get("queue") != FAILED_JOBS_QUEUE:
            return None
        try:
            fields = json.loads(_body(report))
            inner, inner_id = fields["kwargs"], fields["message_id"]
            revivals = int(inner.get("revived", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(inner, dict) or not isinstance(inner_id, str) or revivals >= MAX_REVIVALS:
            return None
        reason = report.get("dead_letter_reason")
        logger.warning("Report %s was dead-lettered (%s); handling it again.", inner_id, reason)
        return {**inner, "revived": revivals + 1}, inner_id

    def _hold(self, report: dict[str, Any], report_id: str, delay_s: float) -> Outgoing:
        """The report again, in ``failed-jobs`` after ``delay_s``, with its own id (a revived report's inner
        one): handled as if it had just arrived, and decided on then."""
        again = Message(
            queue_name=FAILED_JOBS_QUEUE,
            actor_name=FAILED_JOBS_ACTOR,
            args=(),
            kwargs=report,
            options={},
            message_id=report_id,
            message_timestamp=int(self.clock() * 1000),
        )
        return self._outgoing(again, FAILED_JOBS_QUEUE, delay_s)

    def _note_hold(self, job_id: str, request: RouteRequest, route: Route, report_id: str) -> None:
        """Show the hold in the job's record (``burrow job``): one entry per report, never counted and never
        replayed as a decision."""
        now = self.clock()

        def mutate(record: dict[str, Any]) -> None:
            routing = record.setdefault("routing", [])
            if any(_decided(r, report_id) for r in routing):
                return
            if any(r.get("report") == report_id and r.get("action") == "hold" for r in routing):
                return
            routing.append(
                {
                    "report": report_id,
                    "kind": request.kind,
                    "at": now,
                    "node": request.node,
                    "action": "hold",
                    "queue": route.queue,
                    "reason": route.reason,
                }
            )

        self.records.update(job_id, mutate, queue=request.queue)

    def retry_later(self, message: Message) -> Outgoing:
        """The report itself, back in ``failed-jobs`` after ``RETRY_LATER_S`` (same id: handled once)."""
        return self._outgoing(message, message.queue_name, RETRY_LATER_S)

    # -- reading the report -------------------------------------------------------------------------------

    def _request(self, report: dict[str, Any]) -> tuple[Message | None, RouteRequest, bytes]:
        kind = report.get("kind", "failed")
        if kind == "dead_letter":
            raw = _body(report)
            try:
                fields = decode_fields(raw)
                message = Message(**{**fields, "args": tuple(fields.get("args") or ())})
                job = JobOptions.from_options(message.options, message_id=message.message_id)
            except Exception as e:  # a malformed message: whatever it provokes, it is only quarantined
                why = report.get("detail") or f"unreadable message: {e}"
                dl_reason = report.get("dead_letter_reason")
                return None, RouteRequest(kind, report.get("queue", ""), None, why, dead_letter_reason=dl_reason), raw
            reason = report.get("detail") or report.get("dead_letter_reason") or ""
            return (
                message,
                RouteRequest(
                    kind,
                    report.get("queue", ""),
                    job,
                    reason=reason,
                    dead_letter_reason=report.get("dead_letter_reason"),
                ),
                raw,
            )
        try:
            fields = report["job"]
            queue = fields.get("queue_name")
            job = check_fields(fields, delivered_on=queue if isinstance(queue, str) else "")  # every field's type
            message = Message(**{**fields, "args": tuple(fields["args"])})
        except Exception as e:  # a report this router cannot read: quarantined, never retried
            raw = json.dumps(report, default=str).encode()
            return None, RouteRequest(kind, "", None, reason=f"unreadable report: {type(e).__name__}: {e}"), raw
        return (
            message,
            RouteRequest(
                kind,
                message.queue_name,
                job,
                reason=report.get("reason") or "",
                node=report.get("node"),
                to_queue=report.get("to"),
            ),
            message.encode(),
        )

    # -- carrying out -------------------------------------------------------------------------------------

    def _record(
        self, job_id: str, request: RouteRequest, route: Route, report_id: str, *, requeued: bool = False
    ) -> dict[str, Any]:
        """Note ``route`` in the job's record. ``requeued``: an operator's requeue of a job read as quarantined,
        which must still be (two requests for one job, handled at once, would both dispatch it)."""
        now = self.clock()

        def mutate(record: dict[str, Any]) -> None:
            if any(_decided(r, report_id) for r in record.setdefault("routing", [])):
                return
            if requeued and status_of(record) is not JobStatus.QUARANTINED:
                raise _NoLongerQuarantined(status_of(record))
            if request.dead_letter_reason == DeadLetterReason.DELIVERY_LIMIT:
                for entry in record["attempts"]:
                    if entry["outcome"] is None:
                        error = "its process died on every delivery (the broker's delivery limit)"
                        entry.update(outcome="crashed", ended_at=now, error=error)
            new = JobStatus.QUARANTINED if route.action == "quarantine" else JobStatus.QUEUED
            try:
                set_status(record, new, reason=route.reason)
            except InvalidTransition:  # e.g. still "running" in the record: it failed, then goes on
                record["status"] = JobStatus.FAILED.value
                set_status(record, new, reason=route.reason)
            record["routing"].append(
                {
                    "report": report_id,
                    "kind": request.kind,
                    "at": now,
                    "node": request.node,
                    "action": route.action,
                    "queue": route.queue,
                    "reason": route.reason,
                    "route": dataclasses.asdict(route),
                }
            )

        record, _ = self.records.update(job_id, mutate, queue=request.queue)
        return record

    def _quarantine(
        self, request: RouteRequest, route: Route, report: dict[str, Any], record: dict[str, Any] | None, raw: bytes
    ) -> None:
        job_id = request.job.job_id if request.job else None
        try:
            message: Any = json.loads(raw)
        except ValueError:
            message = None
        entry = {
            "id": entry_id(job_id, report.get("message_id"), raw),
            "job_id": job_id,
            "reason": route.reason,
            "kind": request.kind,
            "dead_letter_reason": request.dead_letter_reason,
            "queue": request.queue,
            "actor": message.get("actor_name") if isinstance(message, dict) else None,
            "quarantined_at": self.clock(),
            "message": message if isinstance(message, dict) else None,
            "raw": None if isinstance(message, dict) else base64.b64encode(raw).decode(),
            "node": request.node,
            "error": report.get("error"),
            "attempts": (record or {}).get("attempts") or report.get("attempts") or [],
            "routing": (record or {}).get("routing", []),
        }
        self.quarantine.put(entry)

    def _quarantine_unreadable(self, report: dict[str, Any], report_id: str, problem: str) -> None:
        """Set aside a report that fails ``report_problem``, whole; its job, if readable, can be requeued."""
        raw = json.dumps(report, default=str).encode()
        reason = f"unreadable report: {problem}"
        message = report.get("job") if isinstance(report.get("job"), dict) else None
        _, job_id = job_of(message)
        job_id = job_id if job_id and JOB_ID_PATTERN.fullmatch(job_id) else None
        logger.error("Report %s (job %s): %s; quarantined.", report_id, job_id or "?", reason)
        actor = (message or {}).get("actor_name")
        self.quarantine.put(
            {
                "id": entry_id(job_id, report_id, raw),
                "job_id": job_id,
                "reason": reason,
                "kind": "unreadable",
                "actor": actor if isinstance(actor, str) else None,
                "quarantined_at": self.clock(),
                "message": message if job_id else None,
                "raw": None if job_id else base64.b64encode(raw).decode(),
                "attempts": [],
                "routing": [],
            }
        )

    def _dispatch(self, message: Message, job: JobOptions, route: Route) -> Outgoing:
        changes: dict[str, Any] = {"avoid_nodes": route.avoid_nodes, "unrecorded_success": None}
        if route.reset_counters:
            changes.update(failures=0, interruptions=0)
        job = job.replace(**changes)
        if self.signer is not None:  # an operator's requeue may change what the signature covers (the expiry)
            job = job.replace(
                signature=self.signer.sign(message.actor_name, message.args, message.kwargs, job.to_options())
            )
        copy = next_message(message, job)
        copy = dataclasses.replace(copy, queue_name=route.queue)
        return self._outgoing(copy, route.queue, route.delay_s)

    def _outgoing(self, message: Message, queue: str, delay_s: float) -> Outgoing:
        routing_key = self.broker.physical(queue)
        exchange = ""
        if delay_s > 0:
            exchange = self.broker.declare_wait_bucket(wait_bucket_ms(int(delay_s * 1000)))
        return Outgoing(exchange, routing_key, message.encode(), message_id=message.message_id)

    def _queue_exists(self, queue: str | None) -> bool:
        return bool(queue) and self.broker.inspect_queue(queue) is not None


def _decided(entry: dict[str, Any], report_id: str) -> bool:
    """Whether ``entry`` of a record's ``routing`` is the counted decision about report ``report_id`` (a
    hold is not a decision)."""
    return entry.get("report") == report_id and entry.get("action") != "hold"


def _body(report: dict[str, Any]) -> bytes:
    if report.get("body_b64") is not None:
        return base64.b64decode(report["body_b64"])
    return str(report.get("body", "")).encode()


class _NoLongerQuarantined(Exception):
    """A requeue found its job's record changed since it read it as quarantined."""

    def __init__(self, status: JobStatus | None) -> None:
        super().__init__(str(status))
        self.status = status
