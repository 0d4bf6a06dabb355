"""The node registry against nodes whose clocks are wrong (consumer machines drift; a WSL2 guest falls behind
after its host slept): liveness follows what the reader's own clock knows, not the time a heartbeat claims."""

from __future__ import annotations

import time

import pika
import pytest

from cloud.registry import NodeRegistry
from node.contract.registry import Heartbeat
from node.middleware.heartbeat import declare_nodes_stream

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def publish(amqp_url: str, prefix: str, node: str, skew_s: float) -> None:
    """One heartbeat of ``node``, stamped by a clock ``skew_s`` off."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    stream = declare_nodes_stream(channel, prefix)
    channel.confirm_delivery()
    beat = Heartbeat(node=node, process="cpu-0/1", queues=("tests",), at=time.time() + skew_s, interval_s=10)
    channel.basic_publish("", stream, beat.encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()


def test_a_node_whose_clock_is_two_minutes_behind_is_live_once_a_later_read_sees_it_beat(amqp_url, queue_prefix):
    registry = NodeRegistry(pika.URLParameters(amqp_url), queue_prefix, refresh_s=0)
    publish(amqp_url, queue_prefix, "behind", skew_s=-120)
    assert not registry.nodes()["behind"].live  # one read cannot tell an old beat from a late clock

    publish(amqp_url, queue_prefix, "behind", skew_s=-120)  # its next beat, sent after that read

    assert registry.nodes()["behind"].live


def test_a_node_whose_clock_is_an_hour_ahead_is_not_live_long_after_its_last_beat(amqp_url, queue_prefix):
    later = [0.0]
    registry = NodeRegistry(
        pika.URLParameters(amqp_url), queue_prefix, refresh_s=0, clock=lambda: time.time() + later[0]
    )
    publish(amqp_url, queue_prefix, "ahead", skew_s=3600)
    assert registry.nodes()["ahead"].live

    later[0] = 100.0  # ten of its heartbeat intervals pass without a beat: it is gone

    assert not registry.nodes()["ahead"].live
