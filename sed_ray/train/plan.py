"""What a run will do, checked before any worker starts: every name against its registry, the numbers,
the shards and the model checkpoints, reported together, each naming the key to change."""

from __future__ import annotations

import os
from pathlib import Path

from sed_ray.config import TrainConfig
from sed_ray.data.reads import shards_problem
from sed_ray.model.prompt import TASKS, get_task
from sed_ray.model.speech_llm import DTYPES
from sed_ray.storage import is_remote, problem as storage_problem
from sed_ray.train.schedules import BETA_SCHEDULES, LR_DECAYS, beta_for
from sed_ray.train.stages import STAGE_PRESETS, schedule_for
from sed_ray.train.step import PRECISIONS

MODEL_PRESETS = (None, "tiny", "paper-random")  # None = load model.encoder / model.llm as they are
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")


def _name_problem(key: str, value, valid) -> str | None:
    if value in valid:
        return None
    return f"{key}: {value!r} is not one of {', '.join(str(v) for v in valid)}"


def name_problems(config: TrainConfig) -> list[str]:
    """Every field that takes a name, against its registry."""
    named = [("optim.decay", config.optim.decay, LR_DECAYS), ("beta.kind", config.beta.kind, BETA_SCHEDULES),
             ("model.dtype", config.model.dtype, DTYPES), ("deepspeed.precision", config.deepspeed.precision, PRECISIONS),
             ("model.preset", config.model.preset, MODEL_PRESETS),
             ("model.attention", config.model.attention, ATTENTIONS)]
    for i, stage in enumerate(config.schedule.stages):
        named.append((f"schedule.stages[{i}].preset", stage.preset, STAGE_PRESETS))
        if stage.task is not None:
            named.append((f"schedule.stages[{i}].task", stage.task, TASKS))
    return [p for key, value, valid in named if (p := _name_problem(key, value, valid))]


# Settings that are valid names but that sed-ray refuses, with the reason and what to use instead.
UNSUPPORTED_ZERO3 = (
    "deepspeed.zero_stage: 3 is refused: sed-ray trains stage by stage, each with a fresh engine over the "
    "same module, and ZeRO-3 leaves that module partitioned (every frozen weight too) where the next engine, "
    "the descriptor draft's embedding read and generation expect whole tensors; it also all-gathers the "
    "frozen 16 GB base on every step. Use 2 (the frozen base replicated, the trainable <1 % partitioned) "
    "or 1; on CPU, 0 works too")


def support_problems(config: TrainConfig) -> list[str]:
    found = [UNSUPPORTED_ZERO3] if config.deepspeed.enabled and config.deepspeed.zero_stage == 3 else []
    if config.model.preset == "paper-random":
        found.append("model.preset: paper-random (random weights at the paper's sizes) is for `sed-ray bench step` "
                     "only; train with model.preset=null and real encoder/llm checkpoints")
    return found


def problems(config: TrainConfig, check_sources: bool = True) -> list[str]:
    """Everything wrong with `config` that can be seen without a cluster. `check_sources`: also the
    shards and (without the tiny preset) the model checkpoints, where the driver can see them."""
    found = config.problems() + name_problems(config) + support_problems(config)
    if not found:  # the objects build only from valid names and numbers
        found += [f"schedule: {p}" for p in schedule_for(config).validate()]
        try:
            beta_for(config, schedule_for(config).total_steps)
        except ValueError as exc:
            found.append(f"beta: {exc}")
    if check_sources:
        found += [p for p in [storage_problem(config.storage, "storage"), shards_problem(config.data.shards)] if p]
        if config.model.preset is None:  # the tiny preset builds its own
            found += [p for key in ("encoder", "llm") if (p := model_source_problem(key, getattr(config.model, key)))]
    return found


def validation_reports(config: TrainConfig) -> list[tuple[int, tuple[str, ...]]]:
    """(step, metric names) of every validation the run reports, in order: at each stage's end and every
    validation.every_steps, with the metrics of the task of the stage the step belongs to."""
    schedule, every = schedule_for(config), config.validation.every_steps
    ends = set(schedule.boundaries())
    reports = []
    for step in range(1, schedule.total_steps + 1):
        if step in ends or (every and step % every == 0):
            task = get_task(schedule.locate(step - 1).stage.task)
            names = ("val_ce",) + tuple(f"val_kl_{b}" for b in task.inputs)
            reports.append((step, names + (("val_ua", "val_wa") if "emotion" in task.fields else ())))
    return reports


def validate(config: TrainConfig) -> None:
    """Raise one ValueError listing every problem, each naming the key to change."""
    found = problems(config)
    if found:
        raise ValueError("invalid training config:\n  - " + "\n  - ".join(found))


def model_source_problem(key: str, source: str) -> str | None:
    """A checkpoint the workers could not load: a local folder without a config.json, or (offline) a hub
    id missing from the local Hugging Face cache. Checked where the driver runs, like data.shards."""
    if is_remote(source):
        return storage_problem(f"{source.rstrip('/')}/config.json", f"model.{key}", must_exist=True)
    if source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists():
        if not (Path(source).expanduser() / "config.json").exists():
            return f"model.{key}: {source} is not a model folder (no config.json there)"
        return None
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            return (f"model.{key}: {source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                    "download it first (huggingface-cli download) or give a local folder")
    return None
