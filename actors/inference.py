"""Inference-like jobs: a tiny seeded bigram "language model", for the sync path and for streaming tokens.

Deterministic (the same prompt and settings always give the same completion) and quick. ``infer`` returns its
completion (the job's result, kept in its record); ``generate`` streams it token by token and checkpoints
every few tokens, so a generation interrupted on one node resumes on another and its caller sees every token
once, in order.
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


def _check(prompt: object, max_tokens: object) -> None:
    if not isinstance(prompt, str):
        raise InvalidInput(f"prompt must be a string, got {type(prompt).__name__}")
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
        raise InvalidInput(f"max_tokens must be an integer in 1..4096, got {max_tokens!r}")


@dramatiq.actor(queue_name=QUEUE, job_type="sync", ttl_s=300.0, max_failures=2, min_backoff_s=1.0, max_backoff_s=10.0)
def infer(prompt: str, max_tokens: int = 32, temperature: float = 1.0) -> dict:
    """Complete ``prompt``; returns ``{"prompt", "completion"}`` (the job's result).

    Raises:
        InvalidInput: ``prompt`` is not a string or ``max_tokens`` is not in 1..4096 (not retried).
    """
    _check(prompt, max_tokens)
    return {"prompt": prompt, "completion": " ".join(complete(prompt, max_tokens, temperature))}


@dramatiq.actor(queue_name=QUEUE, job_type="stream", ttl_s=3600.0, max_failures=2, checkpoint_every_s=5.0)
def generate(prompt: str, max_tokens: int = 64, temperature: float = 1.0, checkpoint_every: int = 8) -> dict:
    """Stream the completion of ``prompt`` token by token (``job.emit``), checkpointing every few tokens.

    Returns ``{"tokens": n}``; the caller reads the tokens with ``handle.stream()``.
    """
    _check(prompt, max_tokens)
    job = current_job()
    tokens = complete(prompt, max_tokens, temperature)
    done = int(json.loads(job.checkpoint.load() or b"0"))  # tokens sent before the checkpoint resumed from
    for index in range(done, max_tokens):
        if job.should_stop:
            job.checkpoint.save(json.dumps(index).encode())
            job.hand_back()
        job.emit(tokens[index])
        if (index + 1) % max(1, checkpoint_every) == 0:
            job.checkpoint.save(json.dumps(index + 1).encode())
    return {"tokens": max_tokens}
