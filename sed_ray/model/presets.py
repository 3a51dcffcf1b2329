"""Model presets: the paper's sizes (the tiny preset is built by `sed_ray/base/tiny.py`)."""

from __future__ import annotations

import torch

from sed_ray.config import ModelConfig

# The paper's checkpoints, described by their published configs so they can be instantiated on the
# meta device (no weights, no download) to count parameters.
HUBERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                   rope_theta=500000.0, tie_word_embeddings=False)

def paper_config() -> ModelConfig:
    return ModelConfig(dtype="bfloat16")


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
