"""The router's policy and the registry fold: pure functions, no broker."""

from __future__ import annotations

import pytest

from cloud.routing.policy import DefaultPolicy, JobHistory, RouterConfig, RouteRequest, candidate_queues, load_policy
from node.contract.job_options import JobOptions
from node.contract.registry import Heartbeat, fold
from node.contract.topology import Topology
from node.errors import ConfigError

NOW = 1_000_000.0
TOPOLOGY = Topology.from_dict(
    {
        "subclouds": {
            "acme": {"models": ["llama3-8b", "any"], "fallback": ["public"]},
            "public": {"models": ["llama3-8b", "any"]},
        }
    },
    source="t.toml",
)
OWN = "acme.sync.llama3-8b.bulk"


def beat(node: str, queues: tuple[str, ...], *, at: float = NOW, state: str = "up", running=()) -> Heartbeat:
    return Heartbeat(node=node, process=f"cpu-0/{node}", queues=queues, at=at, state=state, running=running)


def nodes(*beats: Heartbeat):
    return list(fold(beats, now=NOW).values())


def decide(kind="failed", *, job=None, history=None, live=(), node="a", topology=TOPOLOGY, **request):
    job = job or JobOptions(job_id="j1")
    policy = DefaultPolicy(RouterConfig(max_redispatches=2, cooldown_s=5, avoid_delay_s=1))
    req = RouteRequest(kind, request.pop("queue", OWN), job, reason="r", node=node, **request)
    return policy.decide(req, history or JobHistory(), nodes(*live), topology, NOW)


def test_fallback_chain_goes_model_queue_then_any_then_the_fallback_subcloud():
    assert candidate_queues(OWN, TOPOLOGY) == [
        "acme.sync.llama3-8b.bulk",
        "acme.sync.any.bulk",
        "public.sync.llama3-8b.bulk",
        "public.sync.any.bulk",
    ]
    assert candidate_queues("tests", None) == ["tests"]


def test_a_failed_job_goes_to_a_live_node_that_did_not_fail_it():
    route = decide(live=[beat("a", (OWN,)), beat("b", (OWN,))])
    assert route.action == "dispatch" and route.queue == OWN and route.avoid_nodes == ("a",)
    assert route.delay_s == 5 and route.counted and route.reset_counters


def test_nodes_it_failed_on_or_must_avoid_are_skipped_along_the_chain():
    history = JobHistory(attempts=({"node": "b", "outcome": "crashed"},))
    job = JobOptions(job_id="j1", avoid_nodes=("c",))
    live = [beat("a", (OWN,)), beat("b", (OWN,)), beat("c", (OWN,)), beat("d", ("public.sync.any.bulk",))]
    route = decide(job=job, history=history, live=live)
    assert route.queue == "public.sync.any.bulk" and set(route.avoid_nodes) == {"a", "b", "c"}


def test_nothing_to_place_it_on_means_quarantine():
    assert decide(live=[beat("a", (OWN,))]).action == "quarantine"
    # a node silent for longer than the grace, or one that stopped cleanly, is not waited for
    long_gone = beat("b", (OWN,), at=NOW - 121)
    assert decide(live=[long_gone, beat("c", (OWN,), state="stopped")]).action == "quarantine"


def test_a_node_silent_only_recently_is_waited_for_not_given_up():
    # b has missed its heartbeats (not live) but was heard from 60 s ago: during a broker failover every
    # node can look like that, so the job is held and asked about again rather than quarantined
    silent = beat("b", (OWN,), at=NOW - 60)
    route = decide(live=[beat("a", (OWN,)), silent])
    assert route.action == "hold" and not route.counted and route.delay_s == 5 and route.queue == OWN
    assert "b (silent 60s)" in route.reason and "waiting up to 120s" in route.reason
    # once b beats again it takes the job; a silent node it failed on, one serving nothing of the chain, a
    # draining one, or a job out of re-dispatches is not waited for
    assert decide(live=[beat("b", (OWN,))]).action == "dispatch"
    assert decide(live=[beat("a", (OWN,), at=NOW - 60)]).action == "quarantine"
    assert decide(live=[beat("b", ("public.batch.any.bulk",), at=NOW - 60)]).action == "quarantine"
    assert decide(live=[beat("b", (OWN,), state="draining")]).action == "quarantine"
    spent = JobHistory(dispatches=({"action": "dispatch"},) * 2)
    assert decide(live=[silent], history=spent).action == "quarantine"
    # a silent node of the fallback pool counts too
    assert decide(live=[beat("d", ("public.sync.any.bulk",), at=NOW - 45)]).action == "hold"


def test_expired_jobs_and_bad_dead_letters_are_quarantined_never_dispatched():
    live = [beat("b", (OWN,))]
    assert decide(job=JobOptions(job_id="j1", expires_at=NOW + 4), live=live).action == "quarantine"
    for reason in ("malformed", "expired", "stale", "rejected"):
        assert decide("dead_letter", dead_letter_reason=reason, live=live).action == "quarantine"
    # a crash loop the broker stopped is placed like any failure
    assert decide("dead_letter", dead_letter_reason="delivery_limit", node=None, live=live).action == "dispatch"


def test_redispatch_limit_and_uncounted_bounces():
    live = [beat("a", (OWN,)), beat("b", (OWN,))]
    spent = JobHistory(dispatches=({"action": "dispatch"}, {"action": "dispatch"}))
    assert decide(history=spent, live=live).action == "quarantine"
    bounce = decide("avoided", job=JobOptions(job_id="j1", avoid_nodes=("a",)), history=spent, live=live)
    assert bounce.action == "dispatch" and not bounce.counted and bounce.delay_s == 1 and not bounce.reset_counters
    # an operator's requeue resets the count
    reset = JobHistory(dispatches=(*spent.dispatches, {"kind": "requeue", "action": "dispatch"}))
    assert decide(history=reset, live=live).action == "dispatch"


def test_requeue_goes_back_even_with_no_live_node():
    route = decide("requeue", to_queue="public.sync.any.bulk")
    assert route.action == "dispatch" and route.queue == "public.sync.any.bulk" and route.avoid_nodes == ()


def test_policy_plugin_loading():
    assert isinstance(load_policy("", RouterConfig()), DefaultPolicy)
    assert isinstance(load_policy("cloud.routing.policy:DefaultPolicy", RouterConfig()), DefaultPolicy)
    for bad in ("nope", "no.such.module:X", "cloud.routing.policy:Missing"):
        with pytest.raises(ConfigError, match="BURROW_ROUTING_POLICY"):
            load_policy(bad, RouterConfig())


def test_registry_fold_newest_beat_wins_and_states():
    views = fold(
        [
            beat("a", (OWN,), at=NOW - 5, running=("j1",)),
            beat("a", (OWN,), at=NOW - 1),
            beat("b", (OWN,), at=NOW - 100, running=("j2",)),
            beat("c", (OWN,), state="stopped"),
            beat("d", (OWN,), state="draining"),
        ],
        now=NOW,
    )
    assert views["a"].live and views["a"].running == () and views["a"].state == "up"
    assert not views["b"].live and views["b"].state == "silent" and views["b"].running == ("j2",)
    assert views["c"].state == "stopped" and not views["d"].live and views["d"].state == "draining"
    assert Heartbeat.decode(views["a"].slots[0].encode()) == views["a"].slots[0]
    assert Heartbeat.decode(b'{"probe": "x"}') is None and Heartbeat.decode(b"\xff") is None
