"""Settings from the environment: defaults, validation naming the variable, masked credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import ConfigError
from node.settings import Settings, mask_url


def test_defaults_work_on_a_laptop():
    settings = Settings.from_env({})
    assert settings.amqp_url.startswith("amqp://guest:guest@127.0.0.1:5672")
    assert settings.storage_url.startswith("file://")
    assert settings.gpus is None and settings.prefetch == 1 and settings.delivery_limit == 3


def test_values_are_parsed():
    settings = Settings.from_env(
        {
            "AMQP_URL": "amqps://u:p@mq.example:5671/vh",
            "BURROW_STORAGE_URL": "s3://bucket/prefix",
            "BURROW_GPUS": "0, 2",
            "BURROW_HEARTBEAT_S": "15",
            "BURROW_GRACE_S": "7.5",
            "BURROW_STATE_DIR": "/tmp/x",
            "BURROW_ACTOR_MODULES": "actors.simulation, tests.workload",
        }
    )
    assert settings.gpus == ("0", "2")
    assert settings.heartbeat_s == 15 and settings.grace_s == 7.5
    assert settings.state_dir == Path("/tmp/x")
    assert settings.actor_modules == ("actors.simulation", "tests.workload")
    assert Settings.from_env({"BURROW_GPUS": "none"}).gpus == ()


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("AMQP_URL", "http://x", "scheme 'http'"),
        ("AMQP_URL", "amqp://[::1", "is not a URL"),  # (urlsplit's ValueError was a traceback)
        ("AMQP_URL", "amqp://host:99999", "is not a URL"),
        ("AMQP_URL", "amqp://guest:pw@host:port/", "is not a URL"),
        ("BURROW_STORAGE_URL", "ftp://x", "scheme 'ftp'"),
        ("BURROW_PREFETCH", "zero", "whole number"),
        ("BURROW_PREFETCH", "0", "at least 1"),
        ("BURROW_PREFETCH", "100000", "at most 64"),  # (past 65535 every consumer crash-looped in basic.qos)
        ("BURROW_THREADS", "100000", "at most 64"),
        ("BURROW_HEARTBEAT_S", "100000", "at most 65535"),  # (AMQP's 16 bits: "Stream connection lost")
        ("BURROW_CPU_SLOTS", "100000", "at most 1024"),
        ("BURROW_PROCESSES", "5000", "at most 1024"),
        ("BURROW_MAX_PAYLOAD_BYTES", "999999999999", "at most 134217728"),
        ("BURROW_GRACE_S", "soon", "a number"),
        ("BURROW_GRACE_S", "nan", "finite number"),  # NaN passed the minimum check, then broke the supervisor
        ("BURROW_NODE_HEARTBEAT_S", "inf", "finite number"),
        ("BURROW_GPUS", "0,,1", "empty entry"),
        ("BURROW_GPUS", "1,1", "twice"),
        ("BURROW_GPUS", "abc", "'abc' is not a GPU index or UUID"),
        ("BURROW_END_BUDGET_S", "-1", "must be at least"),
        ("BURROW_NODE_ID", "a b", "letters, digits"),
        ("BURROW_NODE_ID", "nœud", "letters, digits"),  # (ASCII only: it names queues and storage keys)
        ("BURROW_QUEUE_PREFIX", "../", "letters, digits"),
        ("BURROW_QUEUE_PREFIX", "my prefix.", "letters, digits"),
        ("BURROW_ACTOR_MODULES", "actors/simulation", "module path"),
    ],
)
def test_malformed_values_name_the_variable(variable, value, problem):
    with pytest.raises(ConfigError, match=problem) as error:
        Settings.from_env({variable: value})
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}: ")


def test_credentials_are_masked():
    assert mask_url("amqp://user:s3cret@host:5672/vh") == "amqp://user:***@host:5672/vh"
    assert mask_url("amqp://host/vh") == "amqp://host/vh"
    settings = Settings.from_env({"AMQP_URL": "amqp://a:pw1@h1;amqp://b:pw2@h2", "AWS_SECRET_ACCESS_KEY": "topsecret"})
    assert settings.masked_amqp_url == "amqp://a:***@h1;amqp://b:***@h2"
    assert "topsecret" not in repr(settings)
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"AMQP_URL": "http://u:hunter2@h"})
    assert "hunter2" not in str(error.value)


def test_an_actor_option_no_middleware_declares_is_named_with_the_options_the_node_knows(tmp_path, monkeypatch):
    # Given an actor module using a Dramatiq option the node has no middleware for (Retries' retry_when)
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from node.middleware import JobSubmission
    from node.settings import import_actor_modules

    (tmp_path / "ported_actors.py").write_text(
        "import dramatiq\n@dramatiq.actor(queue_name='q', retry_when=min)\ndef job():\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dramatiq.broker, "global_broker", StubBroker(middleware=[JobSubmission()]))

    # When the node imports it, the error is one line naming the option and the ones the node knows
    with pytest.raises(ConfigError) as raised:
        import_actor_modules(("ported_actors",))
    message = str(raised.value)
    assert "'ported_actors': an actor uses options this node does not know: retry_when (it knows: " in message
    assert "max_retries" in message and "ttl_s" in message and "\n" not in message
