"""A proxy in front of a real (moto) S3 endpoint that does what moto does not: a clock of its own, and refusals.

moto answers with this machine's time and accepts a request signed at any time; AWS and R2 answer with their
own clock and refuse a request signed more than 15 minutes off it. This proxy does what they do, with its
clock ``skew_s`` from this machine's: it stamps every response's ``Date`` with its clock and answers a
request whose ``X-Amz-Date`` is more than ``MAX_SKEW_S`` off it with 403 ``RequestTimeTooSkewed``, as S3
does. While ``refusing`` is set it answers every request with 403 ``AccessDenied`` (credentials revoked, a
bucket policy changed). Everything else is passed to moto unchanged.
"""

from __future__ import annotations

import calendar
import http.client
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: What AWS S3 allows (and R2 alike).
MAX_SKEW_S = 900


class S3Proxy:
    """A proxy on loopback to ``upstream`` (``http://host:port``), its clock ``skew_s`` ahead of this
    machine's (negative: behind). ``refused`` counts the requests it refused as skewed, ``denied`` those it
    refused while ``refusing``."""

    def __init__(self, upstream: str, skew_s: float = 0.0) -> None:
        self.skew_s = skew_s
        self.refused = 0
        self.refusing = False
        self.denied = 0
        self.denied_at: list[float] = []  # (monotonic) when each was refused while ``refusing``
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                now = time.time() + proxy.skew_s
                if proxy.refusing:
                    proxy.denied += 1
                    proxy.denied_at.append(time.monotonic())
                    self._answer(403, {"Content-Type": "application/xml"}, _ACCESS_DENIED, now)
                    return
                signed = self.headers.get("X-Amz-Date")
                if signed is not None:
                    signed_at = calendar.timegm(time.strptime(signed, "%Y%m%dT%H%M%SZ"))
                    if abs(signed_at - now) > MAX_SKEW_S:
                        proxy.refused += 1
                        self._answer(403, {"Content-Type": "application/xml"}, _too_skewed(signed, now), now)
                        return
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream_conn.request(self.command, self.path, body=body, headers=headers)
                    response = upstream_conn.getresponse()
                    data = response.read()
                    headers = {
                        k: v
                        for k, v in response.getheaders()
                        if k.lower() not in ("date", "connection", "transfer-encoding", "content-length", "server")
                    }
                    # HEAD answers carry the object's length without its bytes
                    length_header = response.getheader("Content-Length")
                    self._answer(response.status, headers, data, now, length_header)
                finally:
                    upstream_conn.close()

            def _answer(self, status: int, headers: dict, data: bytes, now: float, length: str | None = None) -> None:
                self.send_response_only(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Date", formatdate(now, usegmt=True))
                self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


def _too_skewed(signed: str, now: float) -> bytes:
    server_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>RequestTimeTooSkewed</Code>'
        "<Message>The difference between the request time and the current time is too large.</Message>"
        f"<RequestTime>{signed}</RequestTime><ServerTime>{server_time}</ServerTime>"
        f"<MaxAllowedSkewMilliseconds>{MAX_SKEW_S * 1000}</MaxAllowedSkewMilliseconds></Error>"
    ).encode()
