"""One typed config tree for a training run: dataclasses, YAML loading, dotted overrides.

`load_config("run.yaml", ["optim.grad_clip=0.5", "scaling.num_workers=4"])` reads the YAML, applies
the overrides (they win), and builds the tree; an unknown key or a value of the wrong type raises a
ValueError that names the dotted key and what is valid. `problems()` lists what is wrong with the
numbers alone; `train/plan.py` adds the checks against registries, data and checkpoints.

The lowest layer: plain data, importing nothing else of sed-ray. The objects that act on a config
(beta schedule, stage list, optimiser) are built from it in `train/`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sed_ray.storage import RemotePath, location

# The emotion vocabulary corpora are mapped onto, and the four-class protocol (IEMOCAP's, the default
# label set a model scores). Here, at the bottom, because both the corpus layer and the model read it.
CANONICAL_EMOTIONS = ("neutral", "happy", "angry", "sad", "surprised", "fearful", "disgusted")
FOUR_CLASS = CANONICAL_EMOTIONS[:4]


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class ModelConfig:
    encoder: str = "facebook/hubert-large-ll60k"  # hub id or local folder (from_pretrained)
    llm: str = "meta-llama/Llama-3.1-8B-Instruct"  # hub id or local folder; its tokenizer too
    encoder_normalize: bool | None = None  # per-utterance zero-mean/unit-variance; None = from the checkpoint
    latent_dim: int = 256  # Z_con / Z_des width
    bottleneck_hidden: int = 1024  # hidden width of the mu/logvar perceptron
    # Starting log-variance of q(z|x). At 0 (variance 1) the sampled z is mostly noise, and with Adam's
    # small steps a short run never lowers it: both branches stay collapsed (KL ~0.003 nats per frame
    # in the demo). Starting informative (variance 0.01) lets beta's annealing decide what to drop.
    bottleneck_init_logvar: float = -4.6
    stack_frames: int = 5  # k: frames stacked per LLM pseudo-token (50 Hz -> 10 Hz)
    adapter_hidden: int = 2048  # hidden width of the ReLU adapter
    # Descriptor draft (model/draft.py), not in the paper: a bag-of-words head on the pooled encoder states
    # picks the best-fitting training descriptor from a bank and puts its tokens at the front of the
    # speaking-style slot, for tasks that generate a descriptor. Bank size 0 = off (the paper's model).
    draft_bank_size: int = 0  # training descriptors the draft chooses from (the launcher fills the bank)
    draft_bank_tokens: int = 64  # tokens kept per bank descriptor
    draft_hidden: int = 256  # hidden width of the draft's MLP
    draft_loss_weight: float = 0.05  # weight of its bag-of-words loss next to the LLM's
    lora: LoraSettings = field(default_factory=LoraSettings)
    labels: tuple[str, ...] = FOUR_CLASS  # the emotion label set scored at inference
    dtype: str = "float32"  # "bfloat16" on GPUs; trainable parts stay in float32
    attention: str = "sdpa"  # the LLM's attention kernel (transformers attn_implementation): sdpa | eager
    system_prompt: str = "You are an expert listener. You describe how people speak and how they feel."

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config key(s) {sorted(unknown)}; valid: {sorted(known)}")
        data = dict(data)
        lora = data.pop("lora", {}) or {}
        if isinstance(lora, dict):
            lora = LoraSettings(**{**lora, "target_modules": tuple(lora.get("target_modules", LoraSettings.target_modules))})
        if "labels" in data:
            data["labels"] = tuple(data["labels"])
        return cls(lora=lora, **data)




@dataclass
class DataSection:
    shards: str = "data/shards"  # a `sed-ray prepare` output folder
    train_split: str = "train"
    valid_split: str = "valid"
    batch_seconds: float = 64.0  # padded audio seconds per batch per worker
    max_batch_size: int = 64  # utterances per batch, at most
    window_rows: int = 512  # utterances sorted together for bucketing
    # Shards one ingest task reads, windows and buckets: windows run across a group's files and end with it.
    files_per_task: int = 8
    # LLM tokens per batch, at most (0 = no bound): rows x (row_tokens + longest seconds x audio_tokens_per_second).
    # Audio seconds alone let a batch of short clips reach max_batch_size rows of ~160 prompt and target tokens each.
    batch_tokens: int = 0
    row_tokens: int = 160  # estimated prompt + target tokens per utterance
    audio_tokens_per_second: float = 20.0  # pseudo-tokens per audio second: 2 streams x 50 Hz / 5 frames stacked
    # Node labels Ray Data's read and bucketing tasks must run on, e.g. {group: cpu} to keep ingest on a CPU
    # node group and off the GPU nodes ({} = anywhere). Labels come from `ray start --labels`, or KubeRay's
    # rayStartParams; the shipped cluster files label their CPU groups group=cpu.
    ingest_labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelSection(ModelConfig):
    # "tiny": build the tiny base under <storage>/<name>/base; "paper-random": the paper's sizes with random
    # weights (`sed-ray bench step` only); None: load encoder/llm as they are
    preset: str | None = None
    tiny_vocab_size: int = 2000  # tiny preset: BPE vocabulary size
    tiny_encoder_steps: int = 0  # tiny preset: label-free masked-unit pretraining steps of the encoder
    tiny_lm_steps: int = 0  # tiny preset: plain text-LM pretraining steps of the LLM
    tiny_base_dir: str | None = None  # tiny preset: where the base is built/reused; None = <storage>/<name>/base
    activation_checkpointing: bool = False  # recompute the LLM's layer activations in the backward (memory)

    def model_config(self) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{n: getattr(self, n) for n in names})


@dataclass
class StageSection:
    preset: str = "stage1"  # stage1 (ASR, content branch), stage2 (joint, descriptor branch), both
    steps: int = 100  # optimiser steps per round
    lr: float = 1e-4  # peak learning rate
    name: str | None = None
    task: str | None = None  # override the preset's task (e.g. joint_no_descriptor for the ablation)
    draft_teacher_until: float = 0.5  # descriptor draft only: teacher share 1 -> 0 over this fraction of the stage


@dataclass
class ScheduleSection:
    rounds: int = 1  # how many times the stage list repeats (alternating training)
    stages: list[StageSection] = field(default_factory=lambda: [StageSection("stage1"), StageSection("stage2")])


@dataclass
class BetaSection:
    kind: str = "exponential"  # constant | linear | exponential | cosine
    start: float = 1.0
    end: float = 1e-4
    steps: int | None = None  # annealing length in steps; None = the whole run
    value: float = 1e-3  # constant only


@dataclass
class OptimSection:
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50  # linear warm-up at the start of each stage
    decay: str = "cosine"  # cosine | linear | constant, to min_lr_ratio * lr at the end of each stage
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimiser step


@dataclass
class DeepSpeedSection:
    enabled: bool = True  # False: plain PyTorch DDP-free step (single worker, or benchmarks)
    zero_stage: int = 2  # 0-3
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class ScalingSection:
    # A fixed count, or [min, max]: an elastic run, as Ray Train's ScalingConfig takes it. It starts with as
    # many workers as the cluster holds between the two, and is resized (from its latest checkpoint, which
    # does not depend on the worker count) when nodes join or leave.
    num_workers: int | tuple[int, int] = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used when use_gpu
    placement_strategy: str = "PACK"  # Ray's placement of the workers: PACK (fewest nodes) or SPREAD (across nodes)
    worker_labels: dict[str, str] = field(default_factory=dict)  # node labels the workers must run on ({} = any)
    # custom Ray resources each worker also takes, e.g. {"accelerator_type:H100": 0.001}. An elastic run that
    # pins its workers with worker_labels needs one too: Ray Train 2.60 counts how many workers fit from
    # resources alone, so nodes outside the labels would count and the group would wait for them forever
    worker_resources: dict[str, float] = field(default_factory=dict)
    # an elastic run checks this often whether the cluster now holds more workers (nodes added, say by the
    # autoscaler), and if so restarts the group larger from its latest checkpoint (Ray Train's
    # elastic_resize_monitor_interval_s)
    resize_check_s: float = 60.0
    # how long a (re)started worker group waits for its resources before Ray Train retries with the size the
    # cluster holds then (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S; None: Ray's own, 60 s). Right after a node
    # is lost, Ray still counts it until its health checks fail, so an elastic run first asks for the old
    # size and waits this long before it resumes smaller; on an autoscaling cluster it must cover a node's boot
    start_timeout_s: float | None = None
    # refuse to start when no node the cluster has or can add holds the workers (train/capacity.py)
    check_resources: bool = True
    # the node groups an autoscaler may add: a cluster-launcher YAML or a KubeRay RayCluster/RayJob manifest
    # (None: the launcher's ~/ray_bootstrap_config.yaml when it exists, else only the nodes there are now)
    node_types: str | None = None

    @property
    def min_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else (self.num_workers or (0,))[0]

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else (self.num_workers or (0,))[-1]


@dataclass
class CheckpointSection:
    every_steps: int = 500  # also at every stage boundary
    keep: int = 3  # checkpoints kept (most recent)


@dataclass
class LoggingSection:
    every_steps: int = 10
    wandb: bool = True  # rank 0 only; offline unless WANDB_API_KEY is set or wandb_mode says otherwise
    wandb_project: str = "sed-ray"
    wandb_mode: str | None = None  # online | offline | disabled; None = online with a key, else offline
    wandb_group: str | None = None  # a Tune search sets it to the search's name: one group, one run per trial


@dataclass
class ValidationSection:
    every_steps: int = 0  # 0 = at stage boundaries only
    max_batches: int = 20  # per worker
    # generation budget for the transcript and descriptor the emotion is scored after: long enough that
    # a long transcript is not cut before "Emotion:" (GigaSpeech clips: ~15-60 tokens; descriptors ~40)
    max_new_tokens: int = 160


@dataclass
class TuneSection:
    """`sed-ray tune`: what a search varies and how (README "Searching and ablating")."""

    # dotted config key -> one distribution: {choice: [..]}, {grid: [..]}, {uniform: [lo, hi]},
    # {loguniform: [lo, hi]}, {randint: [lo, hi]} (hi excluded); e.g. "beta.end": {loguniform: [1e-5, 1e-2]},
    # "schedule.stages.1.lr": {loguniform: [1e-4, 3e-3]} (a list item by its index)
    space: dict = field(default_factory=dict)
    metric: str = "val_ua"  # a validation metric the training reports (val_ua: the joint stage's UA)
    mode: str = "max"  # max | min
    trials: int = 8  # sampled trials; with grid keys, each grid point runs `trials` times (Tune's num_samples)
    searcher: str = "auto"  # auto (optuna; random where the space has grid keys) | optuna | random
    scheduler: str = "asha"  # asha (early stopping; its time unit is one validation report) | fifo
    grace_period: int = 1  # asha: validation reports a trial always gets
    reduction_factor: float = 2.0  # asha: 1/reduction_factor of the trials go on at each rung
    max_concurrent: int = 0  # trials at once; 0 = as many as the cluster holds at the per-trial scaling
    trial_max_failures: int = 1  # Tune restarts of a failed trial (each resumes its own last checkpoint)


@dataclass
class TrainConfig:
    name: str = "sed-ray"  # run name: relaunching with the same name and storage resumes
    storage: str = "runs"  # Ray Train storage_path: a local folder, s3://BUCKET/PATH or gs://BUCKET/PATH (a
    # multi-node cluster needs object storage or a shared file system mounted at the same absolute path)
    seed: int = 0
    max_failures: int = 3  # worker-group restarts from the latest checkpoint
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    beta: BetaSection = field(default_factory=BetaSection)
    optim: OptimSection = field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    tune: TuneSection = field(default_factory=TuneSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path | RemotePath:
        """<storage>/<name>: a local folder or an object-store prefix (sed_ray.storage)."""
        return location(self.storage) / self.name

    def problems(self) -> list[str]:
        """What is wrong with the numbers alone, each naming the key to change (the checks against the
        registries, the shards and the model checkpoints are `train.plan.validate`'s)."""
        checks = [
            (self.scaling.placement_strategy in PLACEMENT_STRATEGIES,
             f"scaling.placement_strategy: {self.scaling.placement_strategy!r} is not one of "
             f"{', '.join(PLACEMENT_STRATEGIES)}"),
            (self.scaling.resize_check_s >= 0, f"scaling.resize_check_s: must be >= 0, got {self.scaling.resize_check_s}"),
            (self.scaling.start_timeout_s is None or self.scaling.start_timeout_s > 0,
             f"scaling.start_timeout_s: must be > 0 (or null: Ray's 60 s), got {self.scaling.start_timeout_s}"),
            (isinstance(self.scaling.num_workers, int) or len(self.scaling.num_workers) == 2,
             f"scaling.num_workers: a count or [min, max], got {self.scaling.num_workers}"),
            (1 <= self.scaling.min_workers <= self.scaling.max_workers,
             f"scaling.num_workers: must be >= 1 (a range: 1 <= min <= max), got {self.scaling.num_workers}"),
            (self.deepspeed.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage: must be 0, 1, 2 or 3"),
            (self.deepspeed.enabled or self.scaling.max_workers == 1,
             "deepspeed.enabled: false runs one worker only; set scaling.num_workers=1 or enable DeepSpeed"),
            (self.optim.grad_accum >= 1, "optim.grad_accum: must be >= 1"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps: must be >= 0"),
            (self.checkpoint.every_steps >= 1, "checkpoint.every_steps: must be >= 1"),
            (self.checkpoint.keep >= 1, "checkpoint.keep: must be >= 1"),
            (self.data.batch_seconds > 0, "data.batch_seconds: must be > 0"),
            (self.data.max_batch_size >= 1, "data.max_batch_size: must be >= 1"),
            (self.data.window_rows >= 1, "data.window_rows: must be >= 1"),
            (self.data.files_per_task >= 1, "data.files_per_task: must be >= 1"),
            (self.data.batch_tokens >= 0, "data.batch_tokens: must be >= 0 (0 = no bound)"),
            (self.model.draft_bank_size >= 0, "model.draft_bank_size: must be >= 0 (0 turns the descriptor draft off)"),
            (self.model.draft_bank_tokens >= 1, "model.draft_bank_tokens: must be >= 1"),
            (self.model.draft_loss_weight >= 0, "model.draft_loss_weight: must be >= 0"),
            (self.max_failures >= 0, "max_failures: must be >= 0"),
            (self.logging.every_steps >= 1, "logging.every_steps: must be >= 1"),
            (self.validation.every_steps >= 0, "validation.every_steps: must be >= 0 (0 = at stage boundaries)"),
            (self.validation.max_new_tokens >= 1, "validation.max_new_tokens: must be >= 1"),
            (bool(self.schedule.stages), "schedule.stages: list at least one stage"),
            (self.schedule.rounds >= 1, f"schedule.rounds: must be >= 1 (got {self.schedule.rounds})"),
        ]
        problems = [message for ok, message in checks if not ok]
        for i, s in enumerate(self.schedule.stages):
            if s.steps <= 0:
                problems.append(f"schedule.stages[{i}].steps: must be > 0 (got {s.steps})")
            if s.lr <= 0:
                problems.append(f"schedule.stages[{i}].lr: must be > 0 (got {s.lr})")
            if not 0.0 <= s.draft_teacher_until <= 1.0:
                problems.append(f"schedule.stages[{i}].draft_teacher_until: a fraction of the stage, 0 to 1 "
                                f"(got {s.draft_teacher_until})")
        return problems


@dataclass
class InferenceOptions:
    """How `infer` and `evaluate` run a trained model: one object, not a chain of keyword arguments."""

    task: str = "joint"  # a prompt task: asr, joint, joint_no_descriptor
    descriptors: str = "predicted"  # what the emotion is scored after: predicted | generated | ground-truth
    batch_size: int = 8  # utterances per model call
    max_new_tokens: int = 96  # generation budget for transcript and descriptor
    num_beams: int = 1  # beam search width (1 = greedy)
    actors: int | None = None  # model replicas; None = one per GPU free now, or up to 2 on CPUs
    # What each replica asks Ray for. None = 1 GPU when a GPU is free now, else 0. Give them explicitly on an
    # autoscaling cluster: the pool then asks for what the autoscaler can add, not what exists now.
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    group_window: int = 16  # batches' worth of inputs sorted by length together (1 = arrival order)
    labels: tuple[str, ...] | None = None  # score over these of the model's labels only; None = all
    latents: bool = False  # keep pooled Z_con / Z_des per utterance (the report's projections)
    listening: bool = False  # the listening check per utterance (needs reference fields)

    def problems(self) -> list[str]:
        checks = [(self.batch_size >= 1, f"batch_size: must be >= 1 (got {self.batch_size})"),
                  (self.max_new_tokens >= 1, f"max_new_tokens: must be >= 1 (got {self.max_new_tokens})"),
                  (self.num_beams >= 1, f"num_beams: must be >= 1 (got {self.num_beams})"),
                  (self.actors is None or self.actors >= 1, f"actors: must be >= 1 (got {self.actors})"),
                  (self.gpus_per_actor is None or self.gpus_per_actor >= 0,
                   f"gpus_per_actor: must be >= 0 (got {self.gpus_per_actor})"),
                  (self.cpus_per_actor > 0, f"cpus_per_actor: must be > 0 (got {self.cpus_per_actor})"),
                  (self.group_window >= 1, f"group_window: must be >= 1 (got {self.group_window})")]
        return [message for ok, message in checks if not ok]


# --- loading ----------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_type, f"{key} (a key)"): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{key}: expected float, got {value!r} ({type(value).__name__})")
    if tp is bool and not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ValueError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def build(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown config key '{where}{unknown[0]}'; valid keys here: {', '.join(sorted(fields))}")
    values = {name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    return cls(**values)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    if isinstance(raw.get("model", {}).get("lora"), dict):
        raw["model"]["lora"] = {**dataclasses.asdict(LoraSettings()), **raw["model"]["lora"]}
    return build(TrainConfig, raw)
