"""The cluster, KubeRay and Docker files pass their own tools (Ray's launcher checks, kubernetes-validate,
hadolint), agree with the pinned versions and keep the security defaults."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = sorted((ROOT / "cluster").glob("*-gpu.yaml"))
KUBERAY = sorted((ROOT / "cluster").glob("kuberay-*.yaml"))
PYPROJECT = (ROOT / "pyproject.toml").read_text()
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, re.M)[1]
K8S_VERSION = "1.33.0"  # the Kubernetes API the core kinds are checked against


def _ray_version() -> str:
    return re.search(r'"ray\[[^\]]*\]==([\d.]+)"', PYPROJECT)[1]


def _pin(name: str) -> str:
    return re.search(rf'"{name}([^"]*)"', PYPROJECT)[1]


def test_there_are_launchers_for_aws_and_gcp_and_rayjobs_for_training_and_tune():
    assert {p.name for p in LAUNCHERS} == {"aws-gpu.yaml", "gcp-gpu.yaml"}
    assert {"kuberay-raycluster.yaml", "kuberay-rayjob-train.yaml", "kuberay-rayjob-tune.yaml"} <= {p.name for p in KUBERAY}


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_cluster_launcher_passes_rays_own_checks(path):
    """What `ray up` runs before it starts anything: defaults filled in, then the schema and node types."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert config["docker"]["image"].endswith(f"sed-ray:{VERSION}")  # pinned, never :latest
    options = " ".join(config["docker"]["run_options"])
    assert all(f"-e {key}" in options for key in ("RAY_AUTH_TOKEN", "HF_TOKEN", "WANDB_API_KEY"))
    assert not re.search(r"(AKIA|secret_access_key|private_key)", path.read_text(), re.I)  # no keys in the file


def _pod_templates(manifest: dict) -> dict[str, dict]:
    spec = manifest["spec"]
    cluster = spec["rayClusterSpec"] if manifest["kind"] == "RayJob" else spec
    groups = {"head": cluster["headGroupSpec"]["template"]}
    groups |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
    return groups


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path):
    """Core kinds against the Kubernetes schema; the ray.io kinds structurally, with every pod template
    they hold validated as a core PodTemplate, and their security and secret wiring checked."""
    import kubernetes_validate

    for manifest in yaml.safe_load_all(path.read_text()):
        if not manifest["apiVersion"].startswith("ray.io/"):
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
            continue
        assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in ("RayCluster", "RayJob")
        assert manifest["metadata"]["name"]
        spec = manifest["spec"]
        cluster = spec["rayClusterSpec"] if manifest["kind"] == "RayJob" else spec
        assert cluster["rayVersion"] == _ray_version()
        assert cluster["authOptions"]["mode"] == "token"
        assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
        assert cluster["enableInTreeAutoscaling"] is True
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        for name, template in _pod_templates(manifest).items():
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                                          "template": template}, K8S_VERSION, strict=True)
            for container in template["spec"]["containers"]:
                assert container["image"] == f"sed-ray:{VERSION}", (path.name, name)
                secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                           if "secretKeyRef" in e.get("valueFrom", {})}
                assert secrets.get("HF_TOKEN") == secrets.get("WANDB_API_KEY") == "sed-ray-secrets", (path.name, name)
        if manifest["kind"] == "RayJob":
            assert spec["shutdownAfterJobFinishes"] is True
            entry = spec["entrypoint"]
            assert re.search(r"jobs/(train|tune)\.py", entry) and "storage=s3://" in entry and "data.shards=s3://" in entry
            _check_entrypoint(entry)


def _check_entrypoint(entry: str) -> None:
    """The job's command line parses, and its config (the image's copy is this repository's) is valid."""
    import shlex

    from sed_ray.config import load_config

    argv = shlex.split(entry)
    config_path = argv[argv.index("--config") + 1].replace("/home/ray/sed-ray", str(ROOT))
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
    config = load_config(config_path, overrides)
    assert not config.problems(), config.problems()
    assert config.data.ingest_labels == {"group": "cpu"}


def test_docker_image_uses_the_pinned_ray_and_the_projects_pins():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_version()}-py311-gpu" in dockerfile
    assert "ray-ml" not in dockerfile.split("FROM", 1)[1]
    assert f'"torch{_pin("torch")}"' in dockerfile and f'"deepspeed{_pin("deepspeed")}"' in dockerfile
    assert "pip install --no-cache-dir -e ." in dockerfile  # the rest from pyproject.toml's own pins


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--format", "json", str(ROOT / "docker" / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=1)
