"""A private RabbitMQ node for tests that must restart or reconfigure a broker (never the shared one)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pika

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: Not /usr/sbin/rabbitmqctl: that wrapper runs as the rabbitmq user, whose HOME has another Erlang cookie.
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port *outside* the ephemeral range: a port the kernel hands out for outgoing connections may be
    taken by one (a test's own client) between this check and the broker's bind, or before a restart."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(20000, 30000) if not low <= p <= high] or list(range(1024, low))
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port outside the ephemeral range")


class PrivateRabbitmq:
    """Runs ``rabbitmq-server`` with its own node name, ports, data, config, plugins, logs and HOME.

    Parameters:
        base: A directory for all of the node's files.
        config: Extra lines for ``rabbitmq.conf``.
        plugins: Plugins to enable (``rabbitmq_prometheus``, …).
        advanced: Erlang terms for ``advanced.config`` (settings ``rabbitmq.conf`` has no key for), e.g.
            ``[{rabbit, [{channel_tick_interval, 1000}]}].``
    """

    def __init__(self, base: Path, config: str = "", plugins: tuple[str, ...] = (), advanced: str = "") -> None:
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.nodename = f"burrow-test-{uuid.uuid4().hex[:8]}@localhost"
        self.process: subprocess.Popen | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\n{config}")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "HOME": str(base),
            "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),  # not in the working directory
        }
        if advanced:
            (base / "advanced.config").write_text(advanced + "\n")
            self.env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(base / "advanced.config")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout_s: float = 60) -> None:
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """Start the server process (``wait_ready`` waits until it accepts connections)."""
        with open(self.base / "server.out", "ab") as out:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 60) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited early; see {self.base / 'server.out'}")
            try:
                pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1")).close()
                return
            except Exception:
                time.sleep(0.3)
        raise TimeoutError(f"private RabbitMQ did not accept connections within {timeout_s}s")

    def stop(self, timeout_s: float = 60) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None

    def discard(self) -> None:
        """End the node at once (SIGKILL): for a test's teardown, when its files are thrown away anyway."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` against this node (its HOME holds the Erlang cookie); returns its output."""
        done = subprocess.run(
            [RABBITMQCTL, "-q", "-n", self.nodename, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout


class PrivateCluster:
    """``size`` private nodes that form one RabbitMQ cluster at boot (classic peer discovery, a shared cookie).

    The first node boots alone; the others then boot together and join it.
    """

    def __init__(self, base: Path, size: int = 3, config: str = "") -> None:
        self.nodes = [PrivateRabbitmq(base / f"n{i}", config=config) for i in range(size)]
        cookie = uuid.uuid4().hex.upper()
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{i + 1} = {node.nodename}\n" for i, node in enumerate(self.nodes)
        )
        for node in self.nodes:
            with open(node.base / "rabbitmq.conf", "a") as conf:
                conf.write(f"\ncluster_formation.peer_discovery_backend = classic_config\n{peers}")
            path = node.base / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o400)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout_s: float = 120) -> None:
        first, rest = self.nodes[0], self.nodes[1:]
        first.start(timeout_s)
        for node in rest:
            node.launch()
        for node in rest:
            node.wait_ready(timeout_s)
        deadline = time.monotonic() + timeout_s
        while len(self.running_nodes(first)) < len(self.nodes):  # each joined, none a cluster of its own
            if time.monotonic() > deadline:
                raise TimeoutError(f"the nodes did not form one cluster within {timeout_s}s")
            time.sleep(0.5)

    def running_nodes(self, node: PrivateRabbitmq) -> list[str]:
        import json

        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def leader_of(self, queue: str) -> PrivateRabbitmq:
        """The node that leads quorum queue ``queue``."""
        for line in self.nodes[0].ctl("list_queues", "name", "leader", "--no-table-headers").splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return next(node for node in self.nodes if node.nodename == leader.strip())
        raise LookupError(f"no queue {queue!r} on the cluster")

    def discard(self) -> None:
        for node in self.nodes:
            node.discard()
