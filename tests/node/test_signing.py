"""Signed jobs: what a signature covers and what it lets change, and keys read from the environment."""

from __future__ import annotations

import pytest

from node.contract.job_options import JobOptions
from node.contract.signing import BadSignature, load_signer, load_trusted, new_key_pair, verify
from node.errors import ConfigError
from node.settings import Settings

pytestmark = pytest.mark.timeout(30)

PRIVATE, PUBLIC = new_key_pair("k1")
SIGNER = load_signer("BURROW_SIGNING_KEY", PRIVATE)
TRUSTED = load_trusted("BURROW_TRUSTED_KEYS", PUBLIC)


def signed(**job):
    options = JobOptions(job_id="job-1", model="llama3-8b", **job).to_options()
    options["signature"] = SIGNER.sign("train", [1], {"steps": 10}, options)
    return options


def test_a_signed_job_verifies_and_its_bookkeeping_may_change_in_flight():
    job = signed()
    verify(TRUSTED, "train", [1], {"steps": 10}, job)
    # Nodes and the router update counters, avoid lists and the trace context: still valid.
    moved = {**job, "failures": 2, "interruptions": 5, "avoid_nodes": ["n1"], "trace": {"traceparent": "00-x"}}
    verify(TRUSTED, "train", (1,), {"steps": 10}, moved)


@pytest.mark.parametrize(
    "actor, args, kwargs, change",
    [
        ("train", [1], {"steps": 11}, {}),  # arguments
        ("train", [2], {"steps": 10}, {}),
        ("simulate", [1], {"steps": 10}, {}),  # another actor
        ("train", [1], {"steps": 10}, {"job_id": "job-2"}),  # identity and placement
        ("train", [1], {"steps": 10}, {"subcloud": "acme"}),
        ("train", [1], {"steps": 10}, {"priority": "urgent"}),
        ("train", [1], {"steps": 10}, {"expires_at": 2e9}),
        ("train", [1], {"steps": 10}, {"reply_to": "elsewhere"}),
    ],
)
def test_altering_what_the_signature_covers_is_caught(actor, args, kwargs, change):
    with pytest.raises(BadSignature, match="does not match"):
        verify(TRUSTED, actor, args, kwargs, {**signed(), **change})


def test_unsigned_garbled_and_unknown_key_signatures_are_refused_with_reason_bad_signature():
    job = signed()
    for bad, words in [
        ({**job, "signature": None}, "unsigned"),
        ({**job, "signature": "k1:!!!not base64"}, "does not match"),
        ({**job, "signature": "k9:" + job["signature"].split(":", 1)[1]}, "does not trust"),
    ]:
        with pytest.raises(BadSignature, match=words) as raised:
            verify(TRUSTED, "train", [1], {"steps": 10}, bad)
        assert raised.value.reason == "bad-signature" and raised.value.field == "options.job.signature"
    other_private, _ = new_key_pair("k1")  # the same key id, another key: a forgery
    forged = dict(job)
    forged["signature"] = load_signer("X", other_private).sign("train", [1], {"steps": 10}, job)
    with pytest.raises(BadSignature, match="does not match"):
        verify(TRUSTED, "train", [1], {"steps": 10}, forged)


def test_rotation_trusts_several_keys():
    _, public2 = new_key_pair("k2")
    trusted = load_trusted("BURROW_TRUSTED_KEYS", f"{public2}, {PUBLIC}")
    assert set(trusted) == {"k1", "k2"}
    verify(trusted, "train", [1], {"steps": 10}, signed())


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("BURROW_SIGNING_KEY", "nokeyid", "expected <key id>:<base64 key>"),
        ("BURROW_SIGNING_KEY", "k1:%%%", "not base64"),
        ("BURROW_SIGNING_KEY", "k1:AAAA", "not a 32-byte Ed25519 private key"),
        ("BURROW_TRUSTED_KEYS", f"{PUBLIC},k2:AAAA", "key 'k2' is not a 32-byte Ed25519 public key"),
    ],
)
def test_a_malformed_key_stops_start_up_naming_its_variable_and_never_showing_the_key(variable, value, words):
    with pytest.raises(ConfigError, match=words) as raised:
        Settings.from_env({variable: value})
    assert raised.value.variable == variable


def test_the_signing_key_is_never_printed():
    settings = Settings.from_env({"BURROW_SIGNING_KEY": PRIVATE, "BURROW_TRUSTED_KEYS": PUBLIC})
    secret = PRIVATE.split(":", 1)[1]
    assert secret not in repr(settings) and secret not in repr(settings.signer())
