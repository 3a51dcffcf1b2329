"""Shared fixtures: one real local Ray cluster for the whole session, and corpus builders."""

from __future__ import annotations

import os

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
