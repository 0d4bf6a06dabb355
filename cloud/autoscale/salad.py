"""A SaladCloud container group as a node pool: its replica count through SaladCloud's public API.

``GET /api/public/organizations/{org}/projects/{project}/containers/{group}`` reads the group (``replicas``,
``current_state.status``); ``PATCH`` on the same path with ``{"replicas": N}`` as
``application/merge-patch+json`` resizes it; ``POST …/start`` and ``…/stop`` start a stopped group and stop
one scaled to zero. The key goes in the ``Salad-Api-Key`` header, from ``SALAD_API_KEY``; it is never
logged or shown in an error. A 429 is retried once after its ``Retry-After`` when that is short, and
otherwise reported, like any API error or timeout, as a ``ProviderError`` naming the call; the autoscaler
reports it and tries again next round.

urllib3 (already a dependency of boto3) does the HTTP, with a connect and a read timeout per call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import urllib3

from .provider import ProviderError

logger = logging.getLogger("burrow.autoscale")

API_URL = "https://api.salad.com"
#: A ``Retry-After`` up to this long is waited out once within the round; longer is reported.
MAX_RETRY_AFTER_S = 10.0


class SaladProvider:
    """Sizes one SaladCloud container group.

    Parameters:
        organization: The organization's name.
        project: The project's name.
        container_group: The container group's name.
        api_key: The SaladCloud API key (``SALAD_API_KEY``).
        api_url: The API's base URL (``SALAD_API_URL`` or the ``api_url`` setting; tests point it at a local
            server).
        timeout_s: Connect and read timeout of each call.
    """

    def __init__(
        self,
        *,
        organization: str,
        project: str,
        container_group: str,
        api_key: str,
        api_url: str = API_URL,
        timeout_s: float = 10.0,
    ) -> None:
        if not api_key:
            raise ProviderError("SaladCloud: no API key (set SALAD_API_KEY)")
        self.path = (
            f"/api/public/organizations/{quote(organization, safe='')}/projects/{quote(project, safe='')}"
            f"/containers/{quote(container_group, safe='')}"
        )
        self.name = f"salad:{organization}/{project}/{container_group}"
        self.base = api_url.rstrip("/")
        self._headers = {"Salad-Api-Key": api_key, "Accept": "application/json"}
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False)
        self.timeout_s = timeout_s

    @classmethod
    def from_options(cls, options: Mapping[str, Any], environ: Mapping[str, str]) -> SaladProvider:
        return cls(
            organization=options["organization"],
            project=options["project"],
            container_group=options["container_group"],
            api_key=environ.get("SALAD_API_KEY", ""),
            api_url=options.get("api_url") or environ.get("SALAD_API_URL") or API_URL,
            timeout_s=float(options.get("timeout_s", 10.0)),
        )

    def current(self) -> int:
        """The group's replicas; 0 while it is stopped."""
        group = self._group()
        if _status(group) == "stopped":
            return 0
        return group["replicas"]

    def scale_to(self, replicas: int, *, idle: frozenset[str] = frozenset()) -> None:
        """Resize the group (``idle`` is ignored: SaladCloud chooses which instances go; each gets SIGTERM and
        hands its job back)."""
        group = self._group()
        stopped = _status(group) == "stopped"
        if replicas == 0:
            if not stopped:
                self._call("POST", self.path + "/stop")
            return
        if group["replicas"] != replicas:
            body = json.dumps({"replicas": replicas}).encode()
            self._call("PATCH", self.path, body=body, content_type="application/merge-patch+json")
        if stopped:
            self._call("POST", self.path + "/start")

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _group(self) -> dict[str, Any]:
        group = self._call("GET", self.path)
        replicas = group.get("replicas") if isinstance(group, dict) else None
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise ProviderError(f"{self.name}: GET returned no replica count")
        if replicas < 0:
            raise ProviderError(f"{self.name}: GET returned a replica count of {replicas}")
        return group

    def _call(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None) -> Any:
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        what = f"{self.name}: {method} {path.rsplit('/', 1)[-1] if method == 'POST' else 'container group'}"
        for attempt in range(2):
            try:
                response = self._http.request(method, self.base + path, body=body, headers=headers)
            except urllib3.exceptions.TimeoutError:
                raise ProviderError(f"{what}: no answer within {self.timeout_s:g}s") from None
            except urllib3.exceptions.HTTPError as e:
                raise ProviderError(f"{what}: {type(e).__name__}: {_reason(e)}") from None
            if response.status == 429:
                wait = _retry_after(response.headers.get("Retry-After"))
                if attempt == 0 and wait is not None and wait <= MAX_RETRY_AFTER_S:
                    logger.warning("%s: rate limited (429); retrying in %gs", what, wait)
                    time.sleep(wait)
                    continue
                later = f"; retry after {wait:g}s" if wait is not None else ""
                raise ProviderError(f"{what}: rate limited by SaladCloud (429){later}")
            if response.status >= 400:
                raise ProviderError(f"{what}: HTTP {response.status} {_detail(response.data)}")
            if not response.data:
                return {}
            try:
                return json.loads(response.data)
            except (ValueError, RecursionError):  # (nested past what the decoder reads)
                raise ProviderError(f"{what}: the answer is not JSON") from None
        raise AssertionError("unreachable")


def _status(group: dict[str, Any]) -> str:
    state = group.get("current_state")
    return str(state.get("status", "")) if isinstance(state, dict) else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: report rather than parse


def _detail(data: bytes) -> str:
    """The API's own words about an error (its problem-details ``title``/``detail``), shortened."""
    try:
        problem = json.loads(data)
        text = " — ".join(str(problem[k]) for k in ("title", "detail") if isinstance(problem, dict) and problem.get(k))
    except (ValueError, RecursionError):
        text = data.decode("utf-8", "replace")
    return text.strip()[:200]


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error)[:200]
