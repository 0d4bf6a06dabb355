"""The Kubernetes manifests (``cloud/autoscale/kubernetes``) validated against the schemas of the resources they
declare: Kubernetes' own for the Deployment, KEDA's for the ScaledObject and TriggerAuthentication. The
schemas come compiled in the ``kubernetes-models`` npm packages (installed from the npm registry into the
pytest cache on first use); a schema error names the field."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(300)

MANIFESTS = ROOT / "cloud" / "autoscale" / "kubernetes"
PACKAGES = ["kubernetes-models@4.5.1", "@kubernetes-models/keda@0.4.2"]
MODELS = {
    ("apps/v1", "Deployment"): "kubernetes-models/apps/v1/Deployment",
    ("keda.sh/v1alpha1", "ScaledObject"): "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication",
}
VALIDATE = """
const docs = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = docs.map(([module, kind, doc]) => {
  try { new (require(module)[kind])(doc).validate(); return null; } catch (e) { return String(e.message); }
});
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="session")
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are needed to validate the Kubernetes manifests (apt-get install nodejs npm)")
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    folder = Path(cache.mkdir("k8s-models")) if cache is not None else tmp_path_factory.mktemp("k8s-models")
    if not (folder / "node_modules" / "@kubernetes-models" / "keda").exists():
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), *PACKAGES],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, f"npm install failed: {done.stderr[-2000:]}"
    return folder


def validate(models: Path, docs: list[dict]) -> list[str | None]:
    """Each document's schema error, or ``None``."""
    batch = [[MODELS[(d["apiVersion"], d["kind"])], d["kind"], d] for d in docs]
    done = subprocess.run(
        ["node", "-e", VALIDATE], input=json.dumps(batch), capture_output=True, text=True, timeout=60, cwd=models
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def manifests() -> list[dict]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_manifest_fits_its_schema(models):
    docs = manifests()
    assert sorted(d["kind"] for d in docs) == ["Deployment", "ScaledObject", "TriggerAuthentication"]
    assert validate(models, docs) == [None, None, None]


def test_the_validation_can_fail_and_names_the_field(models):
    deployment, scaled, _ = sorted(manifests(), key=lambda d: d["kind"])
    deployment["spec"]["replicas"] = "none"
    del scaled["spec"]["scaleTargetRef"]["name"]
    errors = validate(models, [deployment, scaled])
    assert "replicas must be integer" in errors[0]
    assert "scaleTargetRef must have required property" in errors[1]


def test_keda_and_the_deployment_agree_with_burrow():
    docs = {d["kind"]: d for d in manifests()}
    deployment, scaled = docs["Deployment"], docs["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"]["maxReplicaCount"] <= 250
    for trigger in scaled["spec"]["triggers"]:
        # Over the management API the count includes running (unacked) jobs: over AMQP KEDA would shrink a
        # pool while its jobs run.
        assert trigger["type"] == "rabbitmq" and trigger["metadata"]["protocol"] == "http"
        assert trigger["authenticationRef"]["name"] == docs["TriggerAuthentication"]["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert pod["terminationGracePeriodSeconds"] >= int(env["BURROW_GRACE_S"]["value"]) + 5
    assert pod["containers"][0]["livenessProbe"]["exec"]["command"] == ["burrow", "health"]
    assert "value" not in env["AMQP_URL"] and "value" not in env["AWS_SECRET_ACCESS_KEY"]  # secrets by reference
