"""Stream jobs' partial results on the wire: one RabbitMQ stream, ``burrow.chunks``, shared by every stream job.

Why a RabbitMQ stream rather than sequence-numbered objects in storage: a chunk (a token) is a few bytes and a
model emits tens per second; a storage PUT per chunk costs 20-100 ms and a request fee on R2/S3, while a stream
append is a sub-millisecond publish. A stream keeps its messages after they are read, in order, with an offset
per message, so a caller that reconnects resumes at the offset after the last one it saw, and any number of
callers can read the same job. Chunks are retained ``CHUNKS_MAX_AGE`` (a caller later than that reads the
record and artifacts instead).

Each chunk carries its job id and a sequence number that is part of the job's checkpoints: an attempt resumed
from a checkpoint numbers its chunks from where that checkpoint was taken, so chunks an interrupted attempt sent
after its last checkpoint are sent again *with the same numbers*, and a reader keeps the first of each number.
The caller sees every number once, in order, then one end message carrying the job's final status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHUNKS_STREAM = "burrow.chunks"
#: How long chunks stay readable (RabbitMQ's x-max-age syntax).
CHUNKS_MAX_AGE = "1D"
JOB_HEADER = "x-burrow-job"
SEQ_HEADER = "x-burrow-seq"
#: The end message's sequence header: not a chunk number.
END_SEQ = -1
#: Largest chunk: every reader of the shared stream reads every job's chunks, so a big result belongs in an
#: artifact (``job.artifacts.put``), with a chunk that names it.
MAX_CHUNK_BYTES = 1024 * 1024


def stream_arguments() -> dict[str, Any]:
    return {"x-queue-type": "stream", "x-max-age": CHUNKS_MAX_AGE, "x-stream-max-segment-size-bytes": 8_000_000}


def declare_chunks_stream(channel: Any, prefix: str) -> str:
    """Declare the chunks stream (idempotent) on a pika channel and return its name."""
    name = prefix + CHUNKS_STREAM
    channel.queue_declare(queue=name, durable=True, arguments=stream_arguments())
    return name


def encode_chunk(data: Any) -> bytes:
    """A chunk as sent: bytes as they are, anything else as standard JSON (``{"json": value}``).

    Raises:
        TypeError: ``data`` is neither bytes nor a JSON value.
        ValueError: It holds NaN or an infinity, or is over ``MAX_CHUNK_BYTES``.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        body = b"b" + bytes(data)
    else:
        try:
            body = b"j" + json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        except RecursionError:
            raise ValueError("a chunk must be standard JSON: nested too deeply") from None
        except ValueError as e:
            raise ValueError(f"a chunk must be standard JSON: {e}") from None
    if len(body) - 1 > MAX_CHUNK_BYTES:
        raise ValueError(
            f"a chunk of {len(body) - 1} bytes is over {MAX_CHUNK_BYTES}: store it as an artifact "
            "(job.artifacts.put) and emit its name"
        )
    return body


def decode_chunk(body: bytes) -> Any:
    """A chunk's value; raises ``ValueError`` for what ``encode_chunk`` cannot have made."""
    if body[:1] == b"b":
        return body[1:]
    if body[:1] == b"j":
        return _json(body[1:])
    raise ValueError("not a Burrow chunk")


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors already)
        raise ValueError("nested too deeply") from None


@dataclass(frozen=True)
class StreamEnd:
    """The end of a job's stream: its final status and how many chunks it had."""

    status: str
    chunks: int
    reason: str = ""

    def encode(self) -> bytes:
        return b"e" + json.dumps({"status": self.status, "chunks": self.chunks, "reason": self.reason}).encode()

    @classmethod
    def decode(cls, body: bytes) -> StreamEnd:
        """An end message; raises ``ValueError`` for anything ``encode`` cannot have made."""
        data = _json(body[1:]) if body[:1] == b"e" else None
        if not isinstance(data, dict) or not isinstance(data.get("status"), str) or type(data.get("chunks")) is not int:
            raise ValueError("not a Burrow end message")
        return cls(status=data["status"], chunks=data["chunks"], reason=str(data.get("reason") or ""))
