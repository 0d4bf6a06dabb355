"""An inference-like job for the short, synchronous path: a tiny seeded bigram "language model".

It is deterministic (the same prompt and settings always give the same completion), quick, and stores its
completion as an artifact before the message is acked.
"""

from __future__ import annotations

import hashlib
import json
import random

import dramatiq

from node.job import InvalidInput, current_job

QUEUE = "inference"

VOCABULARY = [
    "the",
    "node",
    "runs",
    "a",
    "job",
    "from",
    "the",
    "queue",
    "and",
    "stores",
    "its",
    "checkpoint",
    "before",
    "the",
    "broker",
    "hands",
    "the",
    "work",
    "to",
    "another",
    "machine",
    "when",
    "a",
    "gpu",
    "vanishes",
    "so",
    "nothing",
    "is",
    "lost",
]


def complete(prompt: str, max_tokens: int, temperature: float = 1.0) -> list[str]:
    """Generate ``max_tokens`` words continuing ``prompt`` (pure and deterministic)."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    words = prompt.split() or ["the"]
    out: list[str] = []
    previous = words[-1]
    for _ in range(max_tokens):
        # Bigram preference: words sharing a letter with the previous one weigh more; temperature flattens it.
        weights = [(1.0 + len(set(previous) & set(w))) ** (1.0 / max(temperature, 1e-3)) for w in VOCABULARY]
        previous = rng.choices(VOCABULARY, weights)[0]
        out.append(previous)
    return out


@dramatiq.actor(queue_name=QUEUE, ttl_s=300.0, max_failures=2, min_backoff_s=1.0, max_backoff_s=10.0)
def infer(prompt: str, max_tokens: int = 32, temperature: float = 1.0) -> None:
    """Complete ``prompt`` and store ``completion.json``.

    Raises:
        InvalidInput: ``prompt`` is not a string or ``max_tokens`` is not in 1..4096 (not retried).
    """
    if not isinstance(prompt, str):
        raise InvalidInput(f"prompt must be a string, got {type(prompt).__name__}")
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
        raise InvalidInput(f"max_tokens must be an integer in 1..4096, got {max_tokens!r}")
    job = current_job()
    tokens = complete(prompt, max_tokens, temperature)
    job.artifacts.put("completion.json", json.dumps({"prompt": prompt, "completion": " ".join(tokens)}).encode())
