"""The router with a signing key: it re-signs what it re-dispatches (an operator's requeue changes the signed
expiry), and quarantines a reported job whose signature does not match instead of laundering it with a fresh
signature — real broker and storage, the router's handling called directly."""

from __future__ import annotations

import json

import pytest

from cloud.registry import NodeRegistry
from cloud.routing.policy import DefaultPolicy, RouterConfig
from cloud.routing.router import Router
from node.contract.job_options import JobOptions
from node.contract.signing import load_signer, load_trusted, new_key_pair, verify
from tests.conftest import job_message

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def keys():
    private, public = new_key_pair("k1")
    return load_signer("BURROW_SIGNING_KEY", private), load_trusted("BURROW_TRUSTED_KEYS", public)


def report(message, **changes) -> dict:
    body = message.asdict()
    body.update(changes)
    return {"kind": "requeue", "job": body, "reason": "an operator's requeue", "node": "", "attempts": []}


def test_the_router_re_signs_its_dispatch_and_quarantines_an_altered_job(broker, storage, keys, queue_prefix):
    signer, trusted = keys
    broker.declare_queue("tests", ensure=True)
    registry = NodeRegistry(broker.parameters, queue_prefix, refresh_s=0)
    router = Router(
        broker=broker,
        storage=storage,
        registry=registry,
        policy=DefaultPolicy(RouterConfig()),
        topology=None,
        signer=signer,
    )
    job = JobOptions(job_id="signed-1", expires_at=1.0).to_options()  # expired: a requeue clears the expiry
    job["signature"] = signer.sign("tracked", [], {"job_key": "a"}, job)
    message = job_message("tests", "tracked", "signed-1", options={"job": job}, job_key="a")
    (outgoing,) = router.handle(report(message), "report-1")
    sent = json.loads(outgoing.body)
    assert sent["options"]["job"]["expires_at"] is None
    verify(trusted, sent["actor_name"], sent["args"], sent["kwargs"], sent["options"]["job"])  # re-signed

    other = JobOptions(job_id="signed-2").to_options()
    other["signature"] = signer.sign("tracked", [], {"job_key": "b"}, other)
    altered = job_message("tests", "tracked", "signed-2", options={"job": other}, job_key="somebody-else")
    assert router.handle(report(altered), "report-2") == []  # not dispatched
    (entry,) = [e for e in router.quarantine.entries() if e["job_id"] == "signed-2"]
    assert entry["reason"].startswith("bad-signature: options.job.signature: signature by key 'k1' does not match")
