"""The model's configuration: everything needed to rebuild it, serialisable to JSON.

Values the paper does not publish (latent size, adapter width, LoRA rank/alpha, prompt text) are
defaults chosen here; see README "Model".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sed_ray.data.schema import FOUR_CLASS


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
