"""Telemetry set-up from the ``OTEL_*`` variables: a bad value stops start-up naming it (pure, no SDK installed)."""

from __future__ import annotations

import pytest

from observability.setup import _check_endpoint, configure


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"])
@pytest.mark.parametrize("value", ["::notaurl", "collector:4318", "http://:4318", "http://c:99999", "ftp://c:21"])
def test_an_otlp_endpoint_that_is_not_an_http_url_is_refused_at_start(variable, value):
    # (the SDK took it and logged "No connection adapters were found" at every export, forever)
    with pytest.raises(ValueError, match=f"{variable}=.*not an http\\(s\\) URL"):
        configure("burrow-test", environ={variable: value})


def test_a_refused_endpoint_never_shows_its_credentials():
    with pytest.raises(ValueError) as raised:
        configure("burrow-test", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://user:s3cret@collector:43x18"})
    assert "s3cret" not in str(raised.value) and "//***@collector" in str(raised.value)


@pytest.mark.parametrize("value", ["http://collector:4318", "https://otel.example.com", "http://[::1]:4318/v1", ""])
def test_http_endpoints_pass(value):
    _check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", value)
