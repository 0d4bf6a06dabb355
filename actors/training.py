"""A long, training-like job: seeded SGD whose whole state is checkpointed, so results are bit-identical.

The model fits a linear regression on an endless stream of synthetic samples drawn from a seeded generator.
The state — weights, step and the generator's own state — is small JSON; floats round-trip exactly through
``repr``, so a run interrupted any number of times and resumed from checkpoints ends with exactly the same
weights as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from typing import Any

import dramatiq

from node.job import current_job

logger = logging.getLogger(__name__)

QUEUE = "training"


def initial_state(seed: int, dim: int) -> dict[str, Any]:
    """The state before step 0: zero weights and a generator seeded with ``seed``."""
    rng = random.Random(seed)
    true_weights = [rng.uniform(-1, 1) for _ in range(dim)]
    return {"seed": seed, "step": 0, "weights": [0.0] * dim, "true": true_weights, "rng": _rng_state(rng)}


def train_steps(state: dict[str, Any], steps: int, learning_rate: float = 0.01) -> dict[str, Any]:
    """Advance ``state`` by ``steps`` SGD steps (pure: returns a new state)."""
    rng = random.Random()
    rng.setstate(_rng_tuple(state["rng"]))
    weights = list(state["weights"])
    true_weights = state["true"]
    for _ in range(steps):
        x = [rng.gauss(0.0, 1.0) for _ in weights]
        y = sum(t * xi for t, xi in zip(true_weights, x, strict=True)) + rng.gauss(0.0, 0.1)
        error = sum(w * xi for w, xi in zip(weights, x, strict=True)) - y
        weights = [w - learning_rate * error * xi for w, xi in zip(weights, x, strict=True)]
    return {**state, "step": state["step"] + steps, "weights": weights, "rng": _rng_state(rng)}


def encode(state: dict[str, Any]) -> bytes:
    return json.dumps(state).encode()


def decode(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def fingerprint(weights: list[float]) -> str:
    """A digest of the exact bits of the weights."""
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def _rng_tuple(state: list[Any]) -> tuple:
    return (state[0], tuple(state[1]), state[2])


@dramatiq.actor(queue_name=QUEUE, checkpoint_every_s=30.0)
def train(seed: int, steps: int, dim: int = 8, chunk: int = 100) -> None:
    """Train for ``steps`` SGD steps, checkpointing every ``checkpoint_every_s`` and resuming from the latest.

    Args:
        seed: Seed for the data stream and the true weights.
        steps: Total steps.
        dim: Number of weights.
        chunk: Steps between checks of ``should_stop`` and ``checkpoint.due()``.
    """
    job = current_job()
    saved = job.checkpoint.load()
    state = decode(saved) if saved is not None else initial_state(seed, dim)
    resumed_from = state["step"]
    if resumed_from:
        logger.info("Job %s resumes from step %d of %d.", job.job_id, resumed_from, steps)
    while state["step"] < steps:
        state = train_steps(state, min(chunk, steps - state["step"]))
        job.progress(state["step"] / steps)
        if job.should_stop:
            job.checkpoint.save(encode(state), step=state["step"])
            job.hand_back()
        if job.checkpoint.due():
            job.checkpoint.save(encode(state), step=state["step"])
    result = {
        "seed": seed,
        "steps": steps,
        "weights": state["weights"],
        "fingerprint": fingerprint(state["weights"]),
        "resumed_from": resumed_from,
        "attempt": job.attempt,
    }
    job.artifacts.put("result.json", json.dumps(result).encode())
