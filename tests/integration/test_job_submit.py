"""The way users run sed-ray on a cluster: a real Ray head with token authentication on (loopback only),
the tiny training submitted with the real `ray job submit --working-dir .` client, its checkpoint found."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def token_head():
    """A separate Ray head (its own ports and temp dir) with RAY_AUTH_MODE=token; killed with its
    process group afterwards, so the suite's own Ray instance is untouched."""
    token = secrets.token_hex(32)
    gcs, dashboard = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{BIN}:{env.get('PATH', '')}",
                "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    # every port its own: the suite's Ray instance holds the defaults (the dashboard agent's 52365 among them)
    ports = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "runtime-env-agent-port", "metrics-export-port",
                                                     "ray-client-server-port", "object-manager-port", "node-manager-port")]
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", *ports,
                             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                             "--include-dashboard=true", "--num-cpus=4", f"--temp-dir={temp_dir}",
                             "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        assert head.poll() is None and time.time() < deadline, "the token-authenticated Ray head did not start"
        time.sleep(1)
    yield address, env
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(3)
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)  # anything left of that session


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
