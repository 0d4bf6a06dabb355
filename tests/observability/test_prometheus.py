"""The dashboards and alert rules against a real Prometheus: it scrapes a live node (a GPU through a stand-in
NVML), a router and a private RabbitMQ with ``rabbitmq_prometheus``; after a workload made to exercise every
panel and trip every alert, each PromQL expression must return data and each alert must be pending or firing.

Prometheus is a system package (``apt-get install prometheus``, which ``make test`` runs when it is missing):
without it this test fails, it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import dramatiq
import pika
import pytest
import yaml

from cloud.routing.quarantine import Quarantine
from node.broker import QuorumRabbitmqBroker
from node.contract.topology import load_topology
from node.middleware import JobSubmission
from node.storage.records import RecordStore
from tests.conftest import wait_for
from tests.observability.test_node_resources import FAKE_NVML
from tests.rabbitmq_node import PrivateRabbitmq, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

OBSERVABILITY = Path(__file__).parents[2] / "observability"
NODE_ARGV = [sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"]
ROUTER_ARGV = [sys.executable, "-m", "dramatiq", "cloud.router", "--processes", "1", "--threads", "2"]
TOPOLOGY = """
priorities = ["urgent", "bulk", "test"]
job_types = ["sync"]

[subclouds.public]
models = ["any"]

[subclouds.acme]   # no node serves it: its queue only grows
models = ["any"]
"""


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: `make test` installs it (apt-get install prometheus)")
    return found


class Prometheus:
    """A Prometheus server on loopback with its own data directory, scraping every second."""

    def __init__(self, base: Path, scrape_configs: list[dict], rule_files: list[str]) -> None:
        base.mkdir(parents=True)
        self.port = free_port()
        config = base / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": rule_files,
                    "scrape_configs": scrape_configs,
                }
            )
        )
        self.log = base / "prometheus.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={base / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 60, "Prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5).status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every target of every panel of every shipped dashboard."""
    found = []
    for path in sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json")):
        model = json.loads(path.read_text())
        for panel in model["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.stem} / {panel['title']} / {target['refId']}", target["expr"]))
    return found


def alert_rules() -> list[dict]:
    return [
        rule
        for group in yaml.safe_load((OBSERVABILITY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]


def test_the_shipped_rules_and_configuration_pass_promtool():
    promtool = binary("promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(OBSERVABILITY / "prometheus" / "alerts.yml")], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(OBSERVABILITY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.fixture
def rabbitmq(tmp_path):
    """A private RabbitMQ with the Prometheus plugin (never enabled on the shared broker)."""
    metrics_port = free_port()
    node = PrivateRabbitmq(
        tmp_path / "rabbitmq",
        config=f"prometheus.tcp.port = {metrics_port}\nprometheus.tcp.ip = 127.0.0.1\n",
        plugins=("rabbitmq_prometheus",),
    )
    node.start()
    node.metrics_port = metrics_port
    yield node
    node.discard()  # its files are thrown away: no clean shutdown needed


def test_every_dashboard_query_and_alert_returns_data_from_a_live_node(
    rabbitmq, start_node, node_env, queue_prefix, tmp_path, storage
):
    # Given a topology whose acme subcloud has no node, a private RabbitMQ, and metrics on everywhere
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text(TOPOLOGY)
    env = {
        "AMQP_URL": rabbitmq.url,
        "BURROW_TOPOLOGY": str(topology_file),
        "OTEL_METRICS_EXPORTER": "prometheus",
        "BURROW_NODE_HEARTBEAT_S": "1",  # live for 3 s: a loaded machine that delays a beat keeps its node
        "BURROW_QUARANTINE_COUNT_S": "0.2",
    }
    topology = load_topology(topology_file)
    submitter = QuorumRabbitmqBroker(
        url=rabbitmq.url, queue_prefix=queue_prefix, middleware=[JobSubmission()], topology=topology
    )
    for name in topology.queue_names():
        submitter.declare_queue(name, ensure=True)
    actors = {
        name: dramatiq.Actor(
            lambda **kw: None,
            broker=submitter,
            actor_name=name,
            queue_name="tests",
            priority=0,
            options={"job_type": "sync"},
        )
        for name in ("counted", "fails_on_node", "checkpoints_once")
    }

    state, router_state, doomed_state = tmp_path / "state", tmp_path / "router-state", tmp_path / "doomed-state"
    prometheus = Prometheus(
        tmp_path / "prometheus",
        scrape_configs=[
            {
                "job_name": "burrow",
                "file_sd_configs": [
                    {
                        "files": [f"{d}/metrics/*.json" for d in (state, router_state, doomed_state)],
                        "refresh_interval": "1s",
                    }
                ],
            },
            {"job_name": "rabbitmq", "static_configs": [{"targets": [f"127.0.0.1:{rabbitmq.metrics_port}"]}]},
            {
                "job_name": "rabbitmq-queues",
                "metrics_path": "/metrics/detailed",
                "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"]},
                "static_configs": [{"targets": [f"127.0.0.1:{rabbitmq.metrics_port}"]}],
            },
        ],
        rule_files=[str(OBSERVABILITY / "prometheus" / "alerts.yml")],
    )
    try:
        # A node with one GPU (stand-in NVML), a router, and a second node that will vanish. One worker: every
        # job's counters then live in one process, so the second round is an increase of the same series
        start_node(
            env={
                **env,
                "PYTHONPATH": f"{FAKE_NVML}:{node_env['PYTHONPATH']}",
                "BURROW_GPUS": "auto",
                "FAKE_NVML_COUNT": "1",
            }
        )
        # (no grace for silent nodes: the doomed node is gone for good, and its give-up must be quarantined)
        router_env = {**env, "BURROW_STATE_DIR": str(router_state), "BURROW_ROUTER_SILENT_GRACE_S": "0"}
        start_node(argv=ROUTER_ARGV, env=router_env)
        doomed = start_node(
            argv=NODE_ARGV, env={**env, "BURROW_STATE_DIR": str(doomed_state), "BURROW_NODE_ID": "doomed"}
        )
        wait_for(lambda: prometheus.value('max(burrow_registry_nodes{state="up"})') == 2, 120, "two live nodes")

        # When the second node is SIGKILLed, and one worker of the first (the supervisor restarts it)
        os.killpg(doomed.process.pid, signal.SIGKILL)
        old_pid = int((state / "metrics" / ".gpu-0.pid").read_text())
        os.kill(old_pid, signal.SIGKILL)
        wait_for(
            lambda: (p := state / "metrics" / ".gpu-0.pid").exists() and int(p.read_text()) != old_pid,
            60,
            "the restarted worker",
        )
        wait_for(lambda: prometheus.value('max(burrow_registry_nodes{state="silent"})') == 1, 60, "a silent node")

        # and two rounds of work run (a counter's first sample is not an increase: the second round is)
        records, quarantine = RecordStore(storage), Quarantine(storage)
        for round_ in (1, 2):
            ok = [
                actors["counted"].send_with_options(
                    kwargs={"job_key": f"ok-{round_}-{n}"}, subcloud="public", priority=("urgent", "bulk")[n % 2]
                )
                for n in range(4)
            ]
            bad = actors["fails_on_node"].send_with_options(
                kwargs={"job_key": f"bad-{round_}", "bad_node": "*"}, subcloud="public", priority="urgent"
            )
            saved = actors["checkpoints_once"].send_with_options(kwargs={"job_key": f"cp-{round_}"}, subcloud="public")
            for n in range(3):
                actors["counted"].send_with_options(kwargs={"job_key": f"acme-{round_}-{n}"}, subcloud="acme")
            publish_raw(rabbitmq.url, f"{queue_prefix}public.sync.any.urgent", f"not a job ({round_})".encode())
            for message in [*ok, saved]:
                wait_for(
                    lambda m=message: (records.get(m.message_id) or {}).get("status") == "succeeded",
                    120,
                    f"{message.kwargs['job_key']} to succeed",
                )
            # the give-up and the malformed message's dead letter both end in the quarantine (no other node)
            wait_for(lambda r=round_: len(list(quarantine.ids())) == 2 * r, 120, f"quarantine entries {round_}")
            assert bad.message_id in set(quarantine.ids())
            # Prometheus has scraped the whole round before the next one starts
            expected = {
                'sum(burrow_attempts_total{outcome="succeeded"})': 5 * round_,
                'sum(burrow_attempts_total{outcome="failed"})': 2 * round_,
                "sum(burrow_dead_letters_total)": round_,
                "max(burrow_quarantine_entries)": 2 * round_,
                'sum(rabbitmq_detailed_queue_messages_ready{queue=~".*acme.*"})': 3 * round_,
                "sum(burrow_checkpoint_upload_duration_seconds_count)": round_,
            }
            for expr, count in expected.items():
                wait_for(lambda e=expr, c=count: prometheus.value(e) == c, 120, f"{expr} == {count}")

        # Then no stale target is left: the supervisor and its restarted worker, each once, both up
        assert prometheus.value('count(up{job="burrow", node="test-node"} == 1)') == 2
        assert prometheus.value('count(up{job="burrow", node="test-node"})') == 2

        # and every query of every dashboard returns data
        queries = dashboard_queries()
        assert len(queries) >= 30
        empty = [where for where, expr in queries if not prometheus.query(expr.replace("$__rate_interval", "1m"))]
        assert empty == [], f"dashboard queries that return nothing: {empty}"

        # and every alert rule is healthy, returns data and is pending or firing
        rules = alert_rules()
        assert {r["alert"] for r in rules} == {
            "BurrowBacklogGrowing",
            "BurrowFailureRateHigh",
            "BurrowNodesSilent",
            "BurrowQuarantineGrowing",
        }
        silent = [r["alert"] for r in rules if not prometheus.query(r["expr"])]
        assert silent == [], f"alert expressions that return nothing: {silent}"

        def active() -> set[str]:
            return {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}

        wait_for(lambda: active() >= {r["alert"] for r in rules}, 60, "every alert to be pending or firing")
        health = {r["name"]: r["health"] for g in prometheus.api("rules")["groups"] for r in g["rules"]}
        assert set(health.values()) == {"ok"}, health
    except BaseException:
        sys.stderr.write(prometheus.log.read_text()[-4000:])
        raise
    finally:
        prometheus.stop()
        submitter.close()


def publish_raw(url: str, queue: str, body: bytes) -> None:
    """A message no Dramatiq producer would send (it must be dead-lettered as malformed, once)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def test_the_generated_dashboards_and_rules_are_up_to_date():
    # They are generated from observability/dashboards.py and alerts.py: a hand edit, or a code change
    # without regenerating, fails here
    from observability.generate import main

    assert main(["--check"]) == 0, "run `python -m observability.generate`"


def test_the_compose_stack_mounts_files_that_exist():
    # No Docker engine here: check the compose file's structure and that everything it mounts is shipped
    compose = yaml.safe_load((OBSERVABILITY / "docker-compose.yml").read_text())
    assert {"rabbitmq", "minio", "otel-collector", "prometheus", "grafana"} <= set(compose["services"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (OBSERVABILITY / source).exists(), f"{name} mounts {source}, which is not in observability/"
    collector = yaml.safe_load((OBSERVABILITY / "collector" / "config.yml").read_text())
    assert collector["exporters"]["prometheus"]["endpoint"].endswith(":8889")
    provisioned = yaml.safe_load(
        (OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {json.loads(p.read_text())["panels"][1]["datasource"]["uid"]
            for p in (OBSERVABILITY / "grafana" / "dashboards").glob("*.json")}  # fmt: skip
    assert uids == {provisioned["datasources"][0]["uid"]}
