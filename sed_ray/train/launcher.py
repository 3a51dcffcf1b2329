"""Launch training: the config becomes a Ray Train TorchTrainer (ScalingConfig, RunConfig, FailureConfig,
datasets, train_loop_config), and nothing else.

Everything that can be checked before a worker starts is checked first (config, data, cluster
resources), so a mistake costs seconds, not a cluster start. The base (the tiny preset's build) is
resolved before the trainer is made, by `base.tiny.resolve_base`; a caller that launches many runs over
one base (a Tune search) resolves it once and calls `trainer_for` per run.
"""

from __future__ import annotations

import os
from dataclasses import replace

from sed_ray.base.tiny import resolve_base
from sed_ray.config import TrainConfig, build
from sed_ray.data.collate import Collate
from sed_ray.data.reads import descriptor_bank
from sed_ray.data.stream import StreamConfig
from sed_ray.storage import is_relative, uri
from sed_ray.train.capacity import ClusterShape, cluster_shape, describe, most_cpus, most_workers, nodes_now, worker_bundle
from sed_ray.train.plan import validate
from sed_ray.train.run_folder import start_run_dir
from sed_ray.train.stages import schedule_for

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def stream_config(config: TrainConfig, shuffle: bool) -> StreamConfig:
    """How the workers' batches are made: the data section's budget, tokenised for every task the stage
    schedule trains, with the LLM's tokenizer (the base must be resolved already)."""
    tasks = tuple(dict.fromkeys(stage.task for stage in schedule_for(config).stages))
    return StreamConfig(config.data, shuffle=shuffle, seed=config.seed, collate=Collate(config.model.llm, tasks))


def run_needs(config: TrainConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one training run occupies at its smallest (an elastic run's minimum): its workers' and one
    CPU for Ray Data's ingest tasks."""
    scaling = config.scaling
    cpus = scaling.min_workers * scaling.cpus_per_worker + 1
    return cpus, scaling.min_workers * scaling.gpus_per_worker if scaling.use_gpu else 0.0


def check_resources(config: TrainConfig, nodes: list[dict], shape: ClusterShape | None) -> str:
    """Refuse a run no node the cluster has or can add will ever place (Ray would wait for it forever),
    naming the keys; `nodes` as `ray.nodes()` lists them, `shape` the node types an autoscaler may add
    (`capacity.cluster_shape`). Returns a line to show when the run must wait for the autoscaler."""
    scaling, now = config.scaling, nodes_now(nodes)
    ever = shape or now
    fits_now, fits_ever = most_workers(now, scaling), most_workers(ever, scaling)
    if fits_ever is None:  # a group's size is known only once its first node starts: nothing to refuse on
        return ""
    fits_ever = max(fits_ever, fits_now or 0)
    problems = []
    size = ", ".join(f"{k} {v:g}" for k, v in worker_bundle(scaling).items())
    keys = "scaling.cpus_per_worker" + (", scaling.gpus_per_worker" if scaling.use_gpu else "")
    if scaling.min_workers > fits_ever:
        on = f" on nodes labelled {dict(scaling.worker_labels)} (scaling.worker_labels)" if scaling.worker_labels else ""
        problems.append(f"scaling.num_workers={scaling.num_workers} needs {scaling.min_workers} worker(s) of {{{size}}} "
                        f"({keys}){on}, placed {scaling.placement_strategy} (scaling.placement_strategy); "
                        f"at most {fits_ever} fit on {ever.source}: {describe(ever)}")
    cpus = [c for c in (most_cpus(now, {}), most_cpus(ever, {})) if c is not None]
    need_cpus = run_needs(config)[0]
    if cpus and need_cpus > max(cpus) and not problems:
        problems.append(f"scaling.num_workers={scaling.num_workers} x scaling.cpus_per_worker={scaling.cpus_per_worker} "
                        f"needs {need_cpus - 1:g} CPUs plus 1 for data ingest; at most {max(cpus):g} on {ever.source}")
    ingest = config.data.ingest_labels
    if ingest and not most_cpus(ever, dict(ingest)) and not most_cpus(now, dict(ingest)):
        problems.append(f"data.ingest_labels={dict(ingest)}: no node with a CPU carries these labels on {ever.source}: "
                        f"{describe(ever)}")
    if problems:
        raise ValueError("the cluster can never run this config (nothing was started):\n  - " + "\n  - ".join(problems) +
                         "\n  lower the sizes named above; on an autoscaling cluster whose node groups are not "
                         "known here, name them with scaling.node_types=<cluster-launcher YAML or KubeRay manifest> "
                         "or set scaling.check_resources=false")
    if fits_now is not None and scaling.min_workers > fits_now:
        return (f"[train] {fits_now} of the {scaling.min_workers} workers fit on the nodes there are now: waiting "
                f"for the autoscaler to add nodes ({ever.source}: {describe(ever)})")
    return ""


def fixed_paths(config: TrainConfig, nodes: int = 1) -> TrainConfig:
    """The config with its paths resolved once, here on the driver (absolute local paths, object-store URIs
    as they are), so every worker reads and writes the same place. A relative path is refused where it
    would mean different folders: on a cluster of several nodes, and in a Ray job's temporary working
    directory (which Ray deletes)."""
    values = {"storage": config.storage, "data.shards": config.data.shards, "model.tiny_base_dir": config.model.tiny_base_dir}
    relative = [key for key, value in values.items() if value is not None and is_relative(value)]
    in_job_folder = "runtime_resources" in os.getcwd()
    if not nodes > 1:  # one node: only what is written must outlive the job's folder
        relative = [key for key in relative if in_job_folder and key != "data.shards"]
    if relative:
        where = (f"this cluster has {nodes} nodes, and each would resolve it in its own working directory" if nodes > 1
                 else f"this driver runs in a Ray job's temporary working directory ({os.getcwd()})")
        raise ValueError("relative paths cannot be used here: " + where + ":\n  - " + "\n  - ".join(
            f"{key}={values[key]!r}: give an object-store URI (s3://BUCKET/PATH, gs://BUCKET/PATH) or an absolute "
            "path on a file system every node mounts" for key in relative))
    return replace(config, storage=uri(config.storage),
                   data=replace(config.data, shards=uri(config.data.shards)),
                   model=replace(config.model, tiny_base_dir=config.model.tiny_base_dir and uri(config.model.tiny_base_dir)))


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def draft_bank_for(config: TrainConfig) -> list[str]:
    """The draft's bank, read once on the driver (workers need not see the shard folder)."""
    return descriptor_bank(config.data.shards, config.data.train_split, config.model.draft_bank_size, config.seed)


def ray_train_loop(loop_config: dict) -> None:
    """What each TorchTrainer worker runs: {"config": TrainConfig.to_dict(), "draft_bank": [...]}."""
    from sed_ray.train.context import RayTrainContext
    from sed_ray.train.loop import train_worker

    config = build(TrainConfig, loop_config["config"])
    train_worker(config, RayTrainContext(config.scaling.use_gpu), loop_config.get("draft_bank"))


def trainer_for(config: TrainConfig, callbacks: list | None = None):
    """The TorchTrainer for a validated config whose base is resolved."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sed_ray.data.stream import data_config, ray_dataset

    scaling, data = config.scaling, config.data
    if scaling.start_timeout_s is not None:  # Ray Train 2.60 passes it from the driver's environment to its controller
        os.environ[START_TIMEOUT_ENV] = str(scaling.start_timeout_s)
    datasets = {data.train_split: ray_dataset(data.shards, data.train_split, stream_config(config, shuffle=True)),
                data.valid_split: ray_dataset(data.shards, data.valid_split, stream_config(config, shuffle=False))}
    return TorchTrainer(
        ray_train_loop,
        train_loop_config={"config": config.to_dict(), "draft_bank": draft_bank_for(config)},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=_ray_workers(scaling.num_workers), use_gpu=scaling.use_gpu,
                                               placement_strategy=scaling.placement_strategy,
                                               label_selector=dict(scaling.worker_labels) or None,
                                               elastic_resize_monitor_interval_s=scaling.resize_check_s,
                                               resources_per_worker=worker_bundle(scaling)),
        datasets=datasets,
        dataset_config=data_config(list(datasets), data.ingest_labels),
        run_config=ray.train.RunConfig(
            name=config.name, storage_path=uri(config.storage), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.keep)),
    )


def _ray_workers(count: int | tuple[int, int]) -> int | tuple[int, int]:
    """Ray Train takes a fixed count or a (min, max) tuple; a range of one value is a fixed count."""
    if isinstance(count, int) or count[0] == count[1]:
        return count if isinstance(count, int) else count[0]
    return (int(count[0]), int(count[1]))


def launch(config: TrainConfig):
    """Validate, resolve the base, then fit a TorchTrainer. Relaunching with the same name and storage resumes."""
    import ray

    from sed_ray.ray_env import ensure_ray

    validate(config)
    # A private local instance gets logical CPUs for the workers plus room for Ray Data's read and
    # bucketing tasks: with only the workers' share, the ingest pipeline would starve (it hangs).
    scaling = config.scaling
    ensure_ray(num_cpus=max(os.cpu_count() or 1, int(scaling.max_workers * scaling.cpus_per_worker) + 2))
    if scaling.check_resources:
        waiting = check_resources(config, ray.nodes(), cluster_shape(scaling))
        if waiting:
            print(waiting, flush=True)
    config = resolve_base(fixed_paths(config, alive_nodes()))
    start_run_dir(config, any(config.run_dir.glob("checkpoint_step*")))
    return trainer_for(config).fit()


def run_local(config: TrainConfig):
    """The same loop in this process, without Ray (one worker; DeepSpeed off): GPU boxes without Ray,
    debugging."""
    from sed_ray.train.context import LocalContext
    from sed_ray.train.loop import train_worker

    config = replace(config, deepspeed=replace(config.deepspeed, enabled=False),
                     scaling=replace(config.scaling, num_workers=1))
    validate(config)
    config = resolve_base(fixed_paths(config))
    start_run_dir(config, any((config.run_dir / "checkpoints").glob("step-*")))
    context = LocalContext(config.run_dir, config.data.shards, stream_config(config, shuffle=True),
                           use_gpu=config.scaling.use_gpu, train_split=config.data.train_split)
    return train_worker(config, context, draft_bank_for(config))
