"""Distributed training on the real local Ray cluster: 2 workers, DeepSpeed ZeRO-2 in bf16, both stages, in
an S3 bucket, the driver killed and the run relaunched on one worker; bad configs refused before any worker
starts. (A worker lost mid-run, with its whole node: tests/integration/test_multinode.py.)"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from sed_ray.config import load_config
from sed_ray.train.launcher import launch
from sed_ray.files import read_jsonl
from sed_ray.storage import location

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "jobs" / "configs" / "tiny.yaml"


def _config(shards, storage, name, stage1=4, stage2=4, **extra):
    overrides = [f"data.shards={shards}", f"storage={storage}", f"name={name}",
                 f"schedule.stages=[{{preset: stage1, steps: {stage1}, lr: 0.003}}, "
                 f"{{preset: stage2, steps: {stage2}, lr: 0.003}}]",
                 "checkpoint.every_steps=2", "checkpoint.keep=20", "logging.every_steps=1",
                 "logging.wandb=false", "validation.max_batches=1", "data.batch_seconds=12",
                 "optim.warmup_steps=1"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(TINY, overrides)


def _checkpoints(run_dir) -> dict:
    return {int(p.name.split("step")[1]): p for p in run_dir.glob("checkpoint_step*")}


def _committed(run_dir: Path) -> list[int]:
    """Checkpoint steps Ray Train has committed (listed in its snapshot), as opposed to folders on disk."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (json.JSONDecodeError, KeyError):  # caught mid-write
        return []
    return [r["metrics"]["step"] for r in results]


def _weights(checkpoint, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's trainable weights whose names start with `prefix` (a local or object-storage folder)."""
    tensors = load((checkpoint / "model" / "trainable.safetensors").read_bytes())
    return {k: v for k, v in tensors.items() if k.startswith(prefix)}


def test_two_workers_bf16_zero2_killed_and_relaunched_from_object_storage(s3_shards, s3, ray_cluster):
    """paper.yaml's precision and ZeRO stage on the tiny config, two workers, both stages, with shards, tiny
    base, checkpoints and metrics in the S3 test bucket. The whole driver (a `sed-ray train` process) is
    killed after its first checkpoint, then relaunched on one worker: it resumes from the bucket and
    finishes. DeepSpeed casts the whole module to bf16 (the run crashed at its first step before the model
    fed each block its own dtype); a branch frozen for a stage must keep its fp32 values through the
    stage and through the resume. fp32 through Ray runs in the demo and the other tests; ZeRO 0 and 1 in
    bf16 run the same code through one-rank engines in tests/unit/test_step.py."""
    name = "relaunch"
    args = [f"data.shards={s3_shards}", f"storage={s3}/runs", f"name={name}",
            "schedule.stages=[{preset: stage1, steps: 4, lr: 0.003}, {preset: stage2, steps: 4, lr: 0.003}]",
            "checkpoint.every_steps=2", "logging.every_steps=1", "logging.wandb=false", "validation.max_batches=1",
            "data.batch_seconds=12", "optim.warmup_steps=1", "checkpoint.keep=20", "deepspeed.precision=bf16"]
    config = load_config(TINY, args)
    assert config.scaling.num_workers == 2 and config.deepspeed.zero_stage == 2
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "sed_ray.cli", "train", "--config", str(TINY), *args], env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = location(f"{s3}/runs") / name
    deadline = time.time() + 300
    while time.time() < deadline and not _committed(run_dir):
        assert driver.poll() is None, "the first launch ended before it could be stopped"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    first = max(_committed(run_dir))
    assert first < 8
    time.sleep(2)  # let Ray notice the dead driver and release its workers

    # relaunched on another number of workers: checkpoints do not depend on it
    result = launch(load_config(TINY, [*args, "scaling.num_workers=1"]))
    assert result.checkpoint.path.endswith("checkpoint_step0000008")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    resumed = [m for m in metrics if m.get("event") == "resumed"]
    assert resumed and resumed[-1]["step"] >= first
    assert (resumed[-1]["world_size_before"], resumed[-1]["world_size"]) == (2, 1)
    checkpoints = _checkpoints(run_dir)
    assert sorted(checkpoints) == [2, 4, 6, 8]
    assert (run_dir / "base" / "model_config.json").exists()  # the tiny base was built into the bucket
    position = json.loads((checkpoints[8] / "position.json").read_text())
    assert position["step"] == 8 and position["stage"] == "stage2"

    # frozen branches bit-identical through the stage that freezes them (and the resume), trained ones moved
    content = [_weights(checkpoints[s], "blocks.content") | _weights(checkpoints[s], "adapters.content") for s in (4, 8)]
    descriptor = [_weights(checkpoints[s], "blocks.descriptor") | _weights(checkpoints[s], "adapters.descriptor")
                  for s in (2, 4, 8)]
    lora = [_weights(checkpoints[s], "llm.") for s in (4, 8)]
    assert all(torch.equal(content[0][k], content[1][k]) for k in content[0])  # stage 2 froze content
    assert all(torch.equal(descriptor[0][k], descriptor[1][k]) for k in descriptor[0])  # stage 1 froze descriptor
    assert any(not torch.equal(descriptor[1][k], descriptor[2][k]) for k in descriptor[1])
    assert any(not torch.equal(lora[0][k], lora[1][k]) for k in lora[0])

    # saved full size in fp32 (the masters, not the bf16 working copy), with finite optimizer moments
    saved = _weights(checkpoints[8], "")
    floats = {k: v for k, v in saved.items() if v.is_floating_point() and v.dtype != torch.float64}
    assert floats and all(v.dtype == torch.float32 and v.numel() > 0 for v in floats.values())
    moments = load((checkpoints[8] / "optimizer.safetensors").read_bytes())
    assert moments and all(torch.isfinite(v).all() for v in moments.values())

    # the checkpoint reloads from the bucket into the model and scores utterances
    from sed_ray.config import DataSection
    from sed_ray.data.stream import StreamConfig, plain_batches
    from sed_ray.model.weights import load_model

    model = load_model(checkpoints[8] / "model")
    stream = StreamConfig(DataSection(batch_seconds=20), shuffle=False)
    batch = next(iter(plain_batches(s3_shards, "test", stream))).to("cpu")
    rows = model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=8)
    assert len(rows) == batch.size and all(abs(sum(r["posterior"].values()) - 1) < 1e-5 for r in rows)

    steps = [m for m in metrics if "loss" in m]  # the steps after the last checkpoint before the kill ran twice
    assert sorted({m["step"] for m in steps}) == list(range(1, 9)) and all(math.isfinite(m["loss"]) for m in steps)
    for key in ("ce", "kl_content", "beta", "lr", "tokens_per_s", "audio_s_per_s", "padding_fraction"):
        assert key in steps[-1], key
    assert "kl_descriptor" in steps[-1] and "kl_descriptor" not in steps[0]
    assert any("val_ua" in m for m in metrics)  # emotion UA from label scoring in the joint stage
    assert steps[0]["beta"] == pytest.approx(1.0) and steps[-1]["beta"] < 1e-3

    # a relaunch that changed what the run trains would resume it under other settings: refused, unchanged
    saved_config = (run_dir / "config.json").read_text()
    longer = [a for a in args if not a.startswith("schedule.stages")] + [
        "schedule.stages=[{preset: stage1, steps: 4, lr: 0.003}, {preset: stage2, steps: 8, lr: 0.003}]"]
    with pytest.raises(ValueError) as info:
        launch(load_config(TINY, longer))
    assert "schedule.stages" in str(info.value) and str(run_dir) in str(info.value) and "name=" in str(info.value)
    assert (run_dir / "config.json").read_text() == saved_config and max(_checkpoints(run_dir)) == 8


def test_tiny_base_is_reused_only_with_the_settings_it_was_built_with(synth_shards, tmp_path):
    from sed_ray.base.tiny import resolve_base as prepare_model

    base = tmp_path / "base"
    config = _config(synth_shards, tmp_path, "base-check", **{"model.tiny_base_dir": base})
    built = prepare_model(config, log=lambda _m: None)
    assert built.model.llm == str(base / "llm") and (base / "build.json").exists()
    assert prepare_model(config, log=lambda _m: None).model.llm == str(base / "llm")  # same settings: reused
    with pytest.raises(ValueError) as info:
        prepare_model(_config(synth_shards, tmp_path, "base-check", **{"model.tiny_base_dir": base,
                                                                         "model.tiny_lm_steps": 3}), log=lambda _m: None)
    assert str(base) in str(info.value) and "tiny_lm_steps: built with 0, this run asks for 3" in str(info.value)


@pytest.mark.parametrize("overrides,message", [
    (["optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
    (["scaling.num_workers=two"], "scaling.num_workers: expected int"),
    (["schedule.stages=[{preset: stage1, steps: 0}]"], "schedule.stages[0].steps: must be > 0"),
    (["scaling.num_workers=64"], "scaling.num_workers=64"),
    (["scaling.worker_labels={group: gpu}"], "scaling.worker_labels"),  # no node of the session's cluster has it
    ([f"scaling.node_types={ROOT / 'cluster' / 'kuberay-raycluster.yaml'}", "scaling.num_workers=1000"],
     "at most 640 fit on " + str(ROOT / "cluster" / "kuberay-raycluster.yaml")),  # 8 x 32 + 4 x 96 CPUs, 1 each
    (["model.preset=huge"], "model.preset"),
    (["deepspeed.zero_stage=3"], "deepspeed.zero_stage: 3 is refused"),
    (["optim.decay=step"], "optim.decay: 'step' is not one of cosine, linear, constant"),
])
def test_bad_config_fails_before_any_worker(synth_shards, tmp_path, ray_cluster, overrides, message):
    started = time.time()
    with pytest.raises(ValueError) as info:
        launch(load_config(TINY, [f"data.shards={synth_shards}", f"storage={tmp_path}", "name=bad", *overrides]))
    assert message in str(info.value)
    assert not (tmp_path / "bad" / "workers").exists()  # no worker ever started
    assert time.time() - started < 20
