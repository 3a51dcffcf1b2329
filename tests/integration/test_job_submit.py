"""The way users run sed-ray on a cluster: a real Ray head with token authentication on (loopback only),
the tiny training submitted with the real `ray job submit --working-dir .` client, its checkpoint found."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from ray_nodes import BIN, LocalNodes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def token_head():
    """A separate Ray head (its own ports and temp dir) with RAY_AUTH_MODE=token; killed with its
    process group afterwards, so the suite's own Ray instance is untouched."""
    token = secrets.token_hex(32)
    cluster = LocalNodes({**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    try:
        cluster.head(cpus=4)
        yield cluster.dashboard_address, cluster.env
    finally:
        cluster.stop()


def test_ray_job_submit_trains_on_a_token_authenticated_head(token_head, synth_shards, tmp_path):
    address, env = token_head
    # the head refuses a client without the token
    anonymous = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    anonymous["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=anonymous,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0

    storage = tmp_path / "runs"
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "jobs/train.py", "--config", "jobs/configs/tiny.yaml", f"data.shards={synth_shards}",
         f"storage={storage}", "name=submitted", "scaling.num_workers=1", "logging.wandb=false",
         "schedule.stages=[{preset: stage1, steps: 2, lr: 0.003}, {preset: stage2, steps: 2, lr: 0.003}]",
         "checkpoint.every_steps=2", "validation.max_batches=1", "data.batch_seconds=12", "optim.warmup_steps=1"]
    deadline = time.time() + 90
    while True:  # the head's job agent comes up a little after its dashboard answers
        submit = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submit.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout.lower()
    checkpoints = sorted((storage / "submitted").glob("checkpoint_step*"))
    assert [p.name for p in checkpoints] == ["checkpoint_step0000002", "checkpoint_step0000004"]
    assert (checkpoints[-1] / "model" / "trainable.safetensors").exists()
