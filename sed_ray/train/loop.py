"""The per-worker training loop: build, resume, run the stage schedule over the stream, validate,
checkpoint. Written against `TrainContext`, so it runs under Ray Train and in a plain process alike;
it imports neither Ray nor DeepSpeed itself."""

from __future__ import annotations

import os
import time

import torch

from sed_ray.config import TrainConfig
from sed_ray.model.prompt import get_task
from sed_ray.model.speech_llm import SpeechEmotionLLM, count_parameters
from sed_ray.train.checkpoint import (TrainPosition, read_optimizer_state, read_position, restore_model,
                                      write_checkpoint)
from sed_ray.train.context import TrainContext
from sed_ray.train.step import StageRunner, batch_targets, lr_at
from sed_ray.train.tracking import Tracker, peak_flops


class EpochStream:
    """Batches across epochs; on resume, skips the batches of the current epoch already trained on."""

    def __init__(self, context: TrainContext, split: str, epoch: int, skip: int) -> None:
        self.context, self.split, self.epoch, self.batches_in_epoch = context, split, epoch, 0
        self._iterator = iter(context.batches(split, epoch))
        for _ in range(skip):
            if next(self._iterator, None) is None:
                break
            self.batches_in_epoch += 1

    def next(self):
        batch = next(self._iterator, None)
        if batch is None:
            if self.batches_in_epoch == 0:
                raise ValueError(f"the {self.split!r} split yields no batches: check data.train_split and the shards")
            self.epoch += 1
            self.batches_in_epoch = 0
            self._iterator = iter(self.context.batches(self.split, self.epoch))
            batch = next(self._iterator)
        self.batches_in_epoch += 1
        return batch


def validate(model, context: TrainContext, task: str, config: TrainConfig) -> dict:
    """Loss parts on the valid split; in a task with an emotion, UA/WA from label scoring after the
    model's own transcript and descriptor. Summed over ranks."""
    labels = model.config.labels
    spec = get_task(task)
    totals = torch.zeros(3 + len(spec.inputs), dtype=torch.float64)  # batches, ce, tokens, kls...
    confusion = torch.zeros(len(labels), len(labels), dtype=torch.float64)
    model.eval()
    for index, batch in enumerate(context.batches(config.data.valid_split, 0)):
        if index >= config.validation.max_batches:
            break
        batch = batch.to(context.device)
        targets = batch_targets(batch)
        with torch.no_grad():
            out = model(batch.pcm_BT, batch.lengths_B, targets, task)
        totals[0] += 1
        totals[1] += float(out.ce) * out.target_tokens
        totals[2] += out.target_tokens
        for i, branch in enumerate(spec.inputs):
            totals[3 + i] += float(out.kl[branch])
        if "emotion" in spec.fields:
            for target, row in zip(targets, model.predict(batch.pcm_BT, batch.lengths_B, task, max_new_tokens=64)):
                if target["emotion"] in labels:
                    confusion[labels.index(target["emotion"]), labels.index(row["emotion"])] += 1
    totals = context.all_reduce_sum(totals.to(context.device)).cpu()
    confusion = context.all_reduce_sum(confusion.to(context.device)).cpu()
    model.train()
    if totals[0] == 0:
        return {}
    result = {"val_ce": float(totals[1] / max(totals[2], 1))}
    result |= {f"val_kl_{b}": float(totals[3 + i] / totals[0]) for i, b in enumerate(spec.inputs)}
    if confusion.sum() > 0:
        support = confusion.sum(1)
        recall = confusion.diag()[support > 0] / support[support > 0]
        result |= {"val_ua": float(recall.mean()), "val_wa": float(confusion.diag().sum() / confusion.sum())}
    return result


def train_worker(config: TrainConfig, context: TrainContext, draft_bank: list[str] | None = None) -> TrainPosition:
    """Run (or resume) the whole stage schedule on this worker; returns the final position. `draft_bank`:
    the training descriptors the descriptor draft chooses from (`launcher.descriptor_bank`), when the
    model has a draft; a resumed run gets the bank back from its checkpoint."""
    run_dir = config.run_dir
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    (run_dir / "workers" / f"rank{context.rank}.pid").write_text(str(os.getpid()))  # ops: which process is which rank
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = SpeechEmotionLLM.from_config(config.model.model_config()).to(context.device)
    schedule, betas = config.stage_schedule(), config.beta_schedule()
    total, boundaries = schedule.total_steps, set(schedule.boundaries())
    tracker = Tracker(run_dir, config.to_dict(), context.rank, config.logging.wandb, config.logging.wandb_project,
                      config.logging.wandb_mode)
    if model.draft is not None:
        held = model.set_descriptor_bank(draft_bank or [])
        tracker.console(f"[train] descriptor draft: {held} training descriptors in its bank"
                        + ("" if held else " (none: the draft will only learn, not fill the slot)"))

    position, optimizer_tensors, saved_weights = TrainPosition(), {}, {}
    resume_from = context.latest_checkpoint()
    if resume_from is not None:
        saved_weights = restore_model(model, resume_from)
        position = read_position(resume_from)
        optimizer_tensors = read_optimizer_state(resume_from)
        tracker.log({"event": "resumed", "step": position.step, "stage": position.stage, "round": position.round,
                     "beta": position.beta, "epoch": position.epoch, "batches_in_epoch": position.batches_in_epoch})
        tracker.console(f"[train] resumed at step {position.step} ({position.stage}, round {position.round}, "
                        f"beta {position.beta:.3g})")
    torch.manual_seed(config.seed + 1000 * context.rank + position.step)  # reparameterisation noise per rank
    stream = EpochStream(context, config.data.train_split, position.epoch, position.batches_in_epoch)
    flops_peak = peak_flops()
    llm_params = count_parameters(model.llm)["total"]

    runner, runner_index, window = None, -1, []
    while position.step < total:
        where = schedule.locate(position.step)
        if where.index != runner_index:
            if runner is not None:
                runner.close()
            runner = StageRunner(model, where.stage, device=context.device, weight_decay=config.optim.weight_decay,
                                 betas=tuple(config.optim.betas), grad_clip=config.optim.grad_clip,
                                 grad_accum=config.optim.grad_accum, deepspeed=config.deepspeed.enabled,
                                 zero_stage=config.deepspeed.zero_stage, precision=_precision(config, context))
            if optimizer_tensors and where.index == position.stage_index and where.step_in_stage > 0:
                runner.restore(saved_weights, optimizer_tensors, position.optimizer_step)
            optimizer_tensors, saved_weights = {}, {}
            runner_index = where.index
            tracker.console(f"[train] {where.stage.name} (round {where.round + 1}/{schedule.rounds}): task "
                            f"{where.stage.task}, trains {', '.join(where.stage.trains)}, {where.stage.steps} steps")
        lr = lr_at(where.stage, where.step_in_stage, config.optim.warmup_steps, config.optim.decay,
                   config.optim.min_lr_ratio)
        runner.set_lr(lr)
        beta = betas(position.step)
        batches = [stream.next() for _ in range(config.optim.grad_accum)]
        started = time.perf_counter()
        metrics = runner.train_step(batches, where.stage.task, where.stage.beta_weights(beta),
                                    where.stage.draft_teacher_share(where.step_in_stage))
        elapsed = time.perf_counter() - started
        position.step += 1
        position.stage_index, position.stage, position.round = where.index, where.stage.name, where.round
        position.epoch, position.batches_in_epoch = stream.epoch, stream.batches_in_epoch
        position.beta, position.lr = beta, lr
        window.append((metrics, elapsed, batches))

        if position.step % config.logging.every_steps == 0 or position.step in boundaries or position.step == total:
            record = _summarise(window, context.world_size, flops_peak, llm_params)
            record |= {"step": position.step, "stage": where.stage.name, "round": where.round, "beta": beta,
                       "lr": lr, "epoch": stream.epoch}
            tracker.log(record)
            draft = f"draft bow {record['draft_bow']:.3f} " if "draft_bow" in record else ""
            tracker.console(f"[train] {where.stage.name} r{where.round + 1} step {position.step}/{total} "
                            f"loss {record['loss']:.3f} ce {record['ce']:.3f} {draft}beta {beta:.2g} lr {lr:.2g} | "
                            f"{record['tokens_per_s']:.0f} tok/s {record['audio_s_per_s']:.1f} audio-s/s "
                            f"pad {record['padding_fraction']:.2f}")
            window = []

        at_boundary = position.step in boundaries
        every = config.validation.every_steps
        if at_boundary or (every and position.step % every == 0):
            result = validate(model, context, where.stage.task, config)
            if result:
                tracker.log({"step": position.step, "stage": where.stage.name, **result})
                tracker.console("[valid] " + " ".join(f"{k} {v:.3f}" for k, v in result.items()))

        if position.step % config.checkpoint.every_steps == 0 or at_boundary or position.step == total:
            model_state = runner.model_state()  # collectives: every rank takes part
            optimizer_state, position.optimizer_step = runner.optimizer_state()
            folder = None
            if context.rank == 0:
                folder = write_checkpoint(model_state, model.config.to_dict(), optimizer_state, position,
                                          config.to_dict(), staging_root=run_dir / "workers")
            context.report({"step": position.step, "stage": position.stage, "beta": position.beta}, folder)
    if runner is not None:
        runner.close()
    tracker.close()
    return position


def _precision(config: TrainConfig, context: TrainContext) -> str:
    if config.deepspeed.precision != "auto":
        return config.deepspeed.precision
    return "bf16" if context.device.type == "cuda" else "fp32"


def _summarise(window, world_size: int, flops_peak: float | None, llm_params: int) -> dict:
    """Averages over the logging window; throughput scaled to all workers (rank 0's rate x world size)."""
    seconds = sum(e for _, e, _ in window) or 1e-9
    metrics = [m for m, _, _ in window]
    keys = {k for m in metrics for k in m if k not in ("target_tokens", "sequence_tokens")}
    record = {k: sum(m.get(k, 0.0) for m in metrics) / len(metrics) for k in keys}
    tokens = sum(m["sequence_tokens"] for m in metrics)
    audio = sum(b.audio_seconds for _, _, bs in window for b in bs)
    padded = [b.padding_fraction for _, _, bs in window for b in bs]
    record |= {"tokens_per_s": world_size * tokens / seconds, "audio_s_per_s": world_size * audio / seconds,
               "padding_fraction": sum(padded) / len(padded), "step_time_s": seconds / len(window)}
    if flops_peak:  # LoRA on a frozen LLM: ~4 N FLOPs per token (forward + input-gradient backward)
        record["mfu"] = (tokens / seconds) * 4 * llm_params / flops_peak
    return record
