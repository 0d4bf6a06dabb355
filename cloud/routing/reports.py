"""The ``failed-jobs`` report as the router reads it: every field checked before anything else.

Nodes publish these (``node.attempt.routing.report_failed``), the router's housekeeping turns dead letters into
them (``dead_letter_report``) and ``burrow`` sends requeues; but anyone who can publish to ``failed-jobs`` can
send anything. A report that fails the check is quarantined once as unreadable, kept whole: an exception
deeper in the router would only bring the report back later, forever.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from node.contract.job_options import JOB_ID_PATTERN

KINDS = ("failed", "dead_letter", "requeue", "avoided")
#: Optional text fields (``None`` or a string).
_TEXT = ("reason", "error", "node", "queue", "dead_letter_reason", "detail", "message_id", "to", "body", "body_b64")


def report_problem(report: dict[str, Any]) -> str | None:
    """What makes ``report`` (a ``failed-jobs`` message's kwargs) unreadable, naming the field; ``None`` if
    nothing does. The job inside is checked where it is decoded (``Router._request``)."""
    kind = report.get("kind", "failed")
    if kind not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}"
    for name in _TEXT:
        if report.get(name) is not None and not isinstance(report[name], str):
            return f"{name} must be a string, got {type(report[name]).__name__}"
    for name in ("holds", "revived"):
        value = report.get(name)
        if value is not None and (type(value) is not int or value < 0):
            return f"{name} must be a whole number >= 0, got {str(value)[:40]!r}"
    attempts = report.get("attempts")
    if attempts is not None and not (isinstance(attempts, list) and all(isinstance(a, dict) for a in attempts)):
        return "attempts must be a list of objects"
    if report.get("id") is not None and not (isinstance(report["id"], str) and JOB_ID_PATTERN.fullmatch(report["id"])):
        return f"id {str(report['id'])[:80]!r} is not a quarantine id"
    if kind == "dead_letter":
        if not isinstance(report.get("queue"), str) or not report["queue"]:
            return "queue must name the queue the dead letter came from"
        if report.get("body_b64") is not None:
            try:
                base64.b64decode(report["body_b64"], validate=True)
            except (binascii.Error, ValueError) as e:
                return f"body_b64 is not base64: {e}"
    elif not isinstance(report.get("job"), dict):
        return f"job must be an object (the job's message), got {type(report.get('job')).__name__}"
    return None
