"""Burrow's Grafana dashboards, as code (Grafana Labs' ``grafana-foundation-sdk``).

``python -m observability.generate`` writes them to ``observability/grafana/dashboards/``; Grafana loads them
through ``observability/grafana/provisioning/``. Never edit the JSON: a test regenerates it and fails on a
difference, and another evaluates every query below against a real Prometheus and fails on one that returns
nothing.

Where series come from (metric names as Prometheus sees them):

- Burrow's processes (``node.metrics``, ``node.supervisor.resources``, the router): ``burrow_*``,
  ``system_*`` and ``hw_*``, with the labels ``node`` and ``subcloud`` added by discovery (or by the Collector
  from the resource attributes).
- RabbitMQ's ``rabbitmq_prometheus`` plugin: ``rabbitmq_detailed_queue_*`` per queue (the
  ``/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count`` endpoint) and
  ``rabbitmq_global_*``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from node.contract.job_options import JOB_TYPES, PRIORITIES

#: Grafana's own variable, replaced per panel; tests evaluate queries with it set to ``1m``.
RATE = "$__rate_interval"

#: Work queues are ``<prefix><subcloud>.<job type>.<model>.<priority>`` (``node.contract.topology``): this
#: reads the parts back out of RabbitMQ's ``queue`` label.
_PART = "([a-z0-9][a-z0-9_-]*)"
_QUEUE_PARTS = r"(?:.*\\.)?" + r"\\.".join([_PART, f"({'|'.join(JOB_TYPES)})", _PART, f"({'|'.join(PRIORITIES)})"])


def by_queue_parts(expr: str) -> str:
    """``expr`` (with a ``queue`` label) with ``subcloud``, ``job_type``, ``model`` and ``priority`` labels."""
    for n, label in enumerate(("subcloud", "job_type", "model", "priority"), start=1):
        expr = f'label_replace({expr}, "{label}", "${n}", "queue", "{_QUEUE_PARTS}")'
    return expr


FAILED = 'outcome=~"failed|timed_out|crashed"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: ``kind`` is ``timeseries`` or ``stat``; ``unit`` a Grafana unit id."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...] = field(default_factory=tuple)

    def panels(self) -> list[Panel]:
        return [panel for _, panels in self.rows for panel in panels]


def _histogram(metric: str, by: str, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in quantiles
    )


OVERVIEW = Dashboard(
    uid="burrow-overview",
    title="Burrow / Operations",
    description="Throughput, failures, retries, queue health, latency, dead letters and the quarantine.",
    rows=(
        (
            "Throughput and failures",
            (
                Panel(
                    "Jobs succeeded / s by job type",
                    (Query(f'sum by (job_type) (rate(burrow_attempts_total{{outcome="succeeded"}}[{RATE}]))'),),
                    unit="ops",
                ),
                Panel(
                    "Attempts / s by outcome",
                    (Query(f"sum by (outcome) (rate(burrow_attempts_total[{RATE}]))", "{{outcome}}"),),
                    unit="ops",
                ),
                Panel(
                    "Failure rate by queue",
                    (
                        Query(
                            f"sum by (queue) (rate(burrow_attempts_total{{{FAILED}}}[{RATE}]))"
                            f" / sum by (queue) (rate(burrow_attempts_total[{RATE}]))",
                            "{{queue}}",
                        ),
                    ),
                    unit="percentunit",
                    description="Failed, timed-out and crashed attempts over all attempts.",
                ),
                Panel(
                    "Retries, hand-backs, give-ups / s",
                    (
                        Query(
                            "sum by (action) "
                            f'(rate(burrow_decisions_total{{action=~"retry|hand_back|give_up|reroute"}}[{RATE}]))',
                            "{{action}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Attempts / s by subcloud and priority",
                    (
                        Query(
                            f"sum by (subcloud, priority) (rate(burrow_attempts_total[{RATE}]))",
                            "{{subcloud}} {{priority}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Running now",
                    (Query("sum by (subcloud, job_type) (burrow_attempts_in_flight)", "{{subcloud}} {{job_type}}"),),
                ),
            ),
        ),
        (
            "Queue health (RabbitMQ)",
            (
                Panel(
                    "Waiting jobs by subcloud, job type and priority",
                    (
                        Query(
                            "sum by (subcloud, job_type, priority) "
                            f"({by_queue_parts('rabbitmq_detailed_queue_messages_ready')})",
                            "{{subcloud}} {{job_type}} {{priority}}",
                        ),
                    ),
                ),
                Panel(
                    "Taken, not yet acked, by queue",
                    (Query('sum by (queue) (rabbitmq_detailed_queue_messages_unacked{queue!~".*\\\\.(XQ|DQ)"})'),),
                ),
                Panel(
                    "Consumers by queue",
                    (Query('sum by (queue) (rabbitmq_detailed_queue_consumers{queue!~".*\\\\.(XQ|DQ)"})'),),
                ),
                Panel(
                    "Dead-letter queues (depth)",
                    (Query('sum by (queue) (rabbitmq_detailed_queue_messages{queue=~".*\\\\.XQ"})', "{{queue}}"),),
                ),
            ),
        ),
        (
            "Latency",
            (
                Panel("Queue wait by job type", _histogram("burrow_queue_wait_seconds", "job_type"), unit="s"),
                Panel("Run time by actor", _histogram("burrow_attempt_duration_seconds", "actor"), unit="s"),
            ),
        ),
        (
            "Dead letters and the quarantine",
            (
                Panel(
                    "Dead-lettered by Burrow / s, by reason",
                    (Query(f"sum by (reason) (rate(burrow_dead_letters_total[{RATE}]))", "{{reason}}"),),
                    unit="ops",
                ),
                Panel(
                    "Dead-lettered by RabbitMQ / s (delivery limit, rejected)",
                    (
                        Query(
                            f"sum(rate(rabbitmq_global_messages_dead_lettered_delivery_limit_total[{RATE}]))",
                            "delivery limit",
                        ),
                        Query(f"sum(rate(rabbitmq_global_messages_dead_lettered_rejected_total[{RATE}]))", "rejected"),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Router decisions / s",
                    (Query(f"sum by (action) (rate(burrow_router_decisions_total[{RATE}]))", "{{action}}"),),
                    unit="ops",
                ),
                Panel(
                    "Quarantined jobs",
                    (Query("max(burrow_quarantine_entries)", "entries"),),
                    kind="stat",
                    description="Jobs the router could not place; inspect with `burrow quarantine`.",
                ),
            ),
        ),
    ),
)

NODES = Dashboard(
    uid="burrow-nodes",
    title="Burrow / Nodes and GPUs",
    description="Nodes by state, slots, CPU, memory and each GPU, reported once per node by its supervisor.",
    rows=(
        (
            "Nodes and slots",
            (
                Panel(
                    "Nodes by state (registry)",
                    (Query("max by (state) (burrow_registry_nodes)", "{{state}}"),),
                    description="up, draining, stopped (cleanly) or silent (vanished), as the router sees them.",
                ),
                Panel("Slots by state", (Query("sum by (state) (burrow_slot_state)", "{{state}}"),)),
                Panel(
                    "Busy slots by node",
                    (Query('sum by (node) (burrow_slot_state{state="busy"})', "{{node}}"),),
                ),
                Panel(
                    "Worker restarts (1h) by node",
                    (Query("sum by (node) (increase(burrow_worker_restarts_total[1h]))", "{{node}}"),),
                ),
            ),
        ),
        (
            "Resources",
            (
                Panel(
                    "CPU by node", (Query("avg by (node) (system_cpu_utilization)", "{{node}}"),), unit="percentunit"
                ),
                Panel(
                    "Memory by node",
                    (
                        Query(
                            "sum by (node) (system_memory_usage_bytes) / sum by (node) (system_memory_limit_bytes)",
                            "{{node}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "GPU utilisation",
                    (Query("avg by (node, hw_id) (hw_gpu_utilization)", "{{node}} {{hw_id}}"),),
                    unit="percentunit",
                ),
                Panel(
                    "GPU memory",
                    (
                        Query(
                            "sum by (node, hw_id) (hw_gpu_memory_usage_bytes)"
                            " / sum by (node, hw_id) (hw_gpu_memory_limit_bytes)",
                            "{{node}} {{hw_id}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "GPU temperature",
                    (Query('max by (node, hw_id) (hw_temperature_celsius{hw_type="gpu"})', "{{node}} {{hw_id}}"),),
                    unit="celsius",
                ),
                Panel(
                    "GPU power",
                    (Query('sum by (node) (hw_power_watts{hw_type="gpu"})', "{{node}}"),),
                    unit="watt",
                ),
            ),
        ),
    ),
)

CHECKPOINTS = Dashboard(
    uid="burrow-checkpoints",
    title="Burrow / Checkpoints",
    description="Checkpoint uploads: how long they take, how much they store, how often they fail.",
    rows=(
        (
            "Uploads",
            (
                Panel(
                    "Upload time (snapshot to stored manifest)",
                    _histogram("burrow_checkpoint_upload_duration_seconds", "node"),
                    unit="s",
                ),
                Panel(
                    "Stored bytes / s by node",
                    (Query(f"sum by (node) (rate(burrow_checkpoint_upload_size_bytes_total[{RATE}]))", "{{node}}"),),
                    unit="Bps",
                ),
                Panel(
                    "Uploads / s by node",
                    (
                        Query(
                            f"sum by (node) (rate(burrow_checkpoint_upload_duration_seconds_count[{RATE}]))",
                            "{{node}}",
                        ),
                    ),
                    unit="ops",
                ),
                Panel(
                    "Failed uploads / s by node",
                    (
                        Query(
                            f"sum by (node) (rate(burrow_checkpoint_upload_failures_total[{RATE}]))",
                            "{{node}}",
                        ),
                    ),
                    unit="ops",
                    description="A failed upload is retried; the job keeps running on its last stored checkpoint.",
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, NODES, CHECKPOINTS)


def build(spec: Dashboard, datasource_uid: str = "prometheus") -> dict:
    """The Grafana dashboard JSON model of ``spec``, built with the foundation SDK."""
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid=datasource_uid)
    builder = (
        gd.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["burrow", "generated"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
    )
    for row, panels in spec.rows:
        builder = builder.with_row(gd.Row(row))
        for panel in panels:
            kind = stat.Panel() if panel.kind == "stat" else timeseries.Panel()
            kind = kind.title(panel.title).unit(panel.unit).datasource(source).span(panel.width).height(8)
            if panel.description:
                kind = kind.description(panel.description)
            for n, query in enumerate(panel.queries):
                target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + n)).datasource(source)
                if query.legend:
                    target = target.legend_format(query.legend)
                kind = kind.with_target(target)
            builder = builder.with_panel(kind)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(builder.build()))
