"""Several Ray nodes on this machine, each its own raylet (tests/ray_nodes.py), token authentication on, and
the tiny training submitted the way users run it: the real `ray job submit --working-dir .` client. Training
workers spread over the nodes labelled for training, ingest on the CPU node group; a whole worker node
killed mid-run (scale down: the run continues from its last checkpoint on the node that remains, with one
worker) and a new training node added (scale up, as an autoscaler replacing a reclaimed node: the elastic
run grows back to two workers), and the job succeeds with its checkpoints where the config put them. Then
batch inference sized for a node the cluster does not have yet waits for it, and runs on it once added."""

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
TRAIN_SLOT = '{"train_slot": 1}'
# A tiny step takes ~0.2 s: the steps after the resume on one worker must outlast adding a node and
# Ray Train's resize to two workers (tens of seconds), or the run ends before it can grow.
STAGE2_STEPS = 76
TOTAL = 4 + STAGE2_STEPS


@pytest.fixture(scope="module")
def nodes():
    cluster = LocalNodes()
    try:
        cluster.head(cpus=1)  # the driver's side: Ray Train's controller
        # one worker per training node; the slot resource is what Ray Train's elastic sizing counts
        train_a = cluster.add(cpus=1, labels="group=train", resources=TRAIN_SLOT)
        train_b = cluster.add(cpus=1, labels="group=train", resources=TRAIN_SLOT)
        cluster.add(cpus=2, labels="group=cpu")
        yield cluster, train_a, train_b
    finally:
        cluster.stop()


def _state(cluster: LocalNodes, kind: str, *filters: str) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", kind, "--address", cluster.dashboard_address, "--format", "json",
                          "--detail", "--limit", "10000", *[a for f in filters for a in ("--filter", f)]],
                         env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout.strip()
    return json.loads(text) if text.startswith("[") else []  # none found: a message, not JSON


def _node_groups(cluster: LocalNodes) -> dict[str, str]:
    return {n["node_id"]: n.get("labels", {}).get("group", "head") for n in cluster.alive()}


def _watch(cluster: LocalNodes, driver: subprocess.Popen, run_dir: Path, train_b) -> dict:
    """While the run goes: note where its workers started, kill a training node once a checkpoint exists
    after step 5, and add a new one once the run has resumed on one worker."""
    seen: dict = {"groups": [], "nodes": set(), "killed": {}, "added": {}}
    deadline = time.time() + 600
    while driver.poll() is None and time.time() < deadline:
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        steps = [m["step"] for m in metrics if "loss" in m]
        if not seen["groups"] and steps:
            groups = _node_groups(cluster)
            workers = _state(cluster, "actors", "state=ALIVE", "class_name=RayTrainWorker")
            seen["groups"] = sorted(groups.get(w["node_id"], "?") for w in workers)
            seen["nodes"] = {w["node_id"] for w in workers}
        if not seen["killed"] and steps and max(steps) >= 5 and list(run_dir.glob("checkpoint_step*")):
            seen["killed"]["after_step"] = max(steps)
            cluster.kill(train_b)  # the whole node: raylet, object store, agents, the worker on it
        resumed = [m for m in metrics if m.get("event") == "resumed"]
        if seen["killed"] and not seen["added"] and resumed and resumed[-1]["world_size"] == 1:
            seen["added"]["at_step"] = resumed[-1]["step"]
            cluster.add(cpus=1, labels="group=train", resources=TRAIN_SLOT)  # as an autoscaler replaces a lost node
        time.sleep(0.2)
    return seen


def _submit(cluster: LocalNodes, entrypoint: list[str], log=subprocess.PIPE, working_dir: bool = True) -> subprocess.Popen:
    """`ray job submit` from the repository, as a user's laptop would; it returns when the job ends, 0 if
    it succeeded."""
    return subprocess.Popen([str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_address,
                             *(["--working-dir", "."] if working_dir else []), "--", *entrypoint], cwd=ROOT,
                            env=cluster.env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _agent_answers(cluster: LocalNodes, tmp_path: Path) -> None:
    """The head refuses a client without the token, and takes a job from one with it (its job agent comes
    up a little after the dashboard answers). No working directory: Ray 2.60 deletes a job's unpacked
    package once that job ends, even while a job submitted next with the same package starts in it."""
    anonymous = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    anonymous["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", cluster.dashboard_address],
                             env=anonymous, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    deadline = time.time() + 90
    while True:
        out, _ = _submit(cluster, ["python", "-c", "pass"], working_dir=False).communicate(timeout=300)
        if "No available agent" not in out or time.time() > deadline:
            break
        time.sleep(2)
    assert "succeeded" in out.lower(), out[-3000:]


def test_a_submitted_job_spreads_survives_a_lost_node_and_grows_back(nodes, synth_shards, tmp_path):
    cluster, _train_a, train_b = nodes
    _agent_answers(cluster, tmp_path)
    storage = tmp_path / "runs"  # one machine: every node sees the same absolute path, as a shared mount
    args = [f"data.shards={synth_shards}", f"storage={storage}", "name=multinode", "logging.wandb=false",
            f"schedule.stages=[{{preset: stage1, steps: 4, lr: 0.003}}, {{preset: stage2, steps: {STAGE2_STEPS}, lr: 0.003}}]",
            "checkpoint.every_steps=4", "checkpoint.keep=30", "logging.every_steps=1",
            # a new node is seen within 2 s; the restart after the loss asks for two workers while Ray still
            # counts the lost node, and gives up on them after 15 s instead of Ray's 60
            "scaling.resize_check_s=2", "scaling.start_timeout_s=15",
            "validation.max_batches=1",
            "data.batch_seconds=12", "optim.warmup_steps=1", "max_failures=3",
            "scaling.num_workers=[1, 2]", "scaling.placement_strategy=SPREAD",
            "scaling.worker_labels={group: train}", "scaling.worker_resources={train_slot: 1}",
            "data.ingest_labels={group: cpu}"]
    log = (tmp_path / "driver.log").open("w")
    driver = _submit(cluster, ["python", "jobs/train.py", "--config", "jobs/configs/tiny.yaml", *args], log)
    run_dir = storage / "multinode"
    try:
        seen = _watch(cluster, driver, run_dir, train_b)
    finally:
        if driver.poll() is None:  # a failed check must not leave the client waiting (the cluster goes after)
            driver.kill()
    assert driver.wait(timeout=60) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    assert "succeeded" in (tmp_path / "driver.log").read_text().lower()
    groups_at_start, nodes_at_start, killed, added = (seen[k] for k in ("groups", "nodes", "killed", "added"))

    # two workers on two different nodes, both of the training group
    assert groups_at_start == ["train", "train"] and len(nodes_at_start) == 2
    # every ingest task ran on the CPU group's node
    groups = _node_groups(cluster) | {n["node_id"]: n.get("labels", {}).get("group", "?")
                                      for n in _state(cluster, "nodes")}
    ingest = [t for t in _state(cluster, "tasks") if "bucket_files" in t["name"]]  # read, window, bucket
    assert ingest and {groups.get(t["node_id"]) for t in ingest} == {"cpu"}, {t["name"] for t in ingest}

    # the lost node cost the steps since the last checkpoint; the run finished on the node that remained
    assert killed, "the run ended before a node could be killed"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    resumed = [m for m in metrics if m.get("event") == "resumed"]
    assert resumed, "the run never resumed after losing a node"
    done_before = max(m["step"] for m in metrics if "loss" in m and m["time"] < resumed[0]["time"])
    lost = done_before - resumed[0]["step"]  # the workers may get a step further than the watcher saw
    print(f"lost node: killed after step {done_before}, resumed at {resumed[0]['step']}: {lost} step(s) "
          f"redone, on {resumed[0]['world_size']} worker(s); then grown to "
          f"{[(m['step'], m['world_size']) for m in resumed[1:]]} (step, workers)")
    # at most the checkpoint interval plus one checkpoint Ray Train had written but not yet committed
    assert 0 <= lost <= 8 and resumed[0]["world_size"] == 1  # scaled down: one training node left
    checkpoints = {int(p.name.split("step")[1]): p for p in run_dir.glob("checkpoint_step*")}
    saved = json.loads((checkpoints[resumed[0]["step"]] / "position.json").read_text())
    assert [resumed[0][k] for k in ("stage", "round", "beta")] == [saved[k] for k in ("stage", "round", "beta")]
    after = [m["step"] for m in metrics if "loss" in m and m["time"] > resumed[0]["time"]]
    assert after[0] == resumed[0]["step"] + 1  # continued from the checkpoint, not from the start
    assert added, "the run never resumed on one worker"
    assert any(m["world_size"] == 2 and m["step"] >= added["at_step"] for m in resumed[1:]), resumed  # scaled up
    assert max(m["step"] for m in metrics if "loss" in m) == TOTAL
    assert max(checkpoints) == TOTAL and (checkpoints[TOTAL] / "model" / "trainable.safetensors").exists()


def test_inference_asks_for_what_the_autoscaler_can_add(nodes, tiny_checkpoint, synth_shards, tmp_path):
    """`infer --actors 1 --cpus-per-actor 3` on a cluster where no node holds 3 CPUs: the pool asks for what
    it was told (not for what exists now) and waits, until a node that can hold it is added (as an
    autoscaler would add one); then it predicts every input on that node."""
    import pyarrow.parquet as pq

    from sed_ray.data.stream import count_rows

    cluster = nodes[0]
    out = tmp_path / "predictions"
    log = (tmp_path / "infer.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "sed_ray.cli", "infer", "--checkpoint", str(tiny_checkpoint),
                               "--input", str(synth_shards), "--out", str(out), "--actors", "1", "--cpus-per-actor", "3",
                               "--max-new-tokens", "4"], cwd=ROOT, env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address},
                              stdout=log, stderr=log)
    try:
        deadline = time.time() + 180
        waiting: list = []
        while not waiting and driver.poll() is None and time.time() < deadline:
            waiting = [a for a in _state(cluster, "actors", "state=PENDING_CREATION") if "MapWorker" in a["class_name"]]
            time.sleep(1)
        assert waiting, "the replica never asked for its 3 CPUs: " + (tmp_path / "infer.log").read_text()[-3000:]
        assert driver.poll() is None and not (out / "predictions.parquet").exists()  # waiting, not shrunk
        cluster.add(cpus=3, labels="group=infer")
        assert driver.wait(timeout=300) == 0, (tmp_path / "infer.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert pq.read_table(out / "predictions.parquet").num_rows == count_rows(synth_shards)
    groups = _node_groups(cluster)
    replica = _state(cluster, "actors", f"actor_id={waiting[0]['actor_id']}")
    assert [groups.get(a["node_id"]) for a in replica] == ["infer"]
