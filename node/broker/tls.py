"""TLS to the broker: ``amqps://`` URLs verified against a CA of the deployment's (``BURROW_AMQP_CA_FILE``).

pika already speaks TLS for ``amqps://`` with the system's CA store and checks the host name; a private CA
(a self-run RabbitMQ, a test) needs a context that trusts it. Every connection Burrow opens goes through the
broker's ``parameters`` (or, for batch publishing, ``context``), so this is the one place that decides.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pika


def context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name (against ``ca_file`` if given)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def apply_ca(parameters: list[pika.ConnectionParameters], ca_file: Path | None) -> None:
    """Make the TLS connections among ``parameters`` (``amqps://``) trust ``ca_file``."""
    if ca_file is None:
        return
    for one in parameters:
        if one.ssl_options is not None:
            one.ssl_options = pika.SSLOptions(context(ca_file))
