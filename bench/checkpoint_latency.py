"""How long a checkpoint takes to reach storage while the job keeps the CPU (and the GIL) busy.

Runs the same pure-Python training loop, saving a checkpoint every 0.3 s, once with Python's default GIL switch
interval (5 ms, the baseline) and once with the interval used during uploads
(``node.attempt.gil.FAST_SWITCH_INTERVAL_S``),
each in a fresh process, and prints the upload latency (snapshot taken → manifest stored) and the ratio.

    python bench/checkpoint_latency.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, tempfile, time
import dramatiq
from dramatiq.brokers.stub import StubBroker
from node.middleware import JobSubmission
dramatiq.set_broker(StubBroker(middleware=[JobSubmission()]))
from actors.training import encode, initial_state, train_steps
from node.attempt.checkpoints import Checkpointer
from node.storage import LocalStorage

sys.setswitchinterval(float(sys.argv[1]))
seconds = float(sys.argv[2])
checkpoint = Checkpointer(LocalStorage(tempfile.mkdtemp()), "bench", 1)
state, latencies, seen, last = initial_state(1, 8), [], None, time.time()
deadline = time.time() + seconds
while time.time() < deadline:
    state = train_steps(state, 100)
    if checkpoint.uploaded is not seen:
        seen = checkpoint.uploaded
        latencies.append(seen["stored_at"] - seen["taken_at"])
    if time.time() - last >= 0.3:
        last = time.time()
        checkpoint.save(encode(state), step=state["step"])
print(json.dumps({"latencies": latencies, "saves": int(seconds / 0.3), "steps": state["step"]}))
"""


def run(switch_interval_s: float, seconds: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(switch_interval_s), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe(name: str, result: dict) -> float:
    latencies = sorted(result["latencies"])
    stored = len(latencies)
    median = statistics.median(latencies) if latencies else float("inf")
    p95 = latencies[int(0.95 * (stored - 1))] if latencies else float("inf")
    print(
        f"{name:28} checkpoints stored {stored:3}/{result['saves']:<3} "
        f"median {median * 1000:8.1f} ms  p95 {p95 * 1000:8.1f} ms  training steps {result['steps']}"
    )
    return median


def main() -> None:
    from node.attempt.gil import FAST_SWITCH_INTERVAL_S as SWITCH_INTERVAL_S

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    baseline = describe("default 5 ms (baseline)", run(0.005, args.seconds))
    tuned = describe(f"node {SWITCH_INTERVAL_S * 1000:.1f} ms", run(SWITCH_INTERVAL_S, args.seconds))
    print(f"median upload latency: {baseline / tuned:.1f}x lower with the node's switch interval")


if __name__ == "__main__":
    main()
