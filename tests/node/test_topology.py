"""The queue topology's naming function and file (pure: no broker)."""

from __future__ import annotations

import pytest

from node.contract.job_options import JobOptions
from node.contract.topology import Topology, load_topology, parse_queue_name, queue_name
from node.errors import ConfigError

TOPOLOGY = {
    "priorities": ["urgent", "bulk", "test"],
    "job_types": ["sync", "batch"],
    "subclouds": {
        "public": {"models": ["any", "llama3-8b"]},
        "acme": {"models": ["llama3-8b"], "fallback": ["eu"]},
        "eu": {"models": ["llama3-8b"], "fallback": ["public", "acme"]},
    },
}


def test_a_queue_name_reads_back_as_the_job_options_it_came_from():
    name = queue_name("acme", "sync", "llama3-8b", "urgent")
    assert name == "acme.sync.llama3-8b.urgent"
    address = parse_queue_name(name)
    assert (address.subcloud, address.job_type, address.model, address.priority) == (
        "acme",
        "sync",
        "llama3-8b",
        "urgent",
    )
    assert queue_name("public", "batch", "", "bulk") == "public.batch.any.bulk"
    for other in ("failed-jobs", "tests", "a.b.c", "acme.sync.m.later", "acme.nap.m.urgent"):
        assert parse_queue_name(other) is None


@pytest.mark.parametrize("bad", ["Llama", "a.b", "", "x" * 49, "a b", "é"])
def test_a_part_that_cannot_be_a_queue_name_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="model"):
        queue_name("public", "sync", bad or " ", "bulk")


def test_a_node_takes_every_urgent_queue_before_any_bulk_one():
    topology = Topology.from_dict(TOPOLOGY)
    queues = topology.node_queues("public")
    priorities = [parse_queue_name(q).priority for q in queues]
    assert priorities == sorted(priorities, key=["urgent", "bulk", "test"].index)
    assert len(queues) == 3 * 2 * 2
    assert topology.node_queues("public", ("llama3-8b",))[0] == "public.sync.llama3-8b.urgent"
    assert all(q.startswith("acme.") for q in topology.node_queues("acme"))


def test_routing_names_the_queue_or_says_why_there_is_none():
    topology = Topology.from_dict(TOPOLOGY)
    job = JobOptions(job_id="j", subcloud="acme", model="llama3-8b", job_type="sync", priority="urgent")
    assert topology.route(job) == "acme.sync.llama3-8b.urgent"
    with pytest.raises(ValueError, match="no subcloud 'mars'"):
        topology.route(JobOptions(job_id="j", subcloud="mars", job_type="sync"))
    with pytest.raises(ValueError, match="serves no model 'gpt-9'"):
        topology.route(JobOptions(job_id="j", subcloud="acme", model="gpt-9", job_type="sync"))
    with pytest.raises(ValueError, match="no job type 'stream'"):
        topology.route(JobOptions(job_id="j", subcloud="public", job_type="stream"))


def test_fallback_chains_follow_the_file_without_cycles():
    topology = Topology.from_dict(TOPOLOGY)
    assert topology.fallback_chain("acme") == ["eu", "public"]
    assert topology.fallback_chain("eu") == ["public", "acme"]
    assert topology.fallback_chain("public") == []


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"subclouds": {}}, "subclouds"),
        ({"subclouds": {"Bad": {}}}, "subclouds.Bad"),
        ({"subclouds": {"a": {"models": "x"}}}, "subclouds.a.models"),
        ({"subclouds": {"a": {"fallback": ["b"]}}}, "subclouds.a.fallback"),
        ({"subclouds": {"a": {"gpus": 3}}}, "subclouds.a"),
        ({"priorities": ["urgent", "later"], "subclouds": {"a": {}}}, "priorities"),
        ({"queues": [], "subclouds": {"a": {}}}, "queues"),
        ({"subclouds": {"a": {}}, "consumers": {"gpu": {"prefetch": 2}}}, "consumers.gpu"),
        ({"subclouds": {"a": {}}, "consumers": {"sync": {"prefetch": 0}}}, "consumers.sync.prefetch"),
        ({"subclouds": {"a": {}}, "consumers": {"sync": {"prefetch": 4000}}}, "consumers.sync.prefetch"),
        ({"subclouds": {"a": {}}, "consumers": {"sync": {"prefetch": 2, "threads": 2}}}, "consumers.sync"),
        ({"job_types": ["batch"], "subclouds": {"a": {}}, "consumers": {"sync": {"prefetch": 2}}}, "consumers.sync"),
    ],
)
def test_a_bad_topology_file_is_refused_naming_the_entry(data, where):
    with pytest.raises(ConfigError, match=f"topology: {where}"):
        Topology.from_dict(data)


def test_a_topology_file_that_is_not_toml_is_a_one_line_error(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text("subclouds = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_topology(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_topology(tmp_path / "missing.toml")


def test_a_job_types_prefetch_applies_to_every_queue_of_that_type():
    topology = Topology.from_dict({"subclouds": {"a": {"models": ["m"]}}, "consumers": {"sync": {"prefetch": 4}}})
    assert topology.prefetch_of("a.sync.m.urgent") == topology.prefetch_of("a.sync.m.test") == 4
    assert topology.prefetch_of("a.batch.m.urgent") is None  # the node's own prefetch
    assert topology.prefetch_of("failed-jobs") is None


def test_a_node_of_a_private_subcloud_without_a_topology_says_it_serves_the_shared_queues(tmp_path, caplog):
    from node.boot import build_broker
    from node.settings import Settings
    from node.storage import LocalStorage

    def boot(subcloud: str) -> str:
        caplog.clear()
        settings = Settings.from_env({"BURROW_STATE_DIR": str(tmp_path / "state"), "BURROW_SUBCLOUD": subcloud})
        build_broker(settings, storage=LocalStorage(tmp_path / "store"), slot_id="cpu-0").close()
        return caplog.text

    assert "BURROW_SUBCLOUD=acme without a topology" in boot("acme")
    assert "without a topology" not in boot("public")


def test_toml_nested_past_what_the_reader_takes_is_a_config_error_naming_the_file(tmp_path):
    from node.errors import ConfigError

    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")  # (tomllib's RecursionError was a traceback)
    with pytest.raises(ConfigError, match="deep.toml is not TOML this reads: nested too deeply"):
        load_topology(deep)
