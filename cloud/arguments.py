"""Checking a job's arguments against the types its actor's parameters are annotated with, at submit.

The node checks only that arguments fit the signature (``node.contract.envelope.check_arguments``); a submitter
can say more before anything is published: ``seed: int`` given ``"x"`` is refused here, naming the
parameter, rather than failing (or, worse, running) on a node. Only plain annotations are checked — ``int``,
``float`` (an ``int`` too), ``str``, ``bool``, ``list``, ``dict``, their generic forms (``list[str]`` is a
list) and unions of them (``int | None``); anything else is taken as it comes.

``parse_json`` reads the JSON a caller hands over (``--kwargs``, JSONL rows): standard JSON only, so ``NaN``
and ``Infinity`` — which Python's ``json`` accepts and no other reader does — are refused, as is nesting
deeper than a decoder follows.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from node.errors import MalformedMessage


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not standard JSON (use null, or a string)")


def parse_json(text: str | bytes) -> Any:
    """Standard JSON from ``text``; ``ValueError`` saying what is wrong (see the module docstring)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_PLAIN = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}


@functools.lru_cache(maxsize=256)
def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s resolved annotations (once per actor, not per job)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: treat every parameter as unannotated
        return {}


def _accepted(hint: Any) -> tuple[type, ...] | None:
    """The plain types a value of ``hint`` may have, or ``None`` when ``hint`` is not checked."""
    if hint in _PLAIN:
        return (hint,)
    if hint is None or hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return (origin,)
    if origin is typing.Union or origin is types.UnionType:
        kinds: list[type] = []
        for member in typing.get_args(hint):
            accepted = _accepted(member)
            if accepted is None:
                return None  # a union with something unchecked: take the value as it comes
            kinds.extend(accepted)
        return tuple(kinds)
    return None


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, not to a job's parameters
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def check_argument_types(fn: Callable[..., Any], args: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise ``MalformedMessage`` naming the first argument whose value does not have its parameter's
    annotated type (call after ``check_arguments``: the arguments fit the signature)."""
    hints = type_hints(fn)
    if not hints:
        return
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return  # reported by the signature check
    for name, value in bound.arguments.items():
        kinds = _accepted(hints.get(name, inspect.Parameter.empty))
        if kinds is None:
            continue
        parameter = bound.signature.parameters[name]
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if not _fits(value, kinds):
            wanted = " or ".join(_PLAIN.get(k, "None") for k in kinds)
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise MalformedMessage(
                f"argument {name!r}", f"{getattr(fn, '__name__', 'the actor')}() wants {wanted}, got {shown}"
            )
