"""The cluster, KubeRay and Docker files agree with the pinned Ray and keep the security defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _ray_version() -> str:
    return re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]


def test_cluster_launcher_yaml_matches_rays_own_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    start = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])


def test_kuberay_manifest_keeps_auth_and_private_dashboard():
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay-raycluster.yaml").read_text())
    assert manifest["spec"]["rayVersion"] == _ray_version()
    assert manifest["spec"]["authOptions"]["mode"] == "token"
    assert manifest["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert manifest["spec"]["enableInTreeAutoscaling"] is True


def test_docker_image_uses_the_pinned_ray():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_version()}-py311-gpu" in dockerfile
    assert "ray-ml" not in dockerfile.split("FROM", 1)[1]
