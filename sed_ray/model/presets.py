"""Model presets: the paper's sizes, and a tiny one built locally for tests and the demo.

The tiny preset writes a HuBERT-style encoder and a Llama-style LLM with random weights, plus a
byte-level BPE tokenizer trained on the corpus text, each with `save_pretrained` (safetensors), so
they are loaded back through exactly the path real checkpoints take (`from_pretrained` on a folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from sed_ray.model.config import LoraSettings, ModelConfig
from sed_ray.model.prompt import FIELD_TITLES, TASKS

# The paper's checkpoints, described by their published configs so they can be instantiated on the
# meta device (no weights, no download) to count parameters.
HUBERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                   rope_theta=500000.0, tie_word_embeddings=False)

TINY_SPECIAL = {"bos_token": "<|begin|>", "eos_token": "<|end|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"}
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def paper_config() -> ModelConfig:
    return ModelConfig(dtype="bfloat16")


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
    label-free stand-in pretraining of model/pretrain.py; with `lm_steps`, the LLM too, on the texts."""
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
        from sed_ray.model.pretrain import pretrain_encoder

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
        from sed_ray.model.pretrain import pretrain_lm

        pretrain_lm(llm, tokenizer, texts, steps=lm_steps, seed=seed, log=log)
    llm.save_pretrained(out / "llm")
    tokenizer.save_pretrained(out / "llm")
    (out / "model_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return config


def paper_model_on_meta():
    """The paper-size model with no weights (meta device): for parameter counts and shape checks."""
    from transformers import HubertConfig, HubertModel, LlamaConfig, LlamaForCausalLM

    from sed_ray.model.encoder import SpeechEncoder
    from sed_ray.model.speech_llm import SpeechEmotionLLM, with_lora

    config = paper_config()

    class _NoTokenizer:  # the prompt builder is not exercised on the meta device
        eos_token_id = 0

    with torch.device("meta"):
        encoder = SpeechEncoder(HubertModel(HubertConfig(**HUBERT_LARGE)), normalize=True)
        llm = with_lora(LlamaForCausalLM(LlamaConfig(**LLAMA_31_8B)), config)
        model = SpeechEmotionLLM(config, encoder, llm, _NoTokenizer())
    return model.to("meta")  # HuBERT creates its mask embedding on the CPU whatever the default device
