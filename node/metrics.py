"""The node's OpenTelemetry metrics: what happened to jobs, how long they waited and ran, checkpoint health.

Instruments come from the OpenTelemetry API: with no SDK configured (``observability.setup``) they record
nothing and cost a method call. Labels are bounded: queue, actor, job type, priority, subcloud, outcome,
action, reason — never a job id. Exported to Prometheus, ``burrow.attempts`` becomes ``burrow_attempts_total``,
``burrow.queue.wait`` (seconds) ``burrow_queue_wait_seconds_bucket`` and so on.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from opentelemetry import metrics

#: Histogram buckets (seconds) from a no-op job's milliseconds to a fine-tune's days.
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800,
    86400, 259200,
)  # fmt: skip
#: Checkpoint and artifact sizes (bytes): 1 KiB to 64 GiB.
SIZE_BUCKETS_B = tuple(float(1 << n) for n in range(10, 37, 2))

meter = metrics.get_meter("burrow.node")

attempts = meter.create_counter(
    "burrow.attempts", unit="{attempt}", description="Attempts ended, by outcome (succeeded, failed, interrupted…)"
)
decisions = meter.create_counter(
    "burrow.decisions",
    unit="{decision}",
    description="What happened next to a job (ack, retry, hand_back, give_up, dead_letter, reroute…) and its status",
)
dead_letters = meter.create_counter(
    "burrow.dead_letters", unit="{message}", description="Messages dead-lettered by a node, by reason"
)
in_flight = meter.create_up_down_counter("burrow.attempts.in_flight", unit="{attempt}", description="Attempts running")
queue_wait = meter.create_histogram(
    "burrow.queue.wait",
    unit="s",
    description="From the job's (re)publication to its attempt's start",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
)
run_duration = meter.create_histogram(
    "burrow.attempt.duration",
    unit="s",
    description="How long an attempt ran, by outcome",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
)
checkpoint_duration = meter.create_histogram(
    "burrow.checkpoint.upload.duration",
    unit="s",
    description="Checkpoint upload time, snapshot to stored manifest",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
)
checkpoint_bytes = meter.create_counter(
    "burrow.checkpoint.upload.size", unit="By", description="Checkpoint bytes stored"
)
checkpoint_failures = meter.create_counter(
    "burrow.checkpoint.upload.failures", unit="{upload}", description="Checkpoint uploads that failed"
)


@lru_cache(maxsize=1024)
def job_labels(queue: str, actor: str, job_type: str, priority: str, subcloud: str) -> dict[str, Any]:
    """The label set of a job (cached: the same few combinations recur for every job)."""
    return {
        "queue": queue,
        "actor": actor,
        "job_type": job_type,
        "priority": priority,
        "subcloud": subcloud or "public",
    }


def labels_of(job: Any, queue: str, actor: str) -> dict[str, Any]:
    """The label set of ``job`` (``JobOptions``) delivered on ``queue`` to ``actor``."""
    return job_labels(queue, actor, job.job_type or "", job.priority or "", job.subcloud or "")


def prime() -> None:
    """Export the unlabelled counters from boot, at zero: before the first upload (or failure) a dashboard's
    rate over them reads 0 rather than "no data", and the first event counts as an increase."""
    checkpoint_failures.add(0)
    checkpoint_bytes.add(0)
