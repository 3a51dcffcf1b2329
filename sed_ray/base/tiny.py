"""The tiny base: a HuBERT-style encoder and a Llama-style LLM with random weights, a byte-level BPE
tokenizer trained on the corpus text, and their label-free stand-in pretraining (base/pretrain.py).

Each part is written with `save_pretrained` (safetensors), so it is loaded back through exactly the
path real checkpoints take (`from_pretrained` on a folder). `resolve_base(config)` builds it once,
before a launch, under a folder that later runs (and every trial of a search) reuse; a base built with
other settings is refused, not silently reused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import torch

from sed_ray.config import LoraSettings, ModelConfig, TrainConfig
from sed_ray.data.reads import corpus_audio, corpus_texts
from sed_ray.files import atomic_write_json
from sed_ray.model.prompt import FIELD_TITLES, TASKS
from sed_ray.model.weights import CONFIG
from sed_ray.storage import RemotePath, location, upload_folder, uri

TINY_SPECIAL = {"bos_token": "<|begin|>", "eos_token": "<|end|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer trained on `texts`, with the special tokens the prompt needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = list(TINY_SPECIAL.values()) + ["<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **TINY_SPECIAL)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def prompt_texts(config: ModelConfig) -> list[str]:
    """Every fixed string the prompts and targets use, so the tokenizer learns them too."""
    texts = [config.system_prompt, *[t.instruction for t in TASKS.values()], "Speech content:", "Speaking style:"]
    texts += [f"{title}: " for title in FIELD_TITLES.values()] + [f"Emotion: {label}" for label in config.labels]
    return texts


def build_tiny(out: str | Path, corpus_texts: Iterable[str], *, seed: int = 0, encoder_layers: int = 4,
               encoder_width: int = 64, llm_layers: int = 2, llm_width: int = 128, vocab_size: int = 2000,
               audio: list | None = None, encoder_steps: int = 0, lm_steps: int = 0, log=None) -> ModelConfig:
    """Write OUT/encoder and OUT/llm (weights + configs + tokenizer) and return the ModelConfig
    that loads them. With `audio` (16 kHz float arrays) and `encoder_steps`, the encoder gets the
    label-free stand-in pretraining of base/pretrain.py; with `lm_steps`, the LLM too, on the texts."""
    from transformers import HubertConfig, HubertModel, LlamaConfig, LlamaForCausalLM, Wav2Vec2FeatureExtractor

    out = Path(out)
    config = ModelConfig(encoder=str(out / "encoder"), llm=str(out / "llm"), latent_dim=32, bottleneck_hidden=128,
                         adapter_hidden=256, stack_frames=5, lora=LoraSettings(rank=16, alpha=32, dropout=0.0, target_modules=(
                             "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")))
    torch.manual_seed(seed)
    encoder = HubertModel(HubertConfig(
        hidden_size=encoder_width, num_hidden_layers=encoder_layers, num_attention_heads=4,
        intermediate_size=2 * encoder_width, conv_dim=(32,) * 7, feat_extract_norm="layer",
        do_stable_layer_norm=True, conv_bias=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        mask_time_prob=0.05))  # > 0 so HuBERT has its mask embedding; the frozen encoder runs in eval mode
    if audio and encoder_steps:
        from sed_ray.base.pretrain import pretrain_encoder

        pretrain_encoder(encoder, audio, steps=encoder_steps, seed=seed, log=log)
    encoder.save_pretrained(out / "encoder")
    Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000, return_attention_mask=True).save_pretrained(out / "encoder")

    texts = list(corpus_texts) + prompt_texts(config)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=llm_width, intermediate_size=2 * llm_width,
        num_hidden_layers=llm_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Frozen, tied embeddings bound the logits through the final RMSNorm: at the usual 0.02 init a
        # 128-wide model cannot put more than ~e^2.5 odds on any token, so LoRA could never fit a
        # target. 0.1 gives the frozen base the dynamic range a pretrained LLM has.
        initializer_range=0.1))
    if lm_steps:
        from sed_ray.base.pretrain import pretrain_lm

        pretrain_lm(llm, tokenizer, texts, steps=lm_steps, seed=seed, log=log)
    llm.save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")
    atomic_write_json(out / CONFIG, config.to_dict())
    return config


SETTINGS = "build.json"  # in a tiny base folder: what it was built from


def base_settings(config: TrainConfig) -> dict:
    """Everything a tiny base depends on; a base built with other settings is not reused."""
    return {"shards": uri(config.data.shards), "train_split": config.data.train_split,
            "seed": config.seed, "tiny_vocab_size": config.model.tiny_vocab_size,
            "tiny_encoder_steps": config.model.tiny_encoder_steps, "tiny_lm_steps": config.model.tiny_lm_steps}


def base_folder(config: TrainConfig) -> Path | RemotePath:
    if config.model.tiny_base_dir:
        return location(config.model.tiny_base_dir)
    return config.run_dir / "base"


def resolve_base(config: TrainConfig, log=print) -> TrainConfig:
    """For the tiny preset, build its base (encoder, LLM, tokenizer) once from the training split, or reuse
    the one built with the same settings; the returned config points model.encoder/llm at it. Other
    presets are returned as they are (their checkpoints are loaded by the workers)."""
    if config.model.preset != "tiny":
        return config
    base = base_folder(config)
    wanted = base_settings(config)
    if not (base / CONFIG).exists():
        _build(config, base, wanted, log)
    elif (base / SETTINGS).exists():
        built_with = json.loads((base / SETTINGS).read_text())
        changed = [f"{key}: built with {built_with.get(key)!r}, this run asks for {value!r}"
                   for key, value in wanted.items() if built_with.get(key) != value]
        if changed:
            raise ValueError(f"the tiny base {base} was built with other settings:\n  - " + "\n  - ".join(changed) +
                             "\n  point model.tiny_base_dir at another folder, or delete this one to rebuild it")
    built = json.loads((base / CONFIG).read_text())
    model = replace(config.model, encoder=str(base / "encoder"), llm=str(base / "llm"), latent_dim=built["latent_dim"],
                    bottleneck_hidden=built["bottleneck_hidden"], adapter_hidden=built["adapter_hidden"])
    return replace(config, model=model)


def _build(config: TrainConfig, base: Path | RemotePath, settings: dict, log) -> None:
    """Build under a staging name, then rename (or upload, CONFIG last): a base folder is complete or absent."""
    if isinstance(base, RemotePath):
        with tempfile.TemporaryDirectory(prefix="sed-ray-base-") as folder:
            staging = Path(folder) / "base"
            _build(config, staging, settings, log)
            upload_folder(staging, base, last=(SETTINGS, CONFIG))
        return
    staging = base.with_name(base.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    data, model = config.data, config.model
    audio = corpus_audio(data.shards, data.train_split) if model.tiny_encoder_steps else None
    build_tiny(staging, corpus_texts(data.shards, data.train_split), seed=config.seed, vocab_size=model.tiny_vocab_size,
               audio=audio, encoder_steps=model.tiny_encoder_steps, lm_steps=model.tiny_lm_steps, log=log)
    atomic_write_json(staging / SETTINGS, settings)
    base.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(base)


def fixed_base(config: TrainConfig, log=print) -> TrainConfig:
    """The config with its base resolved and frozen in place: for the tiny preset, built (or reused) once,
    then the preset dropped so that model.encoder/llm point at that base whatever the run later changes
    (a Tune trial's seed, a best.yaml's name): every run of a search or an ablation shares one base."""
    resolved = resolve_base(config, log)
    if config.model.preset != "tiny":
        return resolved
    return replace(resolved, model=replace(resolved.model, preset=None, tiny_base_dir=None))
