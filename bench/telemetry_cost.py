"""What telemetry costs a short job: the full node stack's drain rate of no-op jobs with OpenTelemetry off,
with the Prometheus endpoint (metrics), and with OTLP traces and metrics to a local collector, in one run.

The collector is a loopback HTTP server that accepts OTLP/HTTP and discards it (the exporters' work is
the same as with a real Collector). Each configuration runs ``--rounds`` times, interleaved, so drift on a
shared machine spreads over all of them; the figure is the median. Method as ``job_cost.py``.

    python bench/telemetry_cost.py [--jobs 3000] [--processes 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_cost import ACTORS, URL, measure  # noqa: E402


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    collector = f"http://127.0.0.1:{sink.server_address[1]}"
    print(f"{args.jobs} no-op jobs, {args.processes} processes x {args.threads} thread(s); broker {URL.split('@')[-1]}")
    print(f"full node stack, local storage, prefetch 1; median of {args.rounds} interleaved rounds\n")

    configurations = {
        "telemetry off": {},
        "metrics: Prometheus endpoint": {"OTEL_METRICS_EXPORTER": "prometheus"},
        "traces + metrics: OTLP to a local collector": {"OTEL_EXPORTER_OTLP_ENDPOINT": collector},
    }
    rates: dict[str, list[float]] = {name: [] for name in configurations}
    for round_ in range(args.rounds):
        for name, extra in configurations.items():
            prefix = f"bencht{uuid.uuid4().hex[:6]}."
            queue = f"noop{round_}"
            env = {
                "BENCH_QUEUE": queue,
                "BURROW_QUEUE_PREFIX": prefix,
                "BENCH_TARGET": "node.actors",
                "BURROW_ACTOR_MODULES": "bench_target",
                "BURROW_STORAGE_URL": Path(tempfile.mkdtemp(prefix="burrow-bench-store-")).as_uri(),
                "BURROW_STATE_DIR": tempfile.mkdtemp(prefix="burrow-bench-state-"),
                "BURROW_GPUS": "none",
                "BURROW_CPU_SLOTS": str(args.processes),
                **extra,
            }
            argv = ["--processes", str(args.processes), "--threads", str(args.threads)]
            rates[name].append(measure(f"{name} (round {round_ + 1})", ACTORS, env, prefix + queue, args.jobs, argv))
    sink.shutdown()
    off = statistics.median(rates["telemetry off"])
    print()
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:45} {median:8.0f} jobs/s  {median / off:5.2f}x off   (goal >= 0.9)")


if __name__ == "__main__":
    main()
