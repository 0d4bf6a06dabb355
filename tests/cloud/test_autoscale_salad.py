"""The SaladCloud provider against a local HTTP server that plays the container-group API and records every
call (the real API is unreachable here): the calls a resize makes, and API errors, timeouts and 429s."""

from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloud.autoscale.config import parse_config
from cloud.autoscale.provider import ProviderError
from cloud.autoscale.run import Autoscaler, GroupRound
from cloud.autoscale.salad import SaladProvider

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-0123456789"
GROUP = "/api/public/organizations/acme/projects/burrow/containers/llama-nodes"


class SaladApi:
    """A container group's API: state, the calls received, and faults to inject (one per upcoming call)."""

    def __init__(self, replicas: int = 0, status: str = "stopped") -> None:
        self.group = {"name": "llama-nodes", "replicas": replicas, "current_state": {"status": status}}
        self.calls: list[tuple[str, str, str | None, object]] = []  # method, path, content type, body
        self.faults: list[tuple[int, dict[str, str], bytes]] = []  # (status, headers, body)
        self.hold = threading.Event()  # set: the next call never answers until released
        self.release = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                api.calls.append((self.command, self.path, self.headers.get("Content-Type"), body))
                if self.headers.get("Salad-Api-Key") != KEY:
                    return self._answer(401, {"title": "Unauthorized"})
                if api.hold.is_set():
                    api.hold.clear()
                    api.release.wait(30)
                    return
                if api.faults:
                    status, headers, data = api.faults.pop(0)
                    return self._answer(status, data, headers)
                if self.path == GROUP and self.command == "GET":
                    return self._answer(200, api.group)
                if self.path == GROUP and self.command == "PATCH":
                    api.group["replicas"] = body["replicas"]
                    return self._answer(200, api.group)
                if self.path == GROUP + "/start" and self.command == "POST":
                    api.group["current_state"]["status"] = "running"
                    return self._answer(202, None)
                if self.path == GROUP + "/stop" and self.command == "POST":
                    api.group["current_state"]["status"] = "stopped"
                    return self._answer(202, None)
                return self._answer(404, {"title": "Not Found"})

            do_GET = do_PATCH = do_POST = _serve  # noqa: N815 - http.server's names

            def _answer(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode() if payload else b""
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _, _ in self.calls]


@pytest.fixture
def api():
    api = SaladApi()
    yield api
    api.close()


def provider(api: SaladApi, **kwargs) -> SaladProvider:
    options = {"organization": "acme", "project": "burrow", "container_group": "llama-nodes", **kwargs}
    return SaladProvider.from_options(options, {"SALAD_API_KEY": KEY, "SALAD_API_URL": api.url})


def test_a_stopped_group_is_sized_then_started_and_stopped_again_at_zero(api):
    salad = provider(api)
    assert salad.current() == 0  # stopped counts as zero, whatever its replica setting
    salad.scale_to(3)
    assert api.calls[1:] == [
        ("GET", GROUP, None, None),
        ("PATCH", GROUP, "application/merge-patch+json", {"replicas": 3}),
        ("POST", GROUP + "/start", None, None),
    ]
    assert salad.current() == 3
    del api.calls[:]
    salad.scale_to(5)  # running: a PATCH only
    salad.scale_to(0)  # to zero: stop (the replica setting is kept for the next start)
    assert api.requests() == [("GET", GROUP), ("PATCH", GROUP), ("GET", GROUP), ("POST", GROUP + "/stop")]
    assert api.group["replicas"] == 5 and api.group["current_state"]["status"] == "stopped"


def test_api_errors_are_reported_with_the_apis_words_and_never_the_key(api, caplog):
    salad = provider(api)
    api.faults.append((403, {}, json.dumps({"title": "Forbidden", "detail": "no access to project burrow"}).encode()))
    with pytest.raises(ProviderError) as raised:
        salad.current()
    assert "HTTP 403" in str(raised.value) and "no access to project burrow" in str(raised.value)
    api.faults.append((500, {}, b"<html>oops</html>"))
    with pytest.raises(ProviderError, match="HTTP 500"):
        salad.scale_to(2)
    api.faults.append((200, {}, b'{"name": "llama-nodes"}'))  # no replica count
    with pytest.raises(ProviderError, match="no replica count"):
        salad.current()
    bad_key = SaladProvider.from_options(
        {"organization": "acme", "project": "burrow", "container_group": "llama-nodes"},
        {"SALAD_API_KEY": "wrong", "SALAD_API_URL": api.url},
    )
    with pytest.raises(ProviderError, match="HTTP 401"):
        bad_key.current()
    with pytest.raises(ProviderError, match="SALAD_API_KEY"):
        SaladProvider.from_options({"organization": "a", "project": "b", "container_group": "c"}, {})
    assert KEY not in caplog.text


def test_a_429_is_retried_after_its_retry_after_once_and_reported_if_it_persists(api, caplog):
    salad = provider(api)
    api.faults.append((429, {"Retry-After": "0"}, b""))
    with caplog.at_level(logging.WARNING, logger="burrow.autoscale"):
        assert salad.current() == 0
    assert api.requests() == [("GET", GROUP), ("GET", GROUP)]
    assert "rate limited (429)" in caplog.text
    api.faults += [(429, {"Retry-After": "0"}, b""), (429, {"Retry-After": "0"}, b"")]
    with pytest.raises(ProviderError, match=r"rate limited by SaladCloud \(429\)"):
        salad.current()
    api.faults.append((429, {"Retry-After": "3600"}, b""))  # too long to wait within a round: reported at once
    with pytest.raises(ProviderError, match="retry after 3600s"):
        salad.current()


def test_an_api_that_does_not_answer_is_a_timeout_error(api):
    salad = provider(api, timeout_s=0.5)
    api.hold.set()  # the server takes the request and never answers (until released at teardown)
    with pytest.raises(ProviderError, match=r"no answer within 0.5s"):
        salad.current()


def test_a_failing_group_is_reported_and_the_others_still_scale(api, tmp_path):
    config = parse_config(
        {
            "groups": {
                "llama": {
                    "queues": ["q1"],
                    "provider": "salad",
                    "organization": "acme",
                    "project": "burrow",
                    "container_group": "llama-nodes",
                },
                "other": {
                    "queues": ["q2"],
                    "provider": "salad",
                    "organization": "acme",
                    "project": "burrow",
                    "container_group": "missing",
                },
            }
        }
    )
    providers = {
        "llama": provider(api),
        "other": SaladProvider.from_options(config.groups[1].options, {"SALAD_API_KEY": KEY, "SALAD_API_URL": api.url}),
    }
    scaler = Autoscaler(
        config, providers, lambda: ({"llama": 4, "other": 2}, frozenset()), tmp_path / "state.json", clock=lambda: 0.0
    )
    llama, other = scaler.round()
    assert llama == GroupRound("llama", 4, 0, llama.decision) and llama.decision.replicas == 4
    assert api.group["replicas"] == 4 and api.group["current_state"]["status"] == "running"
    assert other.error is not None and "HTTP 404" in other.error
    assert other.line().startswith("other: error: salad:acme/burrow/missing")


def test_burrow_autoscale_once_reports_each_group_in_one_line(api, tmp_path, node_env):
    """From the command line: the broker's depth of a real (empty) queue, the API resized, exit 0; an API
    failure makes it exit 1 with one line, no traceback."""
    import subprocess

    from tests.conftest import ROOT

    config = tmp_path / "autoscale.toml"
    config.write_text(
        '[groups.llama]\nqueues = ["tests"]\nprovider = "salad"\nmin_replicas = 1\n'
        'organization = "acme"\nproject = "burrow"\ncontainer_group = "llama-nodes"\n'
    )
    env = {**node_env, "SALAD_API_KEY": KEY, "SALAD_API_URL": api.url}
    argv = [sys.executable, "-m", "cloud.cli", "autoscale", "--config", str(config), "--once"]
    argv += ["--state", str(tmp_path / "state.json")]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "llama: 0 job(s), 0 -> 1 replica(s) (below min_replicas (1): scaling up)"
    assert api.group["replicas"] == 1
    api.faults += [(503, {}, b"")]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.strip() == "llama: error: salad:acme/burrow/llama-nodes: GET container group: HTTP 503"
    assert "Traceback" not in done.stderr and KEY not in done.stdout + done.stderr


def test_answers_nested_past_what_json_reads_or_a_negative_size_are_reported_not_raised(api):
    salad = provider(api)
    api.faults.append((200, {}, b"[" * 100_000))
    with pytest.raises(ProviderError, match="not JSON"):
        salad.current()
    api.faults.append((500, {}, b"[" * 100_000))
    with pytest.raises(ProviderError, match="HTTP 500"):
        salad.current()
    api.faults.append((200, {}, b'{"replicas": -3, "current_state": {"status": "running"}}'))
    with pytest.raises(ProviderError, match="replica count of -3"):
        salad.current()
