"""``HookDispatch``: Dramatiq's signals, calling only the middleware that implement a hook (pure unit tests)."""

from __future__ import annotations

import logging

import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, SkipMessage

from node.broker.hooks import HookDispatch


class Broker(HookDispatch, StubBroker):
    pass


class Recorder(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_process_message(self, broker, message) -> None:
        self.calls.append(f"before {self.name}")

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self.calls.append(f"after {self.name}")


class Silent(Middleware):
    """Implements nothing: Dramatiq would call its no-op hooks, ``HookDispatch`` never does."""

    def __getattribute__(self, name: str):
        if name.startswith(("before_", "after_")):
            raise AssertionError(f"{name} looked up on a middleware that does not implement it")
        return super().__getattribute__(name)


class Skipping(Middleware):
    def before_process_message(self, broker, message) -> None:
        raise SkipMessage("skip")


class Failing(Middleware):
    def before_process_message(self, broker, message) -> None:
        raise RuntimeError("boom")

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        raise RuntimeError("boom after")


def test_hooks_run_in_dramatiq_order_and_others_are_not_touched() -> None:
    calls: list[str] = []
    broker = Broker(middleware=[Recorder("a", calls), Silent(), Recorder("b", calls)])
    broker.emit_before("process_message", object())
    broker.emit_after("process_message", object(), result=None)
    assert calls == ["before a", "before b", "after b", "after a"]


def test_a_middleware_added_later_is_called() -> None:
    calls: list[str] = []
    broker = Broker(middleware=[Recorder("a", calls)])
    broker.emit_before("process_message", object())
    broker.add_middleware(Recorder("late", calls))
    broker.emit_before("process_message", object())
    assert calls == ["before a", "before a", "before late"]


def test_skip_propagates_and_other_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broker = Broker(middleware=[Failing(), Recorder("a", calls)])
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("process_message", object())
        broker.emit_after("process_message", object())
    assert calls == ["before a", "after a"]  # the failure of one middleware does not stop the others
    assert [r.getMessage() for r in caplog.records] == [
        f"Unexpected failure in before_process_message of {broker.middleware[0]!r}.",
        f"Unexpected failure in after_process_message of {broker.middleware[0]!r}.",
    ]
    with pytest.raises(SkipMessage):
        Broker(middleware=[Skipping(), Recorder("b", calls)]).emit_before("process_message", object())
    assert "before b" not in calls


def test_a_signal_the_base_class_does_not_declare_goes_to_dramatiq() -> None:
    class Custom(Middleware):
        seen = False

        def before_custom_thing(self, broker) -> None:
            Custom.seen = True

    Broker(middleware=[Custom()]).emit_before("custom_thing")
    assert Custom.seen
