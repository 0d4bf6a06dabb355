"""Job inputs passed by storage reference: what is too big for a message (the submit API's payload limit).

A submitter stores the bytes once with ``cloud.submit.Client.put_input`` and passes the returned reference
(``inputs/<sha256>``, content-addressed so storing the same input twice stores it once) as an ordinary
argument; the actor reads it with ``current_job().inputs.get(ref)`` or ``.download(ref, path)``.
"""

from __future__ import annotations

import hashlib

INPUTS_PREFIX = "inputs/"


def input_key(data: bytes) -> str:
    return INPUTS_PREFIX + hashlib.sha256(data).hexdigest()


def check_reference(ref: object) -> str:
    """Return ``ref`` if it names a stored input, else raise ``ValueError`` saying why."""
    if not isinstance(ref, str) or not ref.startswith(INPUTS_PREFIX) or len(ref) != len(INPUTS_PREFIX) + 64:
        raise ValueError(f"{ref!r} is not an input reference (inputs/<sha256>, from Client.put_input)")
    if any(c not in "0123456789abcdef" for c in ref[len(INPUTS_PREFIX) :]):
        raise ValueError(f"{ref!r} is not an input reference (inputs/<sha256>, from Client.put_input)")
    return ref
