"""The autoscaler's decision and its configuration file: pure, no broker."""

from __future__ import annotations

import pytest

from cloud.autoscale.config import parse_config
from cloud.autoscale.policy import ScalePolicy, ScaleState, decide, wanted
from node.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

POLICY = ScalePolicy(jobs_per_replica=2, min_replicas=1, max_replicas=10, scale_down_delay_s=300, hysteresis=0.2)


def run(depths: list[int | None], current: int, policy: ScalePolicy = POLICY, step_s: float = 60.0) -> list[int]:
    """Sizes chosen round after round, the pool following each decision."""
    state, sizes = ScaleState(), []
    for n, depth in enumerate(depths):
        decision, state = decide(depth, current, policy, state, now=n * step_s)
        current = decision.replicas
        sizes.append(current)
    return sizes


def test_a_backlog_scales_up_at_once_within_the_bounds():
    assert wanted(0, POLICY) == 1  # min
    assert wanted(7, POLICY) == 4  # ceil(7 / 2)
    assert wanted(1_000, POLICY) == 10  # max
    assert run([7], current=1) == [4]
    assert run([1_000], current=0) == [10]


def test_scaling_down_waits_for_the_delay_and_goes_to_the_peak_seen_meanwhile():
    # Demand falls from 20 jobs (10 replicas) to 4 (2 replicas) but rises to 8 (4) once during the wait.
    sizes = run([20, 4, 8, 4, 4, 4, 4, 4, 4, 4], current=10)
    assert sizes[:6] == [10] * 6  # low from the round at 60 s: 0 … 240 s low, waiting
    assert sizes[6] == 4  # low for 300 s: down to the highest demand seen while waiting
    assert sizes[7:] == [4, 4, 4]  # and it waits again before going to 2


def test_a_burst_during_the_wait_resets_it_no_flapping():
    # The queue empties between bursts every other round: the pool never shrinks.
    assert run([20, 0, 20, 0, 20, 0, 20, 0, 20, 0], current=10) == [10] * 10


def test_small_drops_inside_the_hysteresis_band_are_ignored():
    # 10 replicas, demand for 9: a drop of 1 < 20 % of 10 (2): steady, however long.
    assert run([18] * 10, current=10) == [10] * 10
    # Demand for 8 (a drop of 2): scaled down after the delay.
    assert run([16] * 7, current=10)[-1] == 8


def test_scale_to_zero_and_back():
    policy = ScalePolicy(jobs_per_replica=1, min_replicas=0, max_replicas=250, scale_down_delay_s=120, hysteresis=0)
    assert run([0, 0, 0, 5], current=3, policy=policy) == [3, 3, 0, 5]


def test_an_unknown_depth_holds_the_pool_and_its_timer():
    decision, state = decide(None, 5, POLICY, ScaleState(low_since=10.0, low_peak=2), now=1_000.0)
    assert decision.replicas == 5 and "unknown" in decision.reason
    assert state == ScaleState(low_since=10.0, low_peak=2)


def test_a_pool_above_its_max_or_below_its_min_is_brought_back():
    assert decide(0, 20, POLICY, ScaleState(), now=0)[0].replicas == 10
    assert decide(0, 0, POLICY, ScaleState(), now=0)[0].replicas == 1


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"jobs_per_replica": 0}, "jobs_per_replica"),
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas (5) is above max_replicas (2)"),
        ({"max_replicas": -1}, "max_replicas"),
        ({"hysteresis": 1.5}, "hysteresis"),
        ({"scale_down_delay_s": "soon"}, "scale_down_delay_s"),
    ],
)
def test_bad_policies_are_refused_naming_the_setting(changes, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ScalePolicy(**changes)


GOOD = {
    "interval_s": 5,
    "groups": {
        "llama": {
            "queues": ["public.sync.llama3-8b.urgent"],
            "jobs_per_replica": 2,
            "provider": "salad",
            "organization": "acme",
            "project": "burrow",
            "container_group": "llama-nodes",
        },
        "cpu": {"queues": ["simulation"], "provider": "local", "env": {"BURROW_GPUS": "none"}},
    },
}


def test_a_config_file_reads_into_groups():
    config = parse_config(GOOD)
    assert config.interval_s == 5
    llama, cpu = config.groups
    assert (llama.name, llama.provider, llama.policy.jobs_per_replica, llama.policy.max_replicas) == (
        "llama",
        "salad",
        2,
        250,
    )
    assert llama.options == {"organization": "acme", "project": "burrow", "container_group": "llama-nodes"}
    assert (cpu.provider, cpu.queues, cpu.options["env"]) == ("local", ("simulation",), {"BURROW_GPUS": "none"})


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c.pop("groups"), "groups"),
        (lambda c: c.update(interval_s=0), "interval_s"),
        (lambda c: c.update(interval_s=float("nan")), "interval_s"),  # TOML allows nan and inf
        (lambda c: c["groups"]["llama"].update(jobs_per_replica=float("inf")), "groups.llama"),
        (lambda c: c.update(retries=3), "retries"),
        (lambda c: c["groups"]["llama"].update(provider="aws"), "groups.llama.provider"),
        (lambda c: c["groups"]["llama"].pop("project"), "groups.llama.project"),
        (lambda c: c["groups"]["llama"].update(queues=[]), "groups.llama.queues"),
        (lambda c: c["groups"]["llama"].update(api_key="secret"), "groups.llama.api_key"),
        (lambda c: c["groups"]["cpu"].update(command="burrow node"), "groups.cpu.command"),
        (lambda c: c["groups"]["cpu"].update(max_replicas=-2), "groups.cpu"),
    ],
)
def test_a_bad_config_entry_is_named(edit, named):
    import copy

    config = copy.deepcopy(GOOD)
    edit(config)
    with pytest.raises(ConfigError, match=named):
        parse_config(config)


def test_an_autoscaler_file_nested_past_what_the_reader_takes_is_named(tmp_path):
    from cloud.autoscale.config import load_config

    deep = tmp_path / "deep.toml"
    deep.write_text("interval_s = " + "[" * 5000 + "]" * 5000 + "\n")  # (a RecursionError traceback)
    with pytest.raises(ConfigError, match="deep.toml: not TOML this reads: nested too deeply"):
        load_config(deep)
