"""Launch training: the config's scaling, run and failure sections become a Ray Train TorchTrainer.

Everything that can be checked before a worker starts is checked here (config, data, cluster
resources), so a mistake costs seconds, not a cluster start.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from sed_ray.config import TrainConfig, build
from sed_ray.data.stream import StreamConfig


def stream_config(config: TrainConfig, shuffle: bool) -> StreamConfig:
    return StreamConfig(batch_seconds=config.data.batch_seconds, max_batch_size=config.data.max_batch_size,
                        window_rows=config.data.window_rows, shuffle=shuffle, seed=config.seed)


def check_resources(config: TrainConfig, cluster: dict[str, float]) -> None:
    """Refuse a run the cluster cannot place (Ray would otherwise wait for resources forever)."""
    scaling = config.scaling
    need_cpu = scaling.num_workers * scaling.cpus_per_worker
    need_gpu = scaling.num_workers * scaling.gpus_per_worker if scaling.use_gpu else 0
    problems = []
    if need_cpu + 1 > cluster.get("CPU", 0):  # + 1: Ray Data's ingest tasks need a CPU beside the workers
        problems.append(f"scaling.num_workers={scaling.num_workers} x scaling.cpus_per_worker={scaling.cpus_per_worker} "
                        f"needs {need_cpu:g} CPUs plus 1 for data ingest; the cluster has {cluster.get('CPU', 0):g}")
    if need_gpu > cluster.get("GPU", 0):
        problems.append(f"scaling.num_workers={scaling.num_workers} x scaling.gpus_per_worker={scaling.gpus_per_worker} "
                        f"needs {need_gpu:g} GPUs; the cluster has {cluster.get('GPU', 0):g}")
    if problems:
        raise ValueError("the cluster cannot run this config:\n  - " + "\n  - ".join(problems) +
                         "\n  lower scaling.num_workers, or set scaling.check_resources=false on an autoscaling cluster")


def corpus_texts(shards: str | Path, split: str) -> list[str]:
    import pyarrow.dataset as pads

    from sed_ray.data.stream import shard_files

    table = pads.dataset(shard_files(shards), format="parquet").to_table(
        columns=["text", "descriptor"], filter=pads.field("split") == split)
    return [t for column in table.columns for t in column.to_pylist() if t]


def descriptor_bank(shards: str | Path, split: str, size: int, seed: int) -> list[str]:
    """Up to `size` distinct descriptors of a split for the descriptor draft's bank: the split's descriptors
    in a seeded random order, first occurrences kept, so frequent descriptors are likelier to be in it."""
    import numpy as np
    import pyarrow.dataset as pads

    from sed_ray.data.stream import shard_files

    if size <= 0:
        return []
    table = pads.dataset(shard_files(shards), format="parquet").to_table(
        columns=["descriptor"], filter=pads.field("split") == split)
    texts = [" ".join(t.split()) for t in table.column("descriptor").to_pylist() if t and t.strip()]
    order = np.random.default_rng(seed).permutation(len(texts))
    return list(dict.fromkeys(texts[i] for i in order))[:size]


def corpus_audio(shards: str | Path, split: str, limit: int = 2000) -> list:
    """Up to `limit` utterances of a split as float arrays (for the tiny encoder's pretraining)."""
    import numpy as np
    import pyarrow.dataset as pads

    from sed_ray.data.schema import pcm_from_bytes
    from sed_ray.data.stream import shard_files

    table = pads.dataset(shard_files(shards), format="parquet").to_table(
        columns=["pcm"], filter=pads.field("split") == split)
    return [pcm_from_bytes(v).astype(np.float32) / 32768.0 for v in table.column("pcm").to_pylist()[:limit]]


BASE_SETTINGS = "build.json"  # in a tiny base folder: what it was built from


def tiny_base_settings(config: TrainConfig) -> dict:
    """Everything a tiny base depends on; a base built with other settings is not reused."""
    return {"shards": str(Path(config.data.shards).expanduser().resolve()), "train_split": config.data.train_split,
            "seed": config.seed, "tiny_vocab_size": config.model.tiny_vocab_size,
            "tiny_encoder_steps": config.model.tiny_encoder_steps, "tiny_lm_steps": config.model.tiny_lm_steps}


def prepare_model(config: TrainConfig, log=print) -> TrainConfig:
    """For the tiny preset, build its base (encoder, LLM, tokenizer) once under the run folder from the
    training texts; the returned config points model.encoder/llm at it. An existing base is reused only
    if it was built with the same settings."""
    if config.model.preset != "tiny":
        return config
    from sed_ray.model.presets import build_tiny

    base = Path(config.model.tiny_base_dir).expanduser().resolve() if config.model.tiny_base_dir else config.run_dir / "base"
    wanted = tiny_base_settings(config)
    if not (base / "model_config.json").exists():
        staging = base.with_name(base.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        audio = corpus_audio(config.data.shards, config.data.train_split) if config.model.tiny_encoder_steps else None
        build_tiny(staging, corpus_texts(config.data.shards, config.data.train_split), seed=config.seed,
                   vocab_size=config.model.tiny_vocab_size, audio=audio, encoder_steps=config.model.tiny_encoder_steps,
                   lm_steps=config.model.tiny_lm_steps, log=log)
        (staging / BASE_SETTINGS).write_text(json.dumps(wanted, indent=2))
        base.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(base)  # a base folder is complete or absent
    elif (base / BASE_SETTINGS).exists():
        built_with = json.loads((base / BASE_SETTINGS).read_text())
        changed = [f"{key}: built with {built_with.get(key)!r}, this run asks for {value!r}"
                   for key, value in wanted.items() if built_with.get(key) != value]
        if changed:
            raise ValueError(f"the tiny base {base} was built with other settings:\n  - " + "\n  - ".join(changed) +
                             "\n  point model.tiny_base_dir at another folder, or delete this one to rebuild it")
    built = json.loads((base / "model_config.json").read_text())
    model = replace(config.model, encoder=str(base / "encoder"), llm=str(base / "llm"), latent_dim=built["latent_dim"],
                    bottleneck_hidden=built["bottleneck_hidden"], adapter_hidden=built["adapter_hidden"])
    return replace(config, model=model)


# What a relaunch may change and still resume: how many workers, how often to checkpoint, log and
# validate, how DeepSpeed shards the state. Everything else decides what is trained and how.
RESUMABLE = ("scaling", "checkpoint", "logging", "validation", "deepspeed", "max_failures")


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Settings (dotted keys) that differ between a run's saved config and a relaunch of it. Keys only
    one side knows (a config written by another sed-ray version) are not compared."""
    old, new = _flatten(saved), _flatten(current)
    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in sorted(old.keys() & new.keys())
            if key.split(".")[0] not in RESUMABLE + ("name", "storage") and old[key] != new[key]]


def check_resumable(config: TrainConfig, has_checkpoint: bool) -> None:
    """Relaunching a run resumes it from its latest checkpoint: refuse when the config changed what the
    run trains, instead of silently continuing the old run under new settings."""
    saved = config.run_dir / "config.json"
    if not (has_checkpoint and saved.exists()):
        return
    current = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as they were saved
    conflicts = resume_conflicts(json.loads(saved.read_text()), current)
    if conflicts:
        raise ValueError(f"run {config.run_dir} already has checkpoints, and this launch would resume it with other "
                         f"settings:\n  - " + "\n  - ".join(conflicts) + "\n  start a new run with another name=, "
                         f"or delete {config.run_dir} to start this one over (a relaunch may change only: "
                         f"{', '.join(RESUMABLE)})")


def start_run_dir(config: TrainConfig, has_checkpoint: bool) -> None:
    """Refuse a relaunch that changed what the run trains, then record the run's config in its folder."""
    check_resumable(config, has_checkpoint)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))


def ray_train_loop(loop_config: dict) -> None:
    """What each TorchTrainer worker runs: {"config": TrainConfig.to_dict(), "draft_bank": [...]}."""
    from sed_ray.train.context import RayTrainContext
    from sed_ray.train.loop import train_worker

    config = build(TrainConfig, loop_config["config"])
    train_worker(config, RayTrainContext(config.scaling.use_gpu), loop_config.get("draft_bank"))


def draft_bank_for(config: TrainConfig) -> list[str]:
    """The draft's bank, read once on the driver (workers need not see the shard folder)."""
    return descriptor_bank(config.data.shards, config.data.train_split, config.model.draft_bank_size, config.seed)


def launch(config: TrainConfig):
    """Validate, then fit a TorchTrainer. Relaunching with the same name and storage resumes."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sed_ray.data.stream import data_config, ray_dataset
    from sed_ray.ray_env import ensure_ray

    config.validate()
    # A private local instance gets logical CPUs for the workers plus room for Ray Data's read and
    # bucketing tasks: with only the workers' share, the ingest pipeline would starve (it hangs).
    scaling = config.scaling
    ensure_ray(num_cpus=max(os.cpu_count() or 1, int(scaling.num_workers * scaling.cpus_per_worker) + 2))
    if config.scaling.check_resources:
        check_resources(config, ray.cluster_resources())
    config = prepare_model(config)
    start_run_dir(config, any(config.run_dir.glob("checkpoint_step*")))
    datasets = {config.data.train_split: ray_dataset(config.data.shards, config.data.train_split,
                                                      stream_config(config, shuffle=True)),
                config.data.valid_split: ray_dataset(config.data.shards, config.data.valid_split,
                                                      stream_config(config, shuffle=False))}
    resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})
    trainer = TorchTrainer(
        ray_train_loop,
        train_loop_config={"config": config.to_dict(), "draft_bank": draft_bank_for(config)},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        datasets=datasets,
        dataset_config=data_config(list(datasets)),
        run_config=ray.train.RunConfig(
            name=config.name, storage_path=str(Path(config.storage).expanduser().resolve()),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.keep)),
    )
    return trainer.fit()


def run_local(config: TrainConfig):
    """The same loop in this process, without Ray (one worker; DeepSpeed off): GPU boxes without Ray,
    debugging."""
    from sed_ray.train.context import LocalContext
    from sed_ray.train.loop import train_worker

    config = replace(config, deepspeed=replace(config.deepspeed, enabled=False),
                     scaling=replace(config.scaling, num_workers=1))
    config.validate()
    config = prepare_model(config)
    start_run_dir(config, any((config.run_dir / "checkpoints").glob("step-*")))
    context = LocalContext(config.run_dir, config.data.shards, stream_config(config, shuffle=True),
                           use_gpu=config.scaling.use_gpu)
    return train_worker(config, context, draft_bank_for(config))
