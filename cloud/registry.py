"""Reading the node registry: the heartbeats stream, folded into one view per node (``node.contract.registry``).

A stream has no "end" to read to, so a read first publishes a *probe* (a message only this reader knows)
and reads until it comes back: everything published before it has then been seen, however busy the stream.
Reads resume from the last offset seen, so a router that refreshes often reads only what is new.

Node clocks are not trusted (consumer machines drift; WSL2 guests fall behind after the host sleeps): a
heartbeat's time is kept within what this reader's own clock knows of it. It was published before this
read's probe, and — read after an earlier read — after that read's probe; a heartbeat claiming a time
outside those bounds is moved to the nearest one. So a node whose clock is behind is live as soon as a beat
of it arrives in a later read, and one whose clock is ahead does not look live after it died.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import threading
import time
import uuid
from collections.abc import Callable

import pika
import pika.exceptions

from node.contract.registry import Heartbeat, NodeView, fold
from node.middleware.heartbeat import declare_nodes_stream

from .errors import CloudError

#: How long a read waits for its own probe before it reports the registry unreadable.
PROBE_PATIENCE_S = 15.0


class NodeRegistry:
    """The live and recently seen nodes, from the registry stream.

    Parameters:
        parameters: pika connection parameters (one, or a list to fail over).
        prefix: The deployment's queue prefix.
        window_s: How far back the first read goes (nodes silent for longer are forgotten).
        refresh_s: ``nodes()`` reuses a read younger than this.
        clock: Wall clock (Unix seconds).
    """

    def __init__(
        self,
        parameters,
        prefix: str = "",
        *,
        window_s: float = 3600.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.parameters = parameters
        self.prefix = prefix
        self.window_s = window_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._beats: dict[tuple[str, str, str], Heartbeat] = {}
        self._next_offset: int | None = None
        self._probed_at: float | None = None  # (this reader's clock) just before the last read's probe
        self._read_at: float | None = None
        self._lock = threading.RLock()

    def nodes(self) -> dict[str, NodeView]:
        """Every node heard from within the window, by id (reads the stream if the last read is stale).

        Thread-safe: a router's worker threads and its housekeeping share one registry."""
        with self._lock:
            if self._read_at is None or time.monotonic() - self._read_at >= self.refresh_s:
                self.refresh()
            return fold(list(self._beats.values()), now=self.clock())

    def live_nodes(self) -> list[NodeView]:
        return [view for view in self.nodes().values() if view.live]

    def refresh(self) -> None:
        """Read what was published since the last read (or within the window, the first time)."""
        try:
            connection = pika.BlockingConnection(self.parameters)
        except (pika.exceptions.AMQPError, OSError) as e:
            raise CloudError(f"cannot read the node registry: {type(e).__name__} {e}".strip()) from None
        try:
            self._read(connection)
        except pika.exceptions.AMQPError as e:
            raise CloudError(f"cannot read the node registry: {type(e).__name__} {e}".strip()) from None
        finally:
            try:
                connection.close()
            except Exception:  # already closed by the broker: nothing to release
                pass
        self._read_at = time.monotonic()
        horizon = self.clock() - self.window_s
        self._beats = {key: beat for key, beat in self._beats.items() if beat.at >= horizon}

    def _read(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        stream = declare_nodes_stream(channel, self.prefix)
        channel.confirm_delivery()
        probe = uuid.uuid4().hex
        # Every beat read before the probe was published before it; after the last read's probe, if any.
        earliest, probing = self._probed_at, self.clock()
        channel.basic_publish("", stream, json.dumps({"probe": probe}).encode(), pika.BasicProperties(delivery_mode=2))
        latest = self.clock()
        channel.basic_qos(prefetch_count=1000)
        if self._next_offset is None:
            since = datetime.datetime.fromtimestamp(max(0.0, self.clock() - self.window_s), tz=datetime.UTC)
            offset: object = since.replace(tzinfo=None)
        else:
            offset = self._next_offset
        deadline = time.monotonic() + PROBE_PATIENCE_S
        for method, properties, body in channel.consume(
            stream, arguments={"x-stream-offset": offset}, inactivity_timeout=1.0
        ):
            if method is None:
                if time.monotonic() > deadline:
                    raise CloudError(f"the node registry stream {stream!r} did not return this reader's probe")
                continue
            channel.basic_ack(method.delivery_tag)
            at = (properties.headers or {}).get("x-stream-offset")
            if isinstance(at, int):
                self._next_offset = at + 1
            if body.startswith(b'{"probe"') and probe.encode() in body:
                break
            beat = Heartbeat.decode(body)
            if beat is not None:
                sent = min(beat.at, latest) if earliest is None else min(max(beat.at, earliest), latest)
                if sent != beat.at:
                    beat = dataclasses.replace(beat, at=sent)
                key = beat.key
                if key not in self._beats or beat.at >= self._beats[key].at:
                    self._beats[key] = beat
        self._probed_at = probing
        # No ``channel.cancel()``: pika rejects the deliveries it still buffers, which a stream refuses by
        # closing the connection. Closing the connection (``refresh``) simply drops them.
