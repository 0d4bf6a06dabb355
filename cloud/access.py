"""Broker users per subcloud: a subcloud's nodes can take work only from their own queues.

``burrow topology apply --users`` creates, for each subcloud of the topology, the RabbitMQ user
``<prefix>node-<subcloud>`` (a new one gets a random password, printed once) and sets its permissions on the
vhost of ``AMQP_URL``, through RabbitMQ's management HTTP API (``BURROW_RABBITMQ_MANAGEMENT_URL``, with an
administrator's credentials in it):

* read (consume, ``basic.get``): the subcloud's work queues only — a node of ``acme`` cannot take a job of
  ``public``, and the broker closes its channel with ``ACCESS_REFUSED`` if it tries;
* configure (declare): its own work and dead-letter queues and what every node declares (wait queues, the
  dead-letter exchange, the registry and chunk streams, ``failed-jobs``, the cancel exchange and each worker's
  server-named queue bound to it);
* write (publish, bind): the same, and the default exchange — through which Burrow publishes retries,
  hand-backs, reports and chunks. RabbitMQ cannot restrict a default-exchange publish by queue, so a node could
  publish *into* another subcloud's queue; with signed jobs on (``BURROW_TRUSTED_KEYS``) such a message is
  dead-lettered there unless the cloud signed it, and a replayed signed job runs once (its record says so).

Hand-written over urllib3 (the management API is a handful of PUTs; no well-kept client library is worth a
dependency). Passwords are never logged; errors name the call, never the credentials.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import urllib3

from node.contract.topology import Topology
from node.settings import mask_url

from .errors import CloudError


class AccessError(CloudError):
    """The management API refused or failed a call (the message names it)."""


@dataclass(frozen=True)
class SubcloudUser:
    subcloud: str
    user: str
    password: str | None  # set only when the user was created now (shown once)
    configure: str
    write: str
    read: str


def user_name(prefix: str, subcloud: str) -> str:
    return f"{prefix}node-{subcloud}"


def permissions(prefix: str, subcloud: str) -> tuple[str, str, str]:
    """(configure, write, read) regular expressions for the nodes of ``subcloud``."""
    p, s = re.escape(prefix), re.escape(subcloud)
    work = rf"{s}\.[^.]+\.[^.]+\.[^.]+"  # {subcloud}.{job type}.{model}.{priority}
    shared = r"burrow\.(wait\.\d+ms|dead-letter|nodes|chunks)|failed-jobs(\.XQ)?"
    own = r"amq\.gen-[^.]+"  # a worker's exclusive, server-named queue for cancel broadcasts
    configure = rf"^({own}|{p}({work}(\.XQ)?|{shared}|burrow\.cancel))$"
    write = rf"^(amq\.default|{own}|{p}({work}(\.XQ)?|{shared}))$"
    read = rf"^({own}|{p}({work}|burrow\.(wait\.\d+ms|dead-letter|cancel)))$"
    return configure, write, read


class ManagementApi:
    """The few calls of RabbitMQ's management HTTP API that ``apply_users`` needs.

    Parameters:
        url: ``http(s)://user:password@host:15672`` (an administrator).
        timeout_s: Connect and read timeout per call.
    """

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AccessError(
                f"BURROW_RABBITMQ_MANAGEMENT_URL: expected http(s)://user:password@host:port, got {mask_url(url)}"
            )
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{parts.path.rstrip('/')}"
        self.shown = mask_url(url)
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self._headers = {**urllib3.make_headers(basic_auth=credentials), "Content-Type": "application/json"}
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False)

    def call(self, method: str, path: str, body: dict | None = None) -> int:
        try:
            response = self._http.request(
                method, self.base + path, body=None if body is None else json.dumps(body), headers=self._headers
            )
        except urllib3.exceptions.HTTPError as e:
            raise AccessError(f"RabbitMQ management API at {self.shown}: {type(e).__name__}") from None
        if response.status >= 400 and not (method == "GET" and response.status == 404):
            detail = response.data.decode("utf-8", "replace")[:200]
            raise AccessError(
                f"RabbitMQ management API: {method} {path.split('/')[2]}: HTTP {response.status} {detail}"
            )
        return response.status


def apply_users(api: ManagementApi, topology: Topology, *, prefix: str, vhost: str) -> list[SubcloudUser]:
    """Create (if missing) each subcloud's node user and set its permissions; idempotent."""
    done = []
    v = quote(vhost, safe="")
    for subcloud in sorted(topology.subclouds):
        user = user_name(prefix, subcloud)
        u = quote(user, safe="")
        password = None
        if api.call("GET", f"/api/users/{u}") == 404:
            password = secrets.token_urlsafe(24)
            api.call("PUT", f"/api/users/{u}", {"password": password, "tags": ""})
        configure, write, read = permissions(prefix, subcloud)
        api.call("PUT", f"/api/permissions/{v}/{u}", {"configure": configure, "write": write, "read": read})
        done.append(SubcloudUser(subcloud, user, password, configure, write, read))
    return done


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names (``/`` when it names none)."""
    path = urlsplit(amqp_url.split(";")[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"
