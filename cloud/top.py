"""``burrow top``: queue depths, how fast they change, nodes and their slots, redrawn in place.

For operators without Grafana. Everything comes from what ``burrow queues`` and ``burrow nodes`` read (the
broker's queue counts and the node registry stream), so it needs no Prometheus and no management plugin.
The rate column is how fast a queue's ready count changes between two frames (negative: it drains); job
throughput proper is a Prometheus query (``burrow_attempts_total``), see the README.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from node.contract.registry import NodeView

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def slot_state(beat: Any) -> str:
    """A slot's state as its heartbeat tells it: ``busy``, ``idle`` or ``draining``."""
    if beat.state == "draining":
        return "draining"
    return "busy" if beat.running else "idle"


def render(
    rows: list[dict[str, Any]],
    previous: Mapping[str, int | None] | None,
    elapsed_s: float,
    views: Mapping[str, NodeView],
    now: float,
) -> list[str]:
    """One frame: a line per queue (with the ready count's change per second since ``previous``), then a
    line per node with its slots. Pure: ``burrow top`` and the tests both call it."""
    lines = [
        time.strftime("burrow top — %Y-%m-%d %H:%M:%S", time.localtime(now)),
        "",
        f"{'queue':44} {'ready':>8} {'Δ/s':>8} {'running':>8} {'slots':>6} {'dead':>8}",
    ]
    for row in rows:
        ready, before = row["ready"], (previous or {}).get(row["queue"])
        rate = "" if ready is None or before is None or elapsed_s <= 0 else f"{(ready - before) / elapsed_s:+.1f}"
        lines.append(
            f"{row['queue']:44} {'MISSING' if ready is None else ready:>8} {rate:>8} {row['running']:>8} "
            f"{row['slots']:>6} {'' if row['dead'] is None else row['dead']:>8}"
        )
    lines += ["", f"{'node':24} {'state':9} {'subcloud':12} {'seen':>6}  slots"]
    for view in sorted(views.values(), key=lambda v: (not v.live, v.node)):
        slots = ", ".join(f"{beat.slot or beat.process} {slot_state(beat)}" for beat in view.slots)
        seen = f"{max(0.0, now - view.last_seen):.0f}s"
        lines.append(f"{view.node:24} {view.state:9} {view.subcloud:12} {seen:>6}  {slots}")
    if not views:
        lines.append("(no node heard from)")
    return lines


def run(settings: Any, *, interval_s: float, frames: int | None = None, out: TextIO = sys.stdout) -> int:
    """Redraw every ``interval_s`` until Ctrl-C (or ``frames`` frames); in place on a terminal, one frame
    after another otherwise."""
    from node.contract.queues import FAILED_JOBS_QUEUE

    from .client import connect
    from .operate import queue_rows, work_queue_names
    from .registry import NodeRegistry

    broker = connect(settings)
    registry = NodeRegistry(broker.parameters, settings.queue_prefix, window_s=600, refresh_s=interval_s / 2)
    previous: dict[str, int | None] | None = None
    taken_at = time.monotonic()
    shown = 0
    try:
        names = [*work_queue_names(broker), FAILED_JOBS_QUEUE]
        while frames is None or shown < frames:
            views = registry.nodes()
            rows = queue_rows(broker, views, names)
            now_mono = time.monotonic()
            frame = render(rows, previous, now_mono - taken_at, views, time.time())
            _draw(out, frame)
            previous, taken_at, shown = {r["queue"]: r["ready"] for r in rows}, now_mono, shown + 1
            if frames is None or shown < frames:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0


def _draw(out: TextIO, lines: Iterable[str]) -> None:
    text = "\n".join(lines) + "\n"
    if out.isatty():
        out.write(CLEAR + text)
    else:
        out.write(text + "\n")
    out.flush()
