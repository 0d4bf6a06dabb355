"""JSON decoding through orjson, with integers kept exact.

orjson decodes every message envelope and record (~3-4x cheaper than ``json``), but reads an integer beyond
64 bits as a float: ``10**30`` becomes ``1e+30``, so a job's argument or result would change silently, where
plain Dramatiq (``json``) keeps it. A body with an integer of 19 digits or more (the shortest that can leave
orjson's range) is decoded with ``json`` instead; finding one is a regular-expression scan, far cheaper than
the decoding.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A run of 19+ digits that is a whole token: not part of a word, a fraction or an exponent (a string that
# merely contains one takes the slower path too, which reads it the same).
_LONG_INTEGER = re.compile(rb"(?<![\w.])\d{19,}(?![\w.])")
_LONG_INTEGER_TEXT = re.compile(r"(?<![\w.])\d{19,}(?![\w.])")


def loads(data: bytes | str) -> Any:
    """``orjson.loads(data)``, or ``json.loads`` where orjson would turn an integer into a float. Raises
    ``orjson.JSONDecodeError`` (a ``ValueError``) or, from ``json``, ``ValueError``/``RecursionError``."""
    pattern = _LONG_INTEGER if isinstance(data, bytes | bytearray) else _LONG_INTEGER_TEXT
    if pattern.search(data) is not None:
        return json.loads(data)
    return orjson.loads(data)
