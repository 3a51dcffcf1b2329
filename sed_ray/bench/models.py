"""The model a step benchmark runs: the config's own (the tiny base, or checkpoints by from_pretrained),
or `model.preset: paper-random`, the paper's architecture sizes (HuBERT-large, Llama-3.1-8B) with random
weights built from their published configs on the device itself: no download, no disk."""

from __future__ import annotations

from dataclasses import replace

import torch

from sed_ray.config import TrainConfig


def build_model(config: TrainConfig, device: torch.device, log=print, attention: str | None = None):
    """-> (model on `device` with the config's memory settings, its PromptBuilder)."""
    from sed_ray.base.tiny import resolve_base
    from sed_ray.model.speech_llm import SpeechEmotionLLM
    from sed_ray.train.memory import apply_memory_settings

    if config.model.preset != "paper-random":
        config = resolve_base(config, log=log)  # the tiny preset's base; other presets as they are
    model_config = config.model.model_config()
    if attention is not None:
        model_config = replace(model_config, attention=attention)
    torch.manual_seed(config.seed)
    if config.model.preset == "paper-random":
        model = paper_random(model_config, device, log)
    else:
        model = SpeechEmotionLLM.from_config(model_config).to(device)
    apply_memory_settings(model, config)
    return model, model.prompts


def paper_random(model_config, device: torch.device, log=print):
    from transformers import HubertConfig, HubertModel, LlamaConfig, LlamaForCausalLM

    from sed_ray.base.tiny import build_tokenizer, prompt_texts
    from sed_ray.bench.step_bench import DESCRIPTOR_WORDS, WORDS
    from sed_ray.model.encoder import SpeechEncoder
    from sed_ray.model.presets import HUBERT_LARGE, LLAMA_31_8B
    from sed_ray.model.speech_llm import DTYPES, SpeechEmotionLLM, with_lora

    dtype = DTYPES[model_config.dtype]
    # the real vocabulary size; the stand-in tokenizer's ids are a subset of it
    tokenizer = build_tokenizer([" ".join(WORDS), " ".join(DESCRIPTOR_WORDS), *prompt_texts(model_config)] * 4)
    log(f"[bench] building HuBERT-large + Llama-3.1-8B with random weights on {device} ({model_config.dtype})")
    with torch.device(device):
        encoder = HubertModel._from_config(HubertConfig(**HUBERT_LARGE), torch_dtype=dtype)
        llm_config = LlamaConfig(**LLAMA_31_8B, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        llm = LlamaForCausalLM._from_config(llm_config, torch_dtype=dtype, attn_implementation=model_config.attention)
        model = SpeechEmotionLLM(model_config, SpeechEncoder(encoder, normalize=True), with_lora(llm, model_config),
                                 tokenizer)
    return model.to(device)
