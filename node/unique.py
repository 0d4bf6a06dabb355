"""Unique ids (attempt ids, local ETags, blob names) and this process's id, without a system call per use.

``os.urandom`` is a system call (``getrandom``): a short job made two of them. Here 128 bits come from a
generator of this module's own, seeded from ``os.urandom`` and seeded again in every forked child (so a
worker never repeats its parent's sequence). Nothing else seeds it, so ids never repeat within a process,
and between processes a collision is as likely as between two uuid4s. Not for secrets: the ids are
unguessable only to someone who cannot read this process's memory.
"""

from __future__ import annotations

import os
import random

_rng = random.Random()

#: This process's id, kept current in forked children (read it as ``unique.pid``: a name imported from here
#: would keep the parent's).
pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()
    _rng.seed()


os.register_at_fork(after_in_child=_forked)


def unique_hex() -> str:
    """32 hex digits (128 random bits)."""
    return f"{_rng.getrandbits(128):032x}"
