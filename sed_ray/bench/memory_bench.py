"""`sed-ray bench memory`: peak memory of label scoring and of one training step on a model with Llama-3.1's
vocabulary (128,256) and hidden width (4,096) but few layers, before and after logits were kept only
where they are scored; runs on a CPU (the resident set, sampled) or a GPU (the allocator's peak).

On a CPU run it with `MALLOC_MMAP_THRESHOLD_=131072` so that freed tensors leave the resident set at
once (glibc otherwise keeps them, and each figure would include the last one's leftovers).

"before" is the path the code took until this change, computed here for comparison: the LLM's logits at
every position of every row, in float32, then log-softmax over all of them (label scoring: every
utterance x label row at once; training: the LLM's own loss over the full logits).
"""

from __future__ import annotations

import torch

from sed_ray.bench.step_bench import peak_memory, synthetic_rows


def wide_model(layers: int, device: torch.device, dtype: torch.dtype):
    """A tiny encoder and a Llama-3.1-wide LLM of `layers` layers, random weights, with LoRA."""
    from transformers import HubertConfig, HubertModel, LlamaConfig, LlamaForCausalLM

    from sed_ray.base.tiny import build_tokenizer, prompt_texts
    from sed_ray.bench.step_bench import DESCRIPTOR_WORDS, WORDS
    from sed_ray.config import ModelConfig
    from sed_ray.model.encoder import SpeechEncoder
    from sed_ray.model.presets import LLAMA_31_8B
    from sed_ray.model.speech_llm import SpeechEmotionLLM, with_lora

    config = ModelConfig(labels=("neutral", "happy", "angry", "sad", "surprised", "fearful", "disgusted"))
    tokenizer = build_tokenizer([" ".join(WORDS), " ".join(DESCRIPTOR_WORDS), *prompt_texts(config)] * 4)
    torch.manual_seed(0)
    with torch.device(device):
        encoder = HubertModel._from_config(HubertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                        intermediate_size=128, conv_dim=(32,) * 7), torch_dtype=dtype)
        llm = LlamaForCausalLM._from_config(
            LlamaConfig(**{**LLAMA_31_8B, "num_hidden_layers": layers}, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id), torch_dtype=dtype)
        model = SpeechEmotionLLM(config, SpeechEncoder(encoder, normalize=True), with_lora(llm, config), tokenizer)
    return model.to(device).eval()


def full_logits_scoring(model, streams, task: str, prefixes: list[dict],
                        labels: tuple[str, ...] | None = None) -> torch.Tensor:
    """The former label scoring: every utterance x label row at once, float32 logits at every position."""
    from sed_ray.model.prompt import get_task
    from sed_ray.model.speech_llm import IGNORE, pad_ids

    spec, labels = get_task(task), labels or model.config.labels
    targets, scored = [], []
    for values in prefixes:
        prefix, continuations = model.prompts.label_continuations(spec, values, labels)
        targets += [prefix + c for c in continuations]
        scored += [[False] * len(prefix) + [True] * len(c) for c in continuations]
    device = model.llm.get_input_embeddings().weight.device
    ids, mask = pad_ids(targets, device), pad_ids([[int(x) for x in r] for r in scored], device, pad=0).bool()
    inputs, attention, positions, label_ids = model._assemble(spec, streams, ids, mask, repeat=len(labels))
    logits = model.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions, use_cache=False).logits
    logp = torch.log_softmax(logits.float()[:, :-1], dim=-1)
    next_ids = label_ids[:, 1:]
    return (logp.gather(-1, next_ids.clamp(min=0)[..., None])[..., 0] * (next_ids != IGNORE)).sum(-1)


def label_scoring_sweep(model, streams, rows: list[dict], device: torch.device, log=print) -> list[dict]:
    """Peak of label scoring, before and after, as the label count, the chunk and the prefix length
    vary (one at a time from labels 7, chunk 4, prefix 40 words): after the change the peak should follow
    the chunk (and the prefix, through the cache), hardly the labels; before, labels x positions."""
    cells = [(n, 4, 40) for n in (2, 4, 7)] + [(7, c, 40) for c in (1, 2, 8)] + [(7, 4, w) for w in (10, 160)]
    figures = []
    for labels, chunk, words in cells:
        prefixes = [{"transcript": ("word " * words).strip(), "descriptor": r["descriptor"]} for r in rows]
        label_set = model.config.labels[:labels]
        cell = {"labels": labels, "chunk_utterances": chunk, "prefix_words": words}
        runs = [("after", lambda: model.score_labels(streams, "joint", prefixes, label_set, chunk_utterances=chunk))]
        if chunk == 4 and words == 40:  # "before" only across label counts: at long prefixes it needs tens of GB
            runs.append(("before", lambda: full_logits_scoring(model, streams, "joint", prefixes, label_set)))
        for name, fn in runs:
            with peak_memory(device) as memory:
                fn()
            cell[f"{name}_gib"] = round(memory["peak_bytes"] / 2**30, 3)
        log(f"[bench] label scoring sweep {cell}")
        figures.append(cell)
    return figures


def run(utterances: int = 8, layers: int = 2, chunk_utterances: int = 32, prefix_words: int = 40,
        sweep: bool = False, log=print) -> dict:
    from sed_ray.data.collate import collate_rows
    from sed_ray.model.prompt import get_task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # float32 on a CPU: its bf16 matmuls convert the 128k x 4096 projection on every call (gigabytes that
    # would swamp what is measured here, the logits); a GPU runs bf16 as training does
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = wide_model(layers, device, dtype)
    rows = synthetic_rows(utterances, model.config.labels, seconds=(4.0, 6.0))
    batch = collate_rows(rows, model.prompts, ("joint",)).to(device)
    spec = get_task("joint")
    words = ("word " * prefix_words).strip()
    prefixes = [{"transcript": words, "descriptor": r["descriptor"]} for r in rows]
    figures = {"benchmark": "memory", "device": str(device), "vocab": model.llm.get_input_embeddings().weight.shape[0],
               "hidden": model.llm.get_input_embeddings().weight.shape[1], "layers": layers, "utterances": utterances,
               "labels": len(model.config.labels), "prefix_words": prefix_words, "dtype": str(dtype)}
    with torch.no_grad():
        streams, _, _ = model.encode_for(spec, *model.encoder(batch.pcm_BT, batch.lengths_B))
        for name, fn in (("label_scoring_before", lambda: full_logits_scoring(model, streams, "joint", prefixes)),
                         ("label_scoring_after", lambda: model.score_labels(streams, "joint", prefixes,
                                                                            chunk_utterances=chunk_utterances))):
            with peak_memory(device) as memory:
                fn()
            figures[f"{name}_gib"] = round(memory["peak_bytes"] / 2**30, 3)
            log(f"[bench] {name}: {figures[f'{name}_gib']} GiB")
        if sweep:
            figures["label_scoring_sweep"] = label_scoring_sweep(model, streams, rows, device, log)
    model.set_trainable(("descriptor_block", "descriptor_adapter", "lora"))
    model.train()
    targets = batch.targets["joint"]
    for name, keep_all in (("train_step_before", True), ("train_step_after", False)):
        with peak_memory(device) as memory:
            if keep_all:  # the former loss: logits at every position, the LLM's own loss over them
                hidden, mask = model.encoder(batch.pcm_BT, batch.lengths_B)
                streams, kls, _ = model.encode_for(spec, hidden, mask)
                inputs, attention, positions, labels = model._assemble(spec, streams, targets)
                loss = model.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions,
                                 labels=labels, use_cache=False).loss
            else:
                loss = model(batch.pcm_BT, batch.lengths_B, targets, "joint", {"descriptor": 1e-3}).loss
            loss.backward()
        model.zero_grad(set_to_none=True)
        figures[f"{name}_gib"] = round(memory["peak_bytes"] / 2**30, 3)
        log(f"[bench] {name}: {figures[f'{name}_gib']} GiB")
    return figures
