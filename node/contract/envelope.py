"""Distrust the envelope: check every field of a Dramatiq message a node reads, before Dramatiq sees it.

Dramatiq's own code trusts the body: it acks through the consumer of the queue the *body* names, holds a
message with ``options.eta`` unacked in memory until then, and ``str(message)`` raises when ``kwargs`` is not a
mapping. So a node decodes and checks the whole envelope first, and a message that fails is dead-lettered
once as ``malformed`` with a detail naming the field (``node.broker.consumer``).

The same checks run at submit (``check_arguments`` in ``JobSubmission``), so a bad call fails in the caller.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MalformedMessage
from . import exact_json
from .job_options import JobOptions, check_actor_options

_FIELDS = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp")
#: Longest ``message_id`` accepted (Dramatiq's are 36-character UUIDs).
MAX_MESSAGE_ID = 128


def decode_fields(body: bytes) -> dict[str, Any]:
    """Decode a message body into its fields, raising ``MalformedMessage`` naming what is wrong."""
    try:
        fields = exact_json.loads(body)  # every delivery: orjson, ~3x cheaper than json.loads
    except RecursionError:
        raise MalformedMessage("", "body is not JSON this node reads: nested too deeply") from None
    except ValueError:  # (orjson's JSONDecodeError is one)
        # What orjson refuses but json reads (NaN, a lone surrogate escape) is read as before, so that the
        # checks below name the field that is wrong.
        try:
            fields = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            raise MalformedMessage("", f"body is not JSON: {e}") from None
        except RecursionError:
            raise MalformedMessage("", "body is not JSON this node reads: nested too deeply") from None
    if not isinstance(fields, dict):
        raise MalformedMessage("", f"body must be a JSON object, got {type(fields).__name__}")
    missing = [name for name in _FIELDS if name not in fields and name != "options"]
    if missing:
        raise MalformedMessage(missing[0], "missing")
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise MalformedMessage(str(unknown[0]), "unknown message field")
    fields.setdefault("options", {})
    return fields


def check_fields(fields: Mapping[str, Any], *, delivered_on: str) -> JobOptions:
    """Check a decoded envelope that arrived on logical queue ``delivered_on``; returns its job options.

    Raises:
        MalformedMessage: A field is missing, of the wrong type, or inconsistent (names the field).
    """
    queue_name = fields["queue_name"]
    if not isinstance(queue_name, str) or queue_name != delivered_on:
        raise MalformedMessage("queue_name", f"{_short(queue_name)} but the message arrived on {delivered_on!r}")
    if not isinstance(fields["actor_name"], str) or not fields["actor_name"]:
        raise MalformedMessage("actor_name", f"must be a non-empty string, got {_short(fields['actor_name'])}")
    if not isinstance(fields["args"], list | tuple):
        raise MalformedMessage("args", f"must be a list, got {type(fields['args']).__name__}")
    kwargs = fields["kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise MalformedMessage("kwargs", "must be an object with string keys")
    message_id = fields["message_id"]
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID:
        raise MalformedMessage("message_id", f"must be a string of 1-{MAX_MESSAGE_ID} characters")
    _finite("message_timestamp", fields["message_timestamp"])
    options = fields["options"]
    if not isinstance(options, dict):
        raise MalformedMessage("options", f"must be an object, got {type(options).__name__}")
    if options.get("eta") is not None:
        _finite("options.eta", options["eta"])
    check_actor_options(options)
    return JobOptions.from_options(options, message_id=message_id)


def check_arguments(fn: Callable[..., Any], args: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise ``MalformedMessage`` when ``args``/``kwargs`` do not fit ``fn``'s signature."""
    try:
        signature = _signature(fn)
    except ValueError:  # a builtin without a signature: nothing to check
        return
    shape = _shape(fn)
    if shape is not None:  # the common case, checked with set operations; anything off is bound for its error
        positional, required, names = shape
        if len(args) <= len(positional):
            given = set(positional[: len(args)])
            if given.isdisjoint(kwargs) and names.issuperset(kwargs) and required <= given.union(kwargs):
                return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise MalformedMessage("args/kwargs", f"do not fit {getattr(fn, '__name__', 'the actor')}(): {e}") from None


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)  # computing it costs more than the bind: once per actor


@functools.lru_cache(maxsize=1024)
def _shape(fn: Callable[..., Any]) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]] | None:
    """(positional names, required names, all names) of a signature without ``*args``, ``**kwargs`` or
    positional-only parameters; ``None`` for any other (those are always checked by ``bind``)."""
    kinds = inspect.Parameter
    params = list(_signature(fn).parameters.values())
    if any(p.kind not in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) for p in params):
        return None
    positional = tuple(p.name for p in params if p.kind is kinds.POSITIONAL_OR_KEYWORD)
    required = frozenset(p.name for p in params if p.default is kinds.empty)
    return positional, required, frozenset(p.name for p in params)


def _finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedMessage(name, f"must be a number (milliseconds since the epoch), got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"
