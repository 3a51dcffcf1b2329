"""Several Ray nodes on this machine, each its own raylet (tests/ray_nodes.py): training workers spread over
the nodes labelled for training, ingest on the CPU node group, and a whole worker node killed mid-run: the
run continues from its last checkpoint on the nodes that remain and finishes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_nodes import BIN, LocalNodes
from sed_ray.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "jobs" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def nodes():
    cluster = LocalNodes()
    try:
        cluster.head(cpus=1)  # the driver's side: Ray Train's controller
        train_a = cluster.add(cpus=2, labels="group=train")
        train_b = cluster.add(cpus=2, labels="group=train")
        cluster.add(cpus=2, labels="group=cpu")
        yield cluster, train_a, train_b
    finally:
        cluster.stop()


def _state(cluster: LocalNodes, kind: str, *filters: str) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", kind, "--address", cluster.dashboard_address, "--format", "json",
                          "--detail", "--limit", "10000", *[a for f in filters for a in ("--filter", f)]],
                         env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _node_groups(cluster: LocalNodes) -> dict[str, str]:
    return {n["node_id"]: n.get("labels", {}).get("group", "head") for n in cluster.alive()}


def test_spread_workers_labelled_ingest_and_a_lost_node(nodes, synth_shards, tmp_path):
    cluster, _train_a, train_b = nodes
    storage = tmp_path / "runs"  # one machine: every node sees the same absolute path, as a shared mount
    args = [f"data.shards={synth_shards}", f"storage={storage}", "name=multinode", "logging.wandb=false",
            "schedule.stages=[{preset: stage1, steps: 4, lr: 0.003}, {preset: stage2, steps: 8, lr: 0.003}]",
            "checkpoint.every_steps=2", "checkpoint.keep=20", "logging.every_steps=1", "validation.max_batches=1",
            "data.batch_seconds=12", "optim.warmup_steps=1", "max_failures=3",
            "scaling.num_workers=[1, 2]", "scaling.placement_strategy=SPREAD",
            "scaling.worker_labels={group: train}", "data.ingest_labels={group: cpu}"]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "sed_ray.cli", "train", "--config", str(TINY), *args], cwd=ROOT,
                              env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address}, stdout=log, stderr=log)
    run_dir = storage / "multinode"
    groups_at_start: list[str] = []
    killed: dict = {}
    deadline = time.time() + 600
    while driver.poll() is None and time.time() < deadline:
        steps = [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m]
        if not groups_at_start and steps:
            groups = _node_groups(cluster)
            workers = _state(cluster, "actors", "state=ALIVE", "class_name=RayTrainWorker")
            groups_at_start = sorted(groups.get(w["node_id"], "?") for w in workers)
            nodes_at_start = {w["node_id"] for w in workers}
        if not killed and steps and max(steps) >= 7 and list(run_dir.glob("checkpoint_step*")):
            killed["after_step"] = max(steps)
            cluster.kill(train_b)  # the whole node: raylet, object store, agents, the worker on it
        time.sleep(0.2)
    assert driver.wait(timeout=60) == 0, (tmp_path / "driver.log").read_text()[-4000:]

    # two workers on two different nodes, both of the training group
    assert groups_at_start == ["train", "train"] and len(nodes_at_start) == 2
    # every ingest task ran on the CPU group's node
    groups = _node_groups(cluster) | {n["node_id"]: n.get("labels", {}).get("group", "?")
                                      for n in _state(cluster, "nodes")}
    ingest = [t for t in _state(cluster, "tasks") if "bucket_window" in t["name"] or "ReadParquet" in t["name"]]
    assert ingest and {groups.get(t["node_id"]) for t in ingest} == {"cpu"}, {t["name"] for t in ingest}

    # the lost node cost the steps since the last checkpoint; the run finished on the node that remained
    assert killed, "the run ended before a node could be killed"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    resumed = [m for m in metrics if m.get("event") == "resumed"]
    assert resumed, "the run never resumed after losing a node"
    lost = killed["after_step"] - resumed[-1]["step"]
    print(f"lost node: killed after step {killed['after_step']}, resumed at {resumed[-1]['step']}: {lost} step(s) "
          f"redone, on {resumed[-1]['world_size']} worker(s)")
    assert 0 <= lost <= 4
    assert max(m["step"] for m in metrics if "loss" in m) == 12
    assert max(int(p.name.split("step")[1]) for p in run_dir.glob("checkpoint_step*")) == 12
