"""Telemetry set-up and Grafana dashboards (built in a later issue)."""
