"""TLS to the broker: a private RabbitMQ with a TLS listener and a certificate from a CA made by the test; a
node and a submitter reach it over ``amqps://`` trusting that CA (``BURROW_AMQP_CA_FILE``), and without it
the connection is refused in one line naming the certificate problem."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.submit import Client
from node.settings import Settings
from tests.conftest import ROOT
from tests.rabbitmq_node import PrivateRabbitmq, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def write_pki(folder: Path) -> None:
    """A CA, and a server certificate for localhost / 127.0.0.1 signed by it (PEM files in ``folder``)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "burrow test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture
def tls_broker(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    write_pki(pki)
    port = free_port()
    node = PrivateRabbitmq(
        tmp_path / "rabbit",
        config=(
            f"listeners.ssl.default = {port}\n"
            f"ssl_options.cacertfile = {pki / 'ca.pem'}\n"
            f"ssl_options.certfile = {pki / 'server.pem'}\n"
            f"ssl_options.keyfile = {pki / 'server.key'}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        ),
    )
    node.start(timeout_s=120)
    node.tls_url = f"amqps://guest:guest@localhost:{port}/%2F"
    node.ca = pki / "ca.pem"
    yield node
    node.discard()  # its files are thrown away: no clean shutdown needed


def test_a_node_and_a_submitter_work_over_tls_trusting_the_deployments_ca(tls_broker, node_env, start_node):
    env = {**node_env, "AMQP_URL": tls_broker.tls_url, "BURROW_AMQP_CA_FILE": str(tls_broker.ca)}
    env["BURROW_CPU_SLOTS"] = "1"
    start_node(argv=[sys.executable, "-m", "dramatiq", "node.actors", "--processes", "1", "--threads", "1"], env=env)
    client = Client(Settings.from_env(env))
    try:
        handle = client.submit("counted", job_key="over-tls", job_type="polling")
        assert handle.wait(timeout=120)["status"] == "succeeded"
    finally:
        client.close()
    # Without the deployment's CA the broker's certificate is not trusted: one line, no traceback, no password.
    untrusting = {k: v for k, v in env.items() if k != "BURROW_AMQP_CA_FILE"}
    argv = [sys.executable, "-m", "cloud.cli", "queues"]
    done = subprocess.run(argv, env=untrusting, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr or "certificate verify failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and ":guest@" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def https_s3(tmp_path):
    """The loopback S3 endpoint (moto) served over https with a certificate from the test's CA."""
    import ssl
    import threading

    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    pki = tmp_path / "pki-s3"
    pki.mkdir()
    write_pki(pki)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}", pki / "ca.pem"
    server.shutdown()
    thread.join()


def test_s3_storage_over_https_trusts_the_deployments_ca_and_refuses_an_unknown_one(https_s3, monkeypatch):
    import boto3

    from node.storage import open_storage

    endpoint, ca = https_s3
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))  # boto3's own setting for a private CA
    keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=str(ca), **_aws(keys))
    client.create_bucket(Bucket="tls-bucket")
    storage = open_storage("s3://tls-bucket/jobs", endpoint_url=endpoint, **keys)
    storage.put("records/a.json", b"{}")
    assert storage.get("records/a.json")[0] == b"{}"

    # Trusting only the system's CAs, the endpoint's certificate is refused
    monkeypatch.delenv("AWS_CA_BUNDLE")
    untrusting = open_storage("s3://tls-bucket/jobs", endpoint_url=endpoint, **keys)
    with pytest.raises(Exception, match="(?i)certificate verify failed"):
        untrusting.get("records/a.json")


def _aws(keys: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": keys["access_key_id"], "aws_secret_access_key": keys["secret_access_key"]}
