"""A stream job's partial results, sent by the attempt that produces them (the contract: ``node.contract.streams``).

Each chunk is published with confirms before ``emit`` returns, so every chunk counted in a checkpoint is in the
stream before the checkpoint is; an attempt resumed from that checkpoint numbers its chunks on from there.
"""

from __future__ import annotations

import threading
from typing import Any

from ..contract.streams import CHUNKS_STREAM, END_SEQ, JOB_HEADER, SEQ_HEADER, StreamEnd, encode_chunk, stream_arguments


class ChunkWriter:
    """Publishes one job's chunks, numbered from ``next_seq``.

    Parameters:
        broker: A ``QuorumRabbitmqBroker`` (its thread's channel publishes, with confirms).
        job_id: The job.
    """

    def __init__(self, broker: Any, job_id: str) -> None:
        self.broker = broker
        self.job_id = job_id
        self.stream = broker.physical(CHUNKS_STREAM)
        self.next_seq = 0
        self._lock = threading.Lock()

    def emit(self, data: Any) -> int:
        """Send ``data`` (bytes, or any JSON value) as the next chunk; returns its sequence number."""
        body = encode_chunk(data)
        with self._lock:
            seq = self.next_seq
            self._publish(body, seq)
            self.next_seq = seq + 1
        return seq

    def end(self, status: str, reason: str = "") -> None:
        """Tell readers the job is over (after its record says so)."""
        self._publish(StreamEnd(status=status, chunks=self.next_seq, reason=reason).encode(), END_SEQ)

    def _publish(self, body: bytes, seq: int) -> None:
        self.broker.publish_plain(
            self.stream,
            body,
            headers={JOB_HEADER: self.job_id, SEQ_HEADER: seq},
            declare_with=stream_arguments(),
        )
