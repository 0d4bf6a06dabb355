"""Shared fixtures: the real RabbitMQ, a real S3 endpoint on loopback, per-test queue namespaces, nodes.

RabbitMQ comes from ``docker-compose.test.yml`` through pytest-docker when a Docker engine answers, and from
the loopback service (``AMQP_URL``, default ``amqp://guest:guest@127.0.0.1:5672``) when it does not. If
neither is reachable the broker tests *fail* with a message saying so: they are never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pika
import psutil
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker

from node.broker import QuorumRabbitmqBroker
from node.contract.job_options import JobOptions
from node.contract.queues import WAIT_BUCKETS_MS
from node.middleware import JobSubmission
from node.settings import DEFAULT_AMQP_URL
from node.storage import LocalStorage, Storage
from tests.rabbitmq_node import free_port

ROOT = Path(__file__).resolve().parent.parent

# Actor modules declare actors on import; in the test process they go on a stub broker that knows the job
# options (the nodes under test run in their own processes with the real broker).
dramatiq.set_broker(StubBroker(middleware=[JobSubmission()]))
TEST_ACTOR_MODULES = "actors.simulation,actors.training,actors.inference,tests.workload"


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "docker-compose.test.yml")


def _rabbitmq_answers(url: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    """The URL of a running RabbitMQ: Docker's when Docker works, else the loopback service."""
    if docker_available() and not os.environ.get("AMQP_URL"):
        services = request.getfixturevalue("docker_services")
        port = services.port_for("rabbitmq", 5672)
        url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
        services.wait_until_responsive(check=lambda: _rabbitmq_answers(url), timeout=90, pause=1)
        return url
    url = os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)
    if not _rabbitmq_answers(url):
        pytest.fail(
            f"RabbitMQ is not reachable at {url.split('@')[-1]} and Docker is not available. "
            "Start it (`rabbitmq-server -detached`) or set AMQP_URL.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint on loopback (moto's threaded server)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class RestartableS3:
    """An S3 endpoint of a test's own (moto's threaded server on a fixed loopback port) that the test may stop
    and start again, keeping its buckets and objects (moto keeps them in this process), plus a bucket."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server_class = ThreadedMotoServer
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = f"s3-{uuid.uuid4().hex[:8]}"
        self.server = None
        self.start()
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=self.bucket)

    def start(self) -> None:
        self.server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def storage(self) -> Storage:
        from node.storage import open_storage

        return open_storage(f"s3://{self.bucket}", endpoint_url=self.endpoint)

    def node_env(self, **extra: str) -> dict[str, str]:
        return {
            "BURROW_STORAGE_URL": f"s3://{self.bucket}",
            "BURROW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            **extra,
        }


@pytest.fixture
def restartable_s3(monkeypatch) -> Iterator[RestartableS3]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = RestartableS3()
    yield s3
    s3.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"burrow-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def queue_prefix(amqp_url: str) -> Iterator[str]:
    """A fresh queue-name prefix; the test's queues and exchanges are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:10]}."
    yield prefix
    delete_namespace(amqp_url, prefix, QUEUES)


QUEUES = ["simulation", "training", "inference", "tests", "tests.poison", "tests.failing", "failed-jobs", "classic"]
#: Not work queues, but created in a test's namespace too (the node registry stream).
EXTRA_QUEUES = ["burrow.nodes", "burrow.chunks"]


def delete_namespace(url: str, prefix: str, queues: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    names = [prefix + q for q in queues] + [prefix + q + ".XQ" for q in queues]
    names += [prefix + q for q in EXTRA_QUEUES]
    names += [f"{prefix}burrow.wait.{ms}ms" for ms in WAIT_BUCKETS_MS]
    for name in names:
        channel.queue_delete(name)
        channel.exchange_delete(name)
    channel.exchange_delete(prefix + "burrow.dead-letter")
    channel.exchange_delete(prefix + "burrow.cancel")
    connection.close()


@pytest.fixture
def broker(amqp_url: str, queue_prefix: str) -> Iterator[QuorumRabbitmqBroker]:
    """A client broker in the test's namespace (the test process imports no actor module)."""
    broker = QuorumRabbitmqBroker(url=amqp_url, queue_prefix=queue_prefix, delivery_limit=3)
    # A consumer admits only messages for actors it knows, with arguments that fit them.
    dramatiq.actor(_tracked_stub, actor_name="tracked", queue_name="tests", broker=broker)
    dramatiq.actor(_crash_stub, actor_name="crash_always", queue_name="tests.poison", broker=broker)
    yield broker
    broker.close()


def _tracked_stub(job_key: str = "", work_s: float = 1.0) -> None:
    """Stands for ``tests.workload.tracked`` on a test's client broker."""


def _crash_stub(job_key: str = "", how: str = "sigkill") -> None:
    """Stands for ``tests.workload.crash_always`` on a test's client broker."""


def job_message(queue: str, actor: str, job_id: str, *, options: dict | None = None, **kwargs: object) -> Message:
    """A message for ``actor`` carrying job options with ``job_id`` (plus any message ``options``)."""
    return Message(
        queue_name=queue,
        actor_name=actor,
        args=(),
        kwargs=kwargs,
        options={"job": JobOptions(job_id=job_id).to_options(), **(options or {})},
    )


def send(broker: QuorumRabbitmqBroker, queue_name: str, actor_name: str, **kwargs: object) -> Message:
    """Publish a job for ``actor_name`` as ``actor.send(**kwargs)`` would."""
    return broker.enqueue(Message(queue_name=queue_name, actor_name=actor_name, args=(), kwargs=kwargs, options={}))


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def storage(storage_dir: Path) -> Storage:
    return LocalStorage(storage_dir)


@pytest.fixture
def node_env(amqp_url: str, queue_prefix: str, tmp_path: Path, storage_dir: Path) -> dict[str, str]:
    """Environment for node processes started by a test: its namespace, state dir and storage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BURROW_", "CUDA_", "PYTEST_"))}
    env.update(
        AMQP_URL=amqp_url,
        BURROW_QUEUE_PREFIX=queue_prefix,
        BURROW_STATE_DIR=str(tmp_path / "state"),
        BURROW_STORAGE_URL=storage_dir.as_uri(),
        BURROW_ACTOR_MODULES=TEST_ACTOR_MODULES,
        BURROW_GPUS="none",
        BURROW_CPU_SLOTS="2",
        BURROW_GRACE_S="5",
        BURROW_RESTART_BACKOFF_MIN_S="0.2",
        BURROW_RESTART_BACKOFF_MAX_S="2",
        BURROW_NODE_ID="test-node",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


class NodeProcess:
    """A ``burrow node`` (or ``dramatiq node.actors``) started by a test, with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        # Every process it starts inherits this: ``kill`` finds them all, even in sessions of their own.
        self.marker = uuid.uuid4().hex
        env = {**env, "BURROW_TEST_PROCESS": self.marker}
        with open(log_path, "wb") as log:
            # Its own session, so a test that fails mid-way can kill everything it started, orphans included.
            self.process = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30) -> int:
        """One SIGTERM to the main process, a grace period, then SIGKILL to whatever is left of its group."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL it and every process it started (a test's teardown: its state is thrown away, and a
        graceful drain of an idle node costs seconds of Dramatiq's one-second loops)."""
        for _ in range(10):
            victims = []
            for process in psutil.process_iter(["environ"]):
                environ = process.info.get("environ") or {}
                if environ.get("BURROW_TEST_PROCESS") == self.marker:
                    victims.append(process)
            if not victims:
                break
            for process in victims:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            if self.process.poll() is None:
                self.process.wait()  # our own child: reaped here
            _wait_dead(victims)
        self.process.wait()


def _wait_dead(processes: list[psutil.Process], timeout_s: float = 10) -> None:
    """Until each process is gone or a zombie (dead: only its reaping, by init, is left)."""
    deadline = time.monotonic() + timeout_s
    for process in processes:
        while time.monotonic() < deadline:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)


@pytest.fixture
def start_node(node_env: dict[str, str], tmp_path: Path, request) -> Iterator[Callable[..., NodeProcess]]:
    """Start ``burrow node`` (default) or any command with the test's node environment."""
    started: list[NodeProcess] = []

    def start(*args: str, argv: list[str] | None = None, env: dict[str, str] | None = None) -> NodeProcess:
        command = argv or [sys.executable, "-m", "cloud.cli", "node", *args]
        node = NodeProcess(command, {**node_env, **(env or {})}, tmp_path / f"node-{len(started)}.log")
        started.append(node)
        return node

    yield start
    for node in started:  # before the test's queues are deleted: nothing may declare them again
        node.kill()
    outcome = getattr(request.node, "rep_call", None)
    if outcome is not None and outcome.failed:
        for node in started:
            sys.stderr.write(f"--- {node.log_path} ---\n{node.output()[-6000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def consumers(amqp_url: str, queue: str) -> int:
    """How many consumers the broker has on ``queue`` (0 if it does not exist yet)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
