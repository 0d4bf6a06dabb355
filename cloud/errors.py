"""The cloud side's errors, under ``node.errors.BurrowError``."""

from __future__ import annotations

from node.errors import BurrowError


class CloudError(BurrowError):
    """Something went wrong on the cloud side (submitting, routing, operating)."""


class BrokerUnreachable(CloudError):
    """RabbitMQ did not answer (the message names the masked URL and why)."""
