"""`sed-ray bench step`: the per-worker training step of a config, timed after warm-up, without Ray.

It runs where Ray and DeepSpeed are absent (a GPU box with torch, transformers and peft): the plain
step (`train.step.StageRunner` with DeepSpeed off), on batches made by the training stream's own
bucketing and collate. With `--baseline naive` the same figures are measured in the same process for a
straightforward loop: random batches padded to the longest, fp32, eager attention, targets tokenised
inside the step, logits over every position.

FLOP model for the MFU (stated in the output): LoRA on a frozen LLM costs ~4 x N x tokens per step
(forward, plus the backward to the inputs), N the LLM's parameters less its input embedding (a lookup);
the frozen encoder adds its forward, 2 x N_encoder x frames (50 frames per audio second).

Shape legend: B batch, T samples.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from sed_ray.config import TrainConfig
from sed_ray.data.collate import Batch, collate_rows
from sed_ray.data.schema import SAMPLE_RATE
from sed_ray.data.stream import StreamConfig, plan_batches

WORDS = ("the a of to and in that it was for on are as with his they at be this from have or by one had not but "
         "what all were when we there can an your which their said if do will each about how up out them then "
         "she many some so these would other into has more her two like him see time could no make than first").split()
DESCRIPTOR_WORDS = ("a low high pitched voice speaks slowly quickly with little much energy calm tone emphasis on "
                    "the last word adult male female speaker clear steady trembling loud soft").split()


def synthetic_rows(count: int, labels: tuple[str, ...], seed: int = 0, seconds=(2.0, 8.0)) -> list[dict]:
    """Decoded rows as `infer` sees them: noise audio of random length (GigaSpeech clips average ~4 s),
    a transcript of ~2.5 words a second, a ~20-word descriptor and an emotion."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        length = rng.uniform(*seconds)
        samples = int(length * SAMPLE_RATE)
        pcm = (rng.standard_normal(samples) * 3000).clip(-32768, 32767).astype("<i2")
        rows.append({"id": f"u{i}", "pcm": pcm.tobytes(), "num_samples": samples,
                     "text": " ".join(rng.choice(WORDS, max(1, int(length * 2.5)))),
                     "descriptor": " ".join(rng.choice(DESCRIPTOR_WORDS, 20)), "emotion": labels[i % len(labels)]})
    return rows


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@contextmanager
def peak_memory(device: torch.device):
    """The peak of what the block allocates: CUDA's allocator peak on a GPU, the sampled resident set
    (minus the resident set before) on a CPU. Yields a dict filled in at the end."""
    result = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - start
        return
    start, peak, running = _rss_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        running[0] = False
        thread.join()
        result["peak_bytes"] = max(peak[0], _rss_bytes()) - start


def flops_per_step(llm_params: int, encoder_params: int, tokens: int, audio_seconds: float) -> float:
    return 4 * llm_params * tokens + 2 * encoder_params * audio_seconds * 50


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, batches: list, steps: int, warmup: int, device: torch.device, llm_params: int,
            encoder_params: int, peak: float | None) -> dict:
    """Time `step(batch) -> sequence tokens` over `steps` batches after `warmup`; medians per step."""
    for batch in batches[:warmup]:
        step(batch)
    _sync(device)
    times, tokens, audio, rows, padding = [], [], [], [], []
    with peak_memory(device) as memory:
        for batch in batches[warmup:warmup + steps]:
            started = time.perf_counter()
            count = float(step(batch))
            _sync(device)
            times.append(time.perf_counter() - started)
            tokens.append(count)
            audio.append(batch.audio_seconds if isinstance(batch, Batch) else batch["audio_seconds"])
            rows.append(batch.size if isinstance(batch, Batch) else len(batch["rows"]))
            padding.append(batch.padding_fraction if isinstance(batch, Batch) else batch["padding_fraction"])
    total = sum(times)
    flops = sum(flops_per_step(llm_params, encoder_params, t, a) for t, a in zip(tokens, audio))
    return {"steps": len(times), "step_s_median": round(statistics.median(times), 4),
            "samples_per_s": round(sum(rows) / total, 2), "llm_tokens_per_s": round(sum(tokens) / total, 1),
            "audio_s_per_s": round(sum(audio) / total, 2), "padding_fraction": round(statistics.mean(padding), 4),
            "peak_memory_gib": round(memory["peak_bytes"] / 2**30, 3),
            "mfu": round(flops / total / peak, 4) if peak else None}


def optimised_batches(rows: list[dict], config: TrainConfig, builder, tasks: tuple[str, ...]) -> list[Batch]:
    """Length-bucketed batches under the config's budget, tokenised up front (as the ingest tasks do)."""
    lengths = np.array([r["num_samples"] for r in rows])
    plan = plan_batches(lengths, StreamConfig(config.data, seed=config.seed), np.random.default_rng(config.seed))
    return [collate_rows([rows[i] for i in batch], builder, tasks) for batch in plan]


def naive_batches(rows: list[dict], size: int, seed: int) -> list[dict]:
    """Random batches of `size` rows, padded to their longest, tokenised later inside the step."""
    order = np.random.default_rng(seed).permutation(len(rows))
    out = []
    for start in range(0, len(rows) - size + 1, size):
        chosen = [rows[i] for i in order[start:start + size]]
        lengths = [r["num_samples"] for r in chosen]
        out.append({"rows": chosen, "audio_seconds": sum(lengths) / SAMPLE_RATE,
                    "padding_fraction": 1 - sum(lengths) / (max(lengths) * len(lengths))})
    return out


def naive_step_fn(model, task: str, device: torch.device, lr: float):
    """A straightforward loop's step: tokenise the batch, full-sequence logits and the LLM's own loss."""
    from sed_ray.model.prompt import get_task

    spec = get_task(task)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)

    def step(batch: dict) -> int:
        tensors = collate_rows(batch["rows"], model.prompts, (task,)).to(device)
        hidden, mask = model.encoder(tensors.pcm_BT, tensors.lengths_B)
        references = None
        if model.uses_draft(spec):
            references = (tensors.descriptor_ids_BD, torch.zeros(tensors.size, dtype=torch.bool))
        streams, kls, _ = model.encode_for(spec, hidden, mask, references)
        inputs, attention, positions, labels = model._assemble(spec, streams, tensors.targets[task])
        out = model.llm(inputs_embeds=inputs, attention_mask=attention, position_ids=positions, labels=labels,
                        use_cache=False)
        loss = out.loss + sum(1e-3 * kls[b] for b in spec.inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(attention.sum())

    return step


def run(config: TrainConfig, *, steps: int = 10, warmup: int = 3, baseline: str | None = None, stage: int = -1,
        log=print) -> dict:
    """Figures for the config's step (stage index `stage` of its schedule: the last by default)."""
    from sed_ray.bench.models import build_model
    from sed_ray.train.plan import name_problems
    from sed_ray.train.stages import schedule_for
    from sed_ray.train.step import StageRunner, resolve_precision

    found = config.problems() + name_problems(config)
    if found:
        raise ValueError("invalid config for bench step:\n  - " + "\n  - ".join(found))
    device = torch.device("cuda" if torch.cuda.is_available() and config.scaling.use_gpu else "cpu")
    precision = resolve_precision(config.deepspeed.precision, device)
    config = replace(config, deepspeed=replace(config.deepspeed, enabled=False))
    spec = schedule_for(config).stages[stage]
    needed = (warmup + steps) * config.data.max_batch_size * 3
    model, builder = build_model(config, device, log)
    rows = synthetic_rows(needed, model.config.labels, config.seed)
    runner = StageRunner(model, spec, config, device)
    batches = optimised_batches(rows, config, builder, (spec.task,))

    def optimised(batch: Batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            metrics = runner.train_step([batch], spec.task, spec.beta_weights(1e-3))
        return metrics["sequence_tokens"]

    llm_params = sum(p.numel() for p in model.llm.parameters()) - model.llm.get_input_embeddings().weight.numel()
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    from sed_ray.train.tracking import peak_flops

    peak = peak_flops() if device.type == "cuda" else None
    log(f"[bench] optimised: {len(batches)} bucketed batches, {precision}, stage {spec.name} ({spec.task})")
    figures = {"benchmark": "step", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "config": config.name, "stage": spec.name, "task": spec.task, "precision": precision,
               "flop_model": "4 x N_llm_non_embedding x llm_tokens + 2 x N_encoder x 50 x audio_seconds",
               "peak_flops": peak, "optimised": measure(optimised, batches, steps, warmup, device, llm_params,
                                                         encoder_params, peak)}
    runner.close()
    if baseline == "naive":
        del runner, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        naive_config = replace(config, model=replace(config.model, dtype="float32", activation_checkpointing=False))
        model, _ = build_model(naive_config, device, log, attention="eager")
        model.set_trainable(spec.trains)
        model.train()
        size = max(1, round(statistics.mean(b.size for b in batches)))
        log(f"[bench] naive: random batches of {size}, fp32, eager attention, tokenised in the step")
        naive = naive_batches(rows, size, config.seed)
        figures["naive"] = measure(naive_step_fn(model, spec.task, device, spec.lr), naive, steps, warmup, device,
                                   llm_params, encoder_params, peak)
        figures["optimised_over_naive"] = {
            key: round(figures["optimised"][key] / figures["naive"][key], 3)
            for key in ("samples_per_s", "audio_s_per_s") if figures["naive"][key]}
    return figures
