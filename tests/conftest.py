"""Shared fixtures: one real local Ray cluster for the whole session, and corpus builders."""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The S3-compatible test server (moto, started by the `s3` fixture) listens here. Its dummy credentials and
# endpoint are set before Ray starts, so every Ray worker inherits them the way cluster nodes get theirs.
S3_PORT = _free_port()
os.environ.update({"AWS_ACCESS_KEY_ID": "sed-ray-test", "AWS_SECRET_ACCESS_KEY": "sed-ray-test",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
                   "AWS_EC2_METADATA_DISABLED": "true"})
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray instance, started once. Logical CPUs exceed the 2 physical cores on purpose:
    training workers reserve CPUs and Ray Data's read tasks still need some to run beside them."""
    import ray

    if not ray.is_initialized():
        # the dashboard on loopback: Ray Train's cleanup of a trial Tune stops goes through its State API
        ray.init(num_cpus=6, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server on loopback (moto in server mode) with one bucket; yields its URI."""
    import subprocess
    import sys
    import time

    import boto3

    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", S3_PORT), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the moto S3 server did not start"
            time.sleep(0.2)
    boto3.client("s3").create_bucket(Bucket="sed-ray-test")
    yield "s3://sed-ray-test"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_shards(s3, synth_corpus, ray_cluster):
    """The synthetic corpus prepared straight into the S3 bucket."""
    from sed_ray.data.prepare import prepare

    out = f"{s3}/shards"
    prepare("manifest", synth_corpus / "manifest.jsonl", out, shard_rows=24, log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A small synthetic corpus shared by the tests that only read it."""
    from sed_ray.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("synth")
    synthesize_corpus(out, utterances=96, seed=7, workers=2, speakers=16)
    return out


@pytest.fixture(scope="session")
def synth_shards(synth_corpus, tmp_path_factory, ray_cluster):
    from sed_ray.data.prepare import prepare

    out = tmp_path_factory.mktemp("shards")
    prepare("manifest", synth_corpus / "manifest.jsonl", out, shard_rows=24, log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def tiny_model_config(synth_corpus, tmp_path_factory):
    """The tiny preset (random HuBERT-style encoder, Llama-style LLM, BPE tokenizer) saved to disk."""
    import json

    from sed_ray.base.tiny import build_tiny

    rows = [json.loads(line) for line in (synth_corpus / "manifest.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows] + [r["descriptor"] for r in rows]
    return build_tiny(tmp_path_factory.mktemp("tiny"), texts, seed=0)


@pytest.fixture(scope="session")
def tiny_batch(synth_shards, tiny_model_config):
    """Four utterances of the synthetic corpus as one float batch, collated for every task (target ids,
    fields, descriptor ids) with the tiny tokenizer, and their reference fields."""
    from sed_ray.config import DataSection
    from sed_ray.data.collate import Collate
    from sed_ray.data.stream import StreamConfig, plain_batches
    from sed_ray.model.prompt import TASKS

    stream = StreamConfig(DataSection(batch_seconds=60, max_batch_size=4), shuffle=False,
                          collate=Collate(tiny_model_config.llm, tuple(TASKS), fields=True))
    batch = next(iter(plain_batches(synth_shards, "train", stream))).to("cpu")
    targets = [{"transcript": t, "descriptor": d, "emotion": e}
               for t, d, e in zip(batch.meta["text"], batch.meta["descriptor"], batch.meta["emotion"])]
    return batch, targets


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_shards, tmp_path_factory):
    """A briefly trained tiny model (plain-process training: no Ray needed) and its run folder."""
    from pathlib import Path

    from sed_ray.config import load_config
    from sed_ray.train.launcher import run_local

    storage = tmp_path_factory.mktemp("runs")
    config = load_config(Path(__file__).resolve().parents[1] / "jobs" / "configs" / "tiny.yaml", [
        f"data.shards={synth_shards}", f"storage={storage}", "name=tiny-eval", "logging.wandb=false",
        "schedule.stages=[{preset: stage1, steps: 6, lr: 0.003}, {preset: stage2, steps: 6, lr: 0.003}]",
        "checkpoint.every_steps=6", "logging.every_steps=2", "validation.max_batches=1", "optim.warmup_steps=1"])
    run_local(config)
    checkpoints = sorted((storage / "tiny-eval" / "checkpoints").glob("step-*"))
    return checkpoints[-1]
