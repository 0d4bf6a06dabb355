"""Dramatiq's worker log lines as Burrow's processes (nodes, the router) want them: no payloads, no false alarms.

Dramatiq's worker prints a failing message with its arguments, and warns about things that are normal here; a
logging filter on its two thread loggers changes that (Dramatiq has no setting for it).
"""

from __future__ import annotations

import logging

from dramatiq import Message
from dramatiq.broker import MessageProxy

from .errors import StorageUnavailable

#: Dramatiq's warning for an actor's return value when its ``Results`` middleware is absent (formatted with
#: the actor's name before it is logged).
_DISCARDED = "returned a value that is not None, and you haven't added the Results middleware"


class _WorkerLines(logging.Filter):
    """Dramatiq's worker log lines, as Burrow wants them.

    Two per-job warnings that are wrong under a node are dropped. "Message … was skipped.": the lifecycle
    skips every message it carries out without running (a retry, a hand-back, a lease check) and logs why
    itself. "Actor … returned a value … the value has been discarded": it was not, the lifecycle keeps it as
    the job's result (Dramatiq looks for its own ``Results`` middleware only).

    An actor that raised ``StorageUnavailable`` (its store failed under it) is logged in one line at WARNING:
    the job is handed back, not failed.

    A message in any other line ("Failed to process message %s …") is shown as its actor and id, not as
    Dramatiq prints it, with its arguments: a job's payload (a prompt, a credential, 256 KiB of input) does
    not belong in the log, once per failure.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Message %s was skipped." or _DISCARDED in str(record.msg):
            return False
        if record.exc_info and isinstance(record.exc_info[1], StorageUnavailable):
            # The store failed, not the job: the lifecycle hands it back and says so; one line, no traceback.
            job = record.args[0] if isinstance(record.args, tuple) and record.args else "a job"
            record.msg, record.args = "%s: its storage failed (%s); handing it back.", (job, record.exc_info[1])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if isinstance(record.args, tuple) and any(isinstance(a, Message | MessageProxy) for a in record.args):
            record.args = tuple(
                f"{a.actor_name}[{a.message_id}]" if isinstance(a, Message | MessageProxy) else a for a in record.args
            )
        return True


def install() -> None:
    """Filter this process's Dramatiq worker and consumer thread log lines (``_WorkerLines``); idempotent."""
    for name in ("dramatiq.worker.WorkerThread", "dramatiq.worker.ConsumerThread"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WorkerLines) for f in logger.filters):
            logger.addFilter(_WorkerLines())
