"""A first real workload: a seeded Monte Carlo simulation that does honest CPU work.

``simulate`` estimates π by sampling points in the unit square with a seeded generator, so the same seed
and step count always give the same answer on any node. The result goes to storage as
``jobs/<job_id>/artifacts/result.json`` before the message is acked.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time

import dramatiq

from node.job import InvalidInput, current_job

logger = logging.getLogger(__name__)

QUEUE = "simulation"


def estimate_pi(seed: int, samples: int) -> tuple[float, int]:
    """Return (estimate, hits) for ``samples`` seeded draws; pure and deterministic."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(samples):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            hits += 1
    return 4.0 * hits / samples, hits


@dramatiq.actor(queue_name=QUEUE)
def simulate(seed: int, samples: int = 1_000_000) -> None:
    """Estimate π from ``samples`` seeded draws and store the result.

    Args:
        seed: Generator seed; equal seeds give bit-identical results.
        samples: Number of points drawn (must be positive).
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples <= 0:
        raise InvalidInput(f"samples must be a positive integer, got {samples!r}")
    job = current_job()
    job_id = job.job_id
    started = time.time()
    estimate, hits = estimate_pi(seed, samples)
    result = {
        "job_id": job_id,
        "seed": seed,
        "samples": samples,
        "hits": hits,
        "estimate": estimate,
        "node_id": job.node_id,
        "slot": job.slot,
        "pid": os.getpid(),
        "seconds": round(time.time() - started, 3),
    }
    job.artifacts.put("result.json", json.dumps(result).encode())
    logger.info("Job %s: pi ~ %.6f from %d samples in %.2fs", job_id, estimate, samples, result["seconds"])
