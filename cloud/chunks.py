"""Reading a stream job's chunks (the contract: ``node.contract.streams``): in order, each once, then the end.

The reader consumes the shared chunks stream from the job's submission time, keeps the chunks of its job,
and yields each sequence number once, in order; a chunk sent again by a resumed attempt (same number) is
skipped. It remembers the stream offset it reached, so a lost connection resumes right after it; a caller
that comes back later passes ``from_seq`` (the first chunk it has not seen).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions

from node.contract.record import LATEST_TIME
from node.contract.streams import (
    END_SEQ,
    JOB_HEADER,
    SEQ_HEADER,
    StreamEnd,
    declare_chunks_stream,
    decode_chunk,
)

from .errors import CloudError

logger = logging.getLogger(__name__)

#: Chunks are read from this long before the job's submission (clocks of submitter and broker differ).
CLOCK_SLACK_S = 60.0
#: With no chunk for this long, the reader looks at the job's record (its node may have died after
#: recording the end but before sending the end message).
QUIET_CHECK_S = 2.0


class JobStreamEnded(CloudError):
    """The job ended without succeeding (its stream ends with this status)."""

    def __init__(self, job_id: str, status: str, reason: str) -> None:
        super().__init__(f"job {job_id} ended {status}" + (f": {reason}" if reason else ""))
        self.status = status
        self.reason = reason


def read_chunks(
    parameters: pika.ConnectionParameters,
    prefix: str,
    job_id: str,
    *,
    since: float | None,
    from_seq: int = 0,
    settled: Callable[[], str | None],
    timeout_s: float | None = None,
) -> Iterator[Any]:
    """Yield job ``job_id``'s chunks from number ``from_seq`` on, in order, each once.

    Args:
        since: The job's submission time (Unix seconds), or ``None`` to read the stream from its start.
        settled: Returns the job's status once it is settled (from its record), else ``None``.
        timeout_s: Give up (``TimeoutError``) when nothing arrives for this long.

    Raises:
        JobStreamEnded: The job ended failed, expired or cancelled (after every chunk it sent).
    """
    offset: Any = "first"
    if isinstance(since, int | float) and CLOCK_SLACK_S < since < LATEST_TIME:  # (else: a damaged record)
        offset = datetime.datetime.fromtimestamp(since - CLOCK_SLACK_S, tz=datetime.UTC).replace(tzinfo=None)
    expected = from_seq
    pending: dict[int, Any] = {}
    reread = False
    last_data = time.monotonic()
    settled_seen_at: float | None = None
    while True:
        try:
            connection = pika.BlockingConnection(parameters)
        except (pika.exceptions.AMQPError, OSError) as e:
            raise CloudError(f"cannot read the chunks of job {job_id}: {type(e).__name__} {e}") from None
        try:
            channel = connection.channel()
            stream = declare_chunks_stream(channel, prefix)
            channel.basic_qos(prefetch_count=500)
            for method, properties, body in channel.consume(
                stream, arguments={"x-stream-offset": offset}, inactivity_timeout=0.5
            ):
                now = time.monotonic()
                if method is None:
                    if now - last_data >= QUIET_CHECK_S:
                        status = settled()
                        if status is not None:
                            settled_seen_at = settled_seen_at or now
                            if status == "succeeded" and now - settled_seen_at >= QUIET_CHECK_S:
                                return  # recorded, but its end message never came: its node died just then
                            if status != "succeeded" and now - settled_seen_at >= QUIET_CHECK_S:
                                raise JobStreamEnded(job_id, status, "")
                    if timeout_s is not None and now - last_data >= timeout_s:
                        raise TimeoutError(f"no chunk of job {job_id} for {timeout_s}s")
                    continue
                channel.basic_ack(method.delivery_tag)
                headers = properties.headers or {}
                at = headers.get("x-stream-offset")
                if isinstance(at, int):
                    offset = at + 1
                if _text(headers.get(JOB_HEADER)) != job_id:
                    continue
                last_data = now
                seq = headers.get(SEQ_HEADER)
                if seq == END_SEQ:
                    try:
                        end = StreamEnd.decode(body)
                    except ValueError as e:  # not from a node: the good one (or the settled record) still ends it
                        logger.warning("Job %s: skipped an end message that is not one (%s).", job_id, e)
                        continue
                    if expected < end.chunks and not reread:
                        # A gap at the end: a reader that attached while the stream was being written can miss
                        # its first chunks (seen once in many runs on RabbitMQ 3.10). Read it again from its
                        # start, once; what was yielded already is skipped by number.
                        logger.info("Job %s: chunk %d on missing at the end; reading again.", job_id, expected)
                        reread, offset = True, "first"
                        break
                    if pending or expected < end.chunks:
                        logger.warning("Job %s ended with chunks missing from %d.", job_id, expected)
                    if end.status != "succeeded":
                        raise JobStreamEnded(job_id, end.status, end.reason)
                    return
                if not isinstance(seq, int) or seq < expected or seq in pending:
                    continue  # sent again by a resumed attempt, or already waiting to be yielded
                try:
                    pending[seq] = decode_chunk(body)
                except ValueError as e:  # a good chunk of this number (a resumed attempt's) is still taken
                    logger.warning("Job %s: skipped chunk %d, which is not one (%s).", job_id, seq, e)
                while expected in pending:
                    yield pending.pop(expected)
                    expected += 1
        except TimeoutError:
            raise  # the caller's timeout (an OSError too, so it must not read as a lost connection)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, OSError) as e:
            logger.info("Chunk stream of job %s lost (%s); reading on from offset %s.", job_id, e, offset)
        finally:
            try:
                connection.close()
            except Exception:  # already closed (or closing drops the deliveries pika still buffers)
                pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
