"""The node's RabbitMQ broker: quorum queues, broker-side delays, and a consumer that distrusts the envelope."""

from .consumer import DeliveredMessage, QuorumConsumer
from .quorum import PUBLISH_RETRY_DELAYS_S, QuorumRabbitmqBroker

__all__ = ["PUBLISH_RETRY_DELAYS_S", "DeliveredMessage", "QuorumConsumer", "QuorumRabbitmqBroker"]
