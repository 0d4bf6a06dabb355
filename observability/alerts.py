"""Burrow's Prometheus alert rules, as code; ``python -m observability.generate`` writes
``observability/prometheus/alerts.yml`` (checked by ``promtool check rules`` and evaluated against a real
Prometheus in the tests: each rule must fire on the workload made to trigger it).

Each rule names what an operator does about it in its ``description``.
"""

from __future__ import annotations

#: Queues that hold work (not dead-letter ``.XQ``, Dramatiq delay ``.DQ``, cooldown waits or the registry).
WORK_QUEUES = 'queue!~".*\\\\.(XQ|DQ)|.*burrow\\\\.(wait\\\\..*|nodes)"'

RULES: list[dict] = [
    {
        "alert": "BurrowBacklogGrowing",
        "expr": (
            f"sum by (vhost, queue) (delta(rabbitmq_detailed_queue_messages_ready{{{WORK_QUEUES}}}[10m])) > 0"
            f" and sum by (vhost, queue) (rabbitmq_detailed_queue_messages_ready{{{WORK_QUEUES}}}) > 0"
        ),
        "for": "15m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "Queue {{ $labels.queue }} has been growing for 15 minutes",
            "description": (
                "Jobs arrive faster than nodes take them. Check that nodes serve this queue (`burrow queues`) "
                "and that the autoscaler can add replicas."
            ),
        },
    },
    {
        "alert": "BurrowFailureRateHigh",
        "expr": (
            'sum by (queue) (rate(burrow_attempts_total{outcome=~"failed|timed_out|crashed"}[10m]))'
            " / sum by (queue) (rate(burrow_attempts_total[10m])) > 0.2"
        ),
        "for": "10m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "More than 20% of attempts on {{ $labels.queue }} fail",
            "description": "Look at recent failures with `burrow job <id>`; a bad model or node image is usual.",
        },
    },
    {
        "alert": "BurrowNodesSilent",
        "expr": 'max by (subcloud) (burrow_registry_nodes{state="silent"}) > 0',
        "for": "5m",
        "labels": {"severity": "info"},
        "annotations": {
            "summary": "{{ $value }} node(s) of {{ $labels.subcloud }} went silent without stopping",
            "description": (
                "Interruptible nodes vanish; their jobs are re-run elsewhere. Many at once points at the "
                "network or the broker. `burrow nodes` lists them."
            ),
        },
    },
    {
        "alert": "BurrowQuarantineGrowing",
        "expr": "max(delta(burrow_quarantine_entries[30m])) > 0",
        "for": "0m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "The quarantine grew by {{ $value }} job(s) in 30 minutes",
            "description": "Inspect with `burrow quarantine list`, requeue with `burrow quarantine requeue`.",
        },
    },
]


def rule_file() -> dict:
    """The rule file's content (one group)."""
    return {"groups": [{"name": "burrow", "rules": RULES}]}
