"""What a cluster can ever hold (train/capacity.py): the shipped cluster files read as node groups, runs no
group can hold refused naming the key, runs the autoscaler can make room for let through with a line
saying so; and the refusal through `launch` on the real local Ray cluster, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sed_ray.config import load_config
from sed_ray.train.capacity import most_workers, nodes_now, shape_from_file
from sed_ray.train.launcher import check_resources

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "jobs" / "configs" / "paper.yaml"
HEAD_ONLY = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 0.0, "memory": 1e9}, "Labels": {}}]


@pytest.fixture
def bootstrap(tmp_path) -> Path:
    """aws-gpu.yaml as `ray up` writes it to the head (~/ray_bootstrap_config.yaml): AWS's provider fills
    each node type's resources in from its instance type."""
    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    config["available_node_types"]["cpu_worker"]["resources"] = {"CPU": 32}  # c6i.8xlarge
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 192, "GPU": 8}  # p5.48xlarge
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def paper(*overrides: str):
    return load_config(PAPER, ["scaling.check_resources=true", *overrides])


def test_launcher_groups_hold_the_paper_run_the_head_alone_does_not(bootstrap):
    shape = shape_from_file(str(bootstrap))
    assert {g.name: (g.resources, g.max_count) for g in shape.groups} == {
        "head": ({"CPU": 0.0}, 1), "cpu_worker": ({"CPU": 32.0}, 8), "gpu_worker": ({"CPU": 192.0, "GPU": 8.0}, 4)}
    config = paper()  # 16 workers of 8 CPUs and 1 GPU
    assert most_workers(shape, config.scaling) == 32  # 4 GPU nodes x 8 GPUs
    assert most_workers(nodes_now(HEAD_ONLY), config.scaling) == 0
    waiting = check_resources(config, HEAD_ONLY, shape)
    assert "0 of the 16 workers fit" in waiting and "gpu_worker: up to 4 x {CPU 192, GPU 8}" in waiting


@pytest.mark.parametrize("overrides, named", [
    (["scaling.num_workers=33"], "scaling.num_workers=33"),  # 4 nodes x 8 GPUs = 32
    (["scaling.num_workers=[40, 64]"], "scaling.num_workers=(40, 64)"),  # an elastic run's minimum counts
    (["scaling.gpus_per_worker=16", "scaling.num_workers=1"], "scaling.gpus_per_worker"),  # no node has 16
    (["scaling.placement_strategy=STRICT_PACK"], "STRICT_PACK"),  # 16 on one 8-GPU node
    (["scaling.worker_labels={group: tpu}"], "scaling.worker_labels"),
    (["data.ingest_labels={group: arm}"], "data.ingest_labels"),
])
def test_a_run_no_node_group_can_ever_hold_is_refused_naming_the_key(bootstrap, overrides, named):
    with pytest.raises(ValueError, match="can never run") as refused:
        check_resources(paper(*overrides), HEAD_ONLY, shape_from_file(str(bootstrap)))
    assert named in str(refused.value) and str(bootstrap) in str(refused.value)


def test_the_launchers_global_max_workers_caps_the_groups(bootstrap):
    config = yaml.safe_load(bootstrap.read_text())
    config["max_workers"] = 2  # two worker nodes in all, whatever each group allows
    bootstrap.write_text(yaml.safe_dump(config))
    assert most_workers(shape_from_file(str(bootstrap)), paper().scaling) == 16
    with pytest.raises(ValueError, match="at most 16 fit"):
        check_resources(paper("scaling.num_workers=17"), HEAD_ONLY, shape_from_file(str(bootstrap)))


def test_sizes_known_only_once_a_node_starts_refuse_nothing():
    """aws-gpu.yaml as shipped: `resources: {}` until `ray up` fills them in from the instance types."""
    shape = shape_from_file(str(ROOT / "cluster" / "aws-gpu.yaml"))
    assert most_workers(shape, paper().scaling) is None
    assert check_resources(paper("scaling.num_workers=1000"), HEAD_ONLY, shape) == ""


@pytest.mark.parametrize("manifest", ["gcp-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob-train.yaml"])
def test_shipped_cluster_files_read_as_node_groups(manifest):
    shape = shape_from_file(str(ROOT / "cluster" / manifest))
    gpu = [g for g in shape.groups if g.labels.get("group") == "gpu"]
    assert len(gpu) == 1 and gpu[0].resources["GPU"] == 8 and gpu[0].max_count == 4
    assert [g.resources["CPU"] for g in shape.groups if g.head] == [0.0]  # nothing trains on the head
    assert most_workers(shape, paper().scaling) == 32
    assert check_resources(paper("scaling.worker_labels={group: gpu}"), HEAD_ONLY, shape)  # waits for the autoscaler


def test_a_fixed_cluster_is_checked_against_its_nodes():
    nodes = [*HEAD_ONLY, *({"Alive": True, "NodeManagerAddress": f"10.0.0.{i}", "Resources": {"CPU": 20.0, "GPU": 2.0},
                            "Labels": {"group": "gpu"}} for i in (2, 3)),
             {"Alive": False, "NodeManagerAddress": "10.0.0.4", "Resources": {"CPU": 16.0, "GPU": 2.0}}]
    assert check_resources(paper("scaling.num_workers=4"), nodes, None) == ""
    with pytest.raises(ValueError, match=r"at most 4 fit on the 3 node\(s\) the cluster has now"):
        check_resources(paper("scaling.num_workers=5"), nodes, None)  # the dead node does not count
    with pytest.raises(ValueError, match="scaling.cpus_per_worker=10.0 needs 40 CPUs plus 1 for data ingest"):
        check_resources(paper("scaling.num_workers=4", "scaling.cpus_per_worker=10", "scaling.gpus_per_worker=0.5"),
                        nodes, None)  # the workers fit, two per node, with no CPU left for ingest


@pytest.mark.parametrize("text, says", [("just: [a list", "cannot read it as YAML"),
                                         ("kind: Deployment\n", "neither a Ray cluster-launcher config")])
def test_a_bad_node_types_file_is_named(tmp_path, text, says):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=says) as bad:
        shape_from_file(str(path))
    assert f"scaling.node_types={str(path)!r}" in str(bad.value)
