"""Dramatiq's ``Callbacks`` and ``Pipelines``, run only for a message that uses them.

Dramatiq's own look up the actor and the options (and ``Pipelines`` imports ``Message``) after every
message; beside a short job that is measurable (``bench/lifecycle_cpu.py``), and almost no job uses either.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.middleware import Callbacks as _Callbacks
from dramatiq.middleware import Pipelines as _Pipelines


class Callbacks(_Callbacks):
    """``on_success`` / ``on_failure``, as Dramatiq's ``Callbacks``, when the message or its actor names one."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        options = message.options
        if "on_success" not in options and "on_failure" not in options:
            try:
                actor_options = broker.get_actor(message.actor_name).options
            except dramatiq.errors.ActorNotFound:
                return
            if not actor_options.get("on_success") and not actor_options.get("on_failure"):
                return
        super().after_process_message(broker, message, result=result, exception=exception)


class Pipelines(_Pipelines):
    """``pipe_target``, as Dramatiq's ``Pipelines``, when the message has one."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if message.options.get("pipe_target") is not None:
            super().after_process_message(broker, message, result=result, exception=exception)
