"""The `burrow` command as a new user meets it: bad input and a missing broker are one clear line."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from node.contract.record import record_key, succeeded_record
from node.storage.records import RecordStore
from tests.conftest import ROOT
from tests.rabbitmq_node import free_port

pytestmark = pytest.mark.timeout(120)


def burrow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=90
    )


def one_line_error(completed: subprocess.CompletedProcess, *expected: str) -> str:
    assert completed.returncode == 2, completed.stdout + completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("burrow: error: "), completed.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [["submit", "simulate"], ["queues"]])
def test_an_unreachable_broker_is_one_line_naming_the_masked_url(node_env, command):
    env = {**node_env, "AMQP_URL": f"amqp://guest:s3cret@127.0.0.1:{free_port()}/%2F"}
    line = one_line_error(burrow(*command, env=env), "cannot reach RabbitMQ", "guest:***@127.0.0.1")
    assert "s3cret" not in line


@pytest.mark.integration
def test_bad_submissions_are_refused_before_publishing(node_env, broker):
    one_line_error(burrow("submit", "simulate", "--kwargs", "{not json", env=node_env), "--kwargs is not JSON")
    one_line_error(burrow("submit", "nope", env=node_env), "no actor 'nope'", "simulate")
    one_line_error(
        burrow("submit", "simulate", "--kwargs", '{"seed": 1, "colour": "red"}', env=node_env),
        "args/kwargs: do not fit simulate()",
        "colour",
    )
    one_line_error(
        burrow("submit", "simulate", "--kwargs", '{"seed": "x"}', env=node_env), "'seed'", "wants int, got 'x'"
    )
    one_line_error(
        burrow("submit", "simulate", "--ttl-s", "-5", "--kwargs", '{"seed": 1}', env=node_env), "ttl_s", "> 0"
    )
    one_line_error(burrow("submit", "simulate", "--key", "", env=node_env), "idempotency_key: must be a non-empty")
    # (without a topology there are no private pools: the job would go to the queue every node serves)
    one_line_error(
        burrow("submit", "simulate", "--subcloud", "acme", "--kwargs", '{"seed": 1}', env=node_env),
        "subcloud: 'acme' needs a topology",
    )
    assert broker.get_queue_message_counts("simulation") == (0, 0, 0)


def test_a_bucket_that_does_not_exist_stops_burrow_node_with_one_line(node_env, s3_endpoint, s3_bucket):
    # (the node started and every job retried its record writes against a bucket that is not there)
    env = {**node_env, "BURROW_S3_ENDPOINT_URL": s3_endpoint}
    missing = {**env, "BURROW_STORAGE_URL": "s3://no-such-bucket-for-burrow"}
    one_line_error(
        burrow("node", env=missing), "BURROW_STORAGE_URL", "bucket 'no-such-bucket-for-burrow' does not exist"
    )
    # while a store that is there passes the same check (its probe key is simply absent)
    from node.settings import Settings
    from node.storage import storage_from_settings

    assert storage_from_settings(Settings.from_env({**env, "BURROW_STORAGE_URL": f"s3://{s3_bucket}"}), check=True)
    # and one that does not answer now only warns: the workers ride an outage out
    down = {**env, "BURROW_STORAGE_URL": "s3://bucket", "BURROW_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    assert storage_from_settings(Settings.from_env(down), check=True)


def test_an_unreachable_s3_endpoint_is_one_line_naming_it(node_env):
    env = {
        **node_env,
        "BURROW_STORAGE_URL": "s3://bucket",
        "BURROW_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b",
    }
    one_line_error(burrow("job", "some-job", env=env), "S3 endpoint http://127.0.0.1:", "EndpointConnectionError")
    # and with no credentials at all (none in the environment, no files, no instance metadata to ask)
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/none", AWS_SHARED_CREDENTIALS_FILE="/none")
    one_line_error(burrow("job", "some-job", env=env), "no S3 credentials", "AWS_ACCESS_KEY_ID")


def test_a_bad_setting_stops_burrow_node_with_one_line(node_env, tmp_path):
    one_line_error(burrow("node", env={**node_env, "BURROW_GPUS": "abc"}), "BURROW_GPUS", "'abc'")
    # a state directory or local store that is a file: said so (it read "File exists")
    (tmp_path / "a-file").write_text("")
    as_state = {**node_env, "BURROW_STATE_DIR": str(tmp_path / "a-file")}
    one_line_error(burrow("node", env=as_state), "BURROW_STATE_DIR", "it is a file, not a directory")
    as_store = {**node_env, "BURROW_STORAGE_URL": (tmp_path / "a-file").as_uri()}
    one_line_error(burrow("node", env=as_store), "BURROW_STORAGE_URL", "it is a file, not a directory")
    # a state directory that cannot be created (this was a traceback)
    one_line_error(burrow("node", env={**node_env, "BURROW_STATE_DIR": "/proc/burrow"}), "BURROW_STATE_DIR")
    # a local store that cannot be written: refused at start, not retried by every job
    bad_store = {**node_env, "BURROW_STORAGE_URL": "file:///proc/burrow-store"}
    one_line_error(burrow("node", env=bad_store), "BURROW_STORAGE_URL", "'/proc/burrow-store' is not usable")


@pytest.mark.integration
@pytest.mark.slow
def test_a_second_node_on_the_same_state_directory_is_refused(node_env, start_node, tmp_path):
    first = start_node("--processes", "1")
    from tests.conftest import wait_for

    wait_for(lambda: (tmp_path / "state" / "node.lock").exists(), 60, "the first node")
    one_line_error(burrow("node", "--processes", "1", env=node_env), "another `burrow node` is running")
    assert first.process.poll() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BURROW_ROUTING_POLICY": "nope"}, "BURROW_ROUTING_POLICY"),
        ({"BURROW_ROUTING_POLICY": "no.such.module:Policy"}, "cannot load"),
        ({"BURROW_MAX_REDISPATCHES": "x"}, "BURROW_MAX_REDISPATCHES"),
    ],
)
def test_a_bad_router_setting_is_one_line(node_env, env, expected):
    one_line_error(burrow("router", env={**node_env, **env}), expected)


@pytest.mark.integration
def test_a_requeue_to_a_queue_the_broker_lacks_is_refused_before_it_reaches_the_router(node_env, storage):
    from cloud.routing.quarantine import Quarantine

    message = {"queue_name": "simulation", "actor_name": "simulate", "args": [1], "kwargs": {}, "options": {}}
    entry = {"id": "e1", "job_id": "j1", "reason": "r", "queue": "simulation", "quarantined_at": 1.0}
    Quarantine(storage).put({**entry, "message": {**message, "message_id": "j1", "message_timestamp": 0}})
    # (the router would only quarantine it again, "queue does not exist")
    one_line_error(burrow("quarantine", "requeue", "e1", "--to", "nosuch.queue", env=node_env), "no such queue")
    assert Quarantine(storage).get("e1") is not None


@pytest.mark.integration
def test_a_quarantined_job_named_twice_in_one_requeue_is_requeued_once(node_env, storage, broker):
    from cloud.routing.quarantine import Quarantine

    message = {"queue_name": "simulation", "actor_name": "simulate", "args": [1], "kwargs": {}, "options": {}}
    entry = {"id": "e2", "job_id": "j2", "reason": "r", "queue": "simulation", "quarantined_at": 1.0}
    Quarantine(storage).put({**entry, "message": {**message, "message_id": "j2", "message_timestamp": 0}})

    sent = burrow("quarantine", "requeue", "e2", "e2", env=node_env)

    assert sent.returncode == 0 and sent.stdout.splitlines() == ["e2: requeue sent to the router"], sent.stderr
    assert broker.get_queue_message_counts("failed-jobs")[0] == 1  # (two requests could run the job twice)


@pytest.mark.parametrize("command", [["cancel"], ["cancel", "fine-id"], ["job"], ["result"]])
@pytest.mark.parametrize("job_id", ["", " ", "a/../b", "x" * 300])
def test_an_id_no_job_can_have_is_refused_and_nothing_is_recorded(node_env, storage, command, job_id):
    line = one_line_error(burrow(*command, job_id, env=node_env), "is not a usable job id")
    assert "1-128 of" in line
    assert list(storage.list("records/")) == []  # not even for the good id beside it


def test_storing_a_directory_as_an_input_says_so(node_env, tmp_path):
    one_line_error(burrow("put", str(tmp_path), env=node_env), "is a directory")
    one_line_error(burrow("put", "/dev/null", env=node_env), "not a regular file")
    one_line_error(burrow("put", str(tmp_path / "missing"), env=node_env), "no such file")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [('{"seed": NaN}', "NaN is not standard JSON"), ('{"seed": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested")],
)
def test_kwargs_that_only_pythons_json_reads_are_refused_in_one_line(node_env, tmp_path, kwargs, problem):
    payload = tmp_path / "kwargs.json"
    payload.write_text(kwargs)
    one_line_error(burrow("submit", "simulate", "--kwargs", f"@{payload}", env=node_env), "is not JSON", problem)


def test_saving_a_result_where_no_file_can_be_written_is_one_line(node_env, storage, tmp_path):
    entry = {"attempt_id": "a1", "node": "n", "started_at": time.time()}
    record = succeeded_record("done-1", entry, actor="simulate", queue="simulation", now=time.time(), reason="ok")
    RecordStore(storage).create({**record, "result": {"value": 42}})
    target = tmp_path / "no-such-folder" / "out.json"
    one_line_error(burrow("result", "done-1", "-o", str(target), env=node_env), str(target), "No such file")
    assert burrow("result", "done-1", env=node_env).stdout.strip() == "42"


@pytest.mark.parametrize("command", [["job"], ["result"], ["cancel"]])
def test_a_corrupt_record_is_one_line_naming_it_and_is_left_as_it_was(node_env, storage, command):
    storage.put(record_key("torn-1"), b'{"job_id": garbage')
    line = one_line_error(burrow(*command, "torn-1", env=node_env), f"job record {record_key('torn-1')} is not JSON")
    assert line.endswith("repair or delete it")
    assert storage.get(record_key("torn-1"))[0] == b'{"job_id": garbage'


#: Quarantine entries a hand edit or a foreign tool could leave, and what `burrow` must say of each.
DAMAGED_ENTRIES = {
    "torn": (b'{"id": "torn", "rea', "is not JSON"),
    "listed": (b"[1, 2]", "it is a JSON list, not an object"),
    "bare": (b'{"id": "bare"}', "reason must be a string"),
    "other": (b'{"id": "someone-else", "reason": "r"}', "its id is 'someone-else'"),
    "odd": (b'{"id": "odd", "reason": "r", "attempts": [7]}', "attempts[0] must be an object"),
    "far": (b'{"id": "far", "reason": "r", "quarantined_at": 1e300}', "quarantined_at must be a time"),
}


def test_damaged_quarantine_entries_are_listed_as_unreadable_and_named_in_one_line(node_env, storage):
    from cloud.routing.quarantine import Quarantine

    for entry_id, (body, _) in DAMAGED_ENTRIES.items():
        storage.put(Quarantine.key(entry_id), body)
    Quarantine(storage).put({"id": "fine", "reason": "test", "quarantined_at": time.time(), "queue": "tests"})

    # `list` shows every entry, the damaged ones as unreadable with what is wrong
    listed = burrow("quarantine", "list", env=node_env)
    assert listed.returncode == 0 and "(7 quarantined)" in listed.stdout, listed.stderr
    for entry_id, (_, problem) in DAMAGED_ENTRIES.items():
        (row,) = [line for line in listed.stdout.splitlines() if line.startswith(entry_id + " ")]
        assert f"unreadable: quarantine entry {Quarantine.key(entry_id)} " in row and problem in row
    # `show` says what is wrong; `requeue` refuses in one line, before anything is sent
    for entry_id, (_, problem) in DAMAGED_ENTRIES.items():
        shown = burrow("quarantine", "show", entry_id, env=node_env)
        assert shown.returncode == 0 and problem in shown.stdout, shown.stderr
        one_line_error(burrow("quarantine", "requeue", entry_id, env=node_env), "is not a readable job", problem)
    # and `purge` can remove them
    assert burrow("quarantine", "purge", "--yes", env=node_env).returncode == 0
    assert list(Quarantine(storage).ids()) == []


def test_odd_but_readable_records_print_and_a_missing_or_torn_result_is_one_line(node_env, storage):
    # Records a hand edit or another version could leave: readable, but not every field as this one writes it
    odd = {
        "job_id": "odd-1", "actor": "simulate", "queue": "simulation", "status": "succeeded",
        "attempts": [{"number": 1, "outcome": "succeeded", "started_at": "noon", "ended_at": None}],
        "artifacts": {}, "progress": {"note": "half"}, "checkpoint": {"key": 5}, "result": {"artifact": "result.json"},
    }  # fmt: skip
    RecordStore(storage).create(odd)
    shown = burrow("job", "odd-1", env=node_env)
    assert shown.returncode == 0 and "status succeeded" in shown.stdout, shown.stderr
    one_line_error(burrow("result", "odd-1", env=node_env), "result artifact 'result.json'", "not among its artifacts")

    # a result artifact that is not JSON
    torn = {**odd, "job_id": "torn-2", "artifacts": {"result.json": "jobs/torn-2/artifacts/a1/result.json"}}
    RecordStore(storage).create(torn)
    storage.put("jobs/torn-2/artifacts/a1/result.json", b'{"pi": 3.1')
    one_line_error(burrow("result", "torn-2", env=node_env), "jobs/torn-2/artifacts/a1/result.json", "is not JSON")


def test_a_topology_that_is_not_text_and_an_actor_module_that_does_not_import_are_one_line(node_env, tmp_path):
    binary = tmp_path / "topology.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    one_line_error(burrow("queues", env={**node_env, "BURROW_TOPOLOGY": str(binary)}), "BURROW_TOPOLOGY", "UTF-8")
    broken = tmp_path / "broken_actors.py"
    broken.write_text("def oops(:\n")
    for module, problem in (("no.such.module", "No module named 'no'"), ("broken_actors", "SyntaxError")):
        env = {**node_env, "BURROW_ACTOR_MODULES": module, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
        for command in (["queues"], ["submit", "simulate"]):
            one_line_error(burrow(*command, env=env), "BURROW_ACTOR_MODULES", f"cannot import {module!r}", problem)
        # a node logs it for each worker and stops: it cannot boot, restarting would not help
        node = burrow("node", "--processes", "1", env=env)
        assert node.returncode == 78 and "Traceback" not in node.stderr, node.stderr
        assert f"BURROW_ACTOR_MODULES: cannot import {module!r}" in node.stderr and problem in node.stderr


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["nodes", "--window-s", "nan"], "not a finite number: 'nan'"),
        (["nodes", "--window-s", "inf"], "not a finite number: 'inf'"),
        (["nodes", "--window-s", "-1"], "must be more than 0: '-1'"),
        (["result", "j-1", "--wait-s", "nan"], "not a finite number"),
        (["result", "j-1", "--wait-s", "-5"], "must be 0 or more"),
        (["submit", "simulate", "--wait", "--timeout-s", "nan"], "not a finite number"),
        (["submit", "simulate", "--count", "0"], "must be at least 1: '0'"),
        (["node", "--processes", "0"], "must be at least 1"),
        (["node", "--processes", "-3"], "must be at least 1"),
        (["router", "--processes", "0"], "must be at least 1"),
        (["router", "--threads", "-2"], "must be at least 1"),
        (["top", "--frames", "0"], "must be at least 1"),
        (["demo", "--jobs", "0"], "must be at least 1"),
        (["demo", "--samples", "-5"], "must be at least 1"),
        (["demo", "--processes", "2.5"], "not a whole number: '2.5'"),
        (["demo", "--timeout-s", "nan"], "not a finite number"),
    ],
)
def test_numbers_no_command_can_use_are_refused_in_one_line(node_env, argv, problem):
    one_line_error(burrow(*argv, env=node_env), f"argument --{argv[-2].lstrip('-')}", problem)


def test_a_window_reaching_before_1970_lists_the_nodes_seen(node_env, broker):
    listed = burrow("nodes", "--window-s", "1e308", env=node_env)
    assert listed.returncode == 0 and listed.stdout.startswith("node "), listed.stderr


def test_machines_that_share_a_node_id_are_pointed_out(node_env, amqp_url, queue_prefix):
    # Given two machines heartbeating under one BURROW_NODE_ID (a container group's shared environment)
    import pika

    from node.contract.registry import Heartbeat
    from node.middleware.heartbeat import declare_nodes_stream

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    stream = declare_nodes_stream(channel, queue_prefix)
    channel.confirm_delivery()
    for host in ("c1", "c2"):
        beat = Heartbeat(node="shared", process="cpu-0/7", instance=host, host=host, at=time.time(), interval_s=10)
        channel.basic_publish("", stream, beat.encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()

    # Then `burrow nodes` counts both slots and says to give each machine its own id
    listed = burrow("nodes", env=node_env)
    assert listed.returncode == 0 and "0/2 busy" in listed.stdout, listed.stderr
    assert "warning: 2 machines heartbeat as node 'shared': give each its own BURROW_NODE_ID" in listed.stdout


def test_a_node_whose_storage_fails_or_whose_clock_is_off_is_pointed_out(node_env, amqp_url, queue_prefix):
    import pika

    from node.contract.registry import Heartbeat
    from node.middleware.heartbeat import declare_nodes_stream

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    stream = declare_nodes_stream(channel, queue_prefix)
    channel.confirm_delivery()
    for node, changes in (("wsl", {"clock_offset_s": 3600.3}), ("revoked", {"storage_failing": True}), ("fine", {})):
        beat = Heartbeat(node=node, process="cpu-0/7", at=time.time(), interval_s=10, **changes)
        channel.basic_publish("", stream, beat.encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()

    listed = burrow("nodes", env=node_env)
    assert listed.returncode == 0, listed.stderr
    warnings = [line for line in listed.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: node 'revoked' takes no jobs: its storage fails (see its log)",
        "warning: node 'wsl': its clock is 3,600 s behind its storage's (corrected for; set it right: NTP)",
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    "damage, problem",
    [
        (b'{"batch_id": "x", "jo', "is not JSON"),
        (b"[1, 2]", "is a JSON list, not an object"),
        (b'{"jobs": [["1", 2]]}', "does not list its jobs as [line, job id] pairs"),
    ],
)
def test_a_damaged_batch_manifest_is_one_line_naming_it(node_env, storage, tmp_path, damage, problem):
    from cloud.batch import manifest_key

    rows = tmp_path / "rows.csv"
    rows.write_text("seed\n1\n2\n")
    first = burrow("submit", "simulate", "--file", str(rows), "-q", env=node_env)
    assert first.returncode == 0, first.stderr
    batch_id = first.stdout.split()[1].rstrip(":")
    storage.put(manifest_key(batch_id), damage)

    for command in (["submit", "simulate", "--file", str(rows), "-q"], ["result", f"{batch_id}-2"]):
        line = one_line_error(burrow(*command, env=node_env), f"batch manifest {manifest_key(batch_id)}", problem)
        assert line.endswith("repair or delete it")
