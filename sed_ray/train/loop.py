"""The per-worker training loop, in named steps: build, resume, run a stage, log, validate, checkpoint.

Written against `TrainContext`, so it runs under Ray Train and in a plain process alike; it imports
neither Ray nor DeepSpeed itself. `train_worker` is the whole loop; `WorkerRun` holds one step each.
"""

from __future__ import annotations

import os
import time

import torch

from sed_ray.config import TrainConfig
from sed_ray.model.prompt import get_task
from sed_ray.model.speech_llm import SpeechEmotionLLM, count_parameters
from sed_ray.storage import is_remote
from sed_ray.train.checkpoint import (TrainPosition, read_optimizer_state, read_position, restore_model,
                                      write_checkpoint)
from sed_ray.train.context import TrainContext
from sed_ray.train.memory import apply_memory_settings
from sed_ray.train.plan import validation_reports
from sed_ray.train.schedules import beta_for, lr_at
from sed_ray.train.stages import Position, schedule_for
from sed_ray.train.step import StageRunner
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


def batches_to_skip(position: TrainPosition, world_size: int) -> int:
    """Per-rank batches of the current epoch to skip on resume. A run resumed on another number of workers
    (an elastic resize, a relaunch with other scaling) skips the epoch's batches the old group consumed,
    divided over the new one."""
    if not position.world_size or position.world_size == world_size:
        return position.batches_in_epoch
    return position.batches_in_epoch * position.world_size // world_size


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
        with torch.no_grad():
            out = model(batch.pcm_BT, batch.lengths_B, batch.targets[task], task,
                        descriptor_ids_BD=batch.descriptor_ids_BD, target_scored_BS=batch.scored.get(task))
        totals[0] += 1
        totals[1] += float(out.ce) * float(out.target_tokens)
        totals[2] += float(out.target_tokens)
        for i, branch in enumerate(spec.inputs):
            totals[3 + i] += float(out.kl[branch])
        if "emotion" in spec.fields:
            predicted = model.predict(batch.pcm_BT, batch.lengths_B, task,
                                      max_new_tokens=config.validation.max_new_tokens)
            for truth, row in zip(batch.meta["emotion"], predicted):
                if truth in labels:
                    confusion[labels.index(truth), labels.index(row["emotion"])] += 1
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


class WorkerRun:
    """One worker's run of the whole stage schedule. `draft_bank`: the training descriptors the descriptor
    draft chooses from (`data.reads.descriptor_bank`), when the model has a draft; a resumed run gets the
    bank back from its checkpoint."""

    def __init__(self, config: TrainConfig, context: TrainContext, draft_bank: list[str] | None) -> None:
        self.config, self.context, self.draft_bank = config, context, draft_bank or []
        self.schedule = schedule_for(config)
        self.total = self.schedule.total_steps
        self.boundaries = set(self.schedule.boundaries())
        self.betas = beta_for(config, self.total)
        self.tracker = Tracker(config, context.rank)
        self.position, self.runner, self.runner_index, self.window = TrainPosition(), None, -1, []
        self.saved_weights: dict = {}
        self.held: dict = {}  # fp32 weights of the trainable groups this stage freezes (see enter_stage)
        self.validation: dict = {}  # this step's validation metrics, until reported
        self.validation_steps = {step for step, _ in validation_reports(config)}  # what a Tune search expects
        self.optimizer_tensors: dict = {}

    def build(self) -> None:
        """The model with identical initial weights on every rank, and the draft's bank."""
        run_dir, rank = self.config.run_dir, self.context.rank
        (run_dir / "workers").mkdir(parents=True, exist_ok=True)
        (run_dir / "workers" / f"rank{rank}.pid").write_text(str(os.getpid()))  # ops: which process is which rank
        torch.manual_seed(self.config.seed)
        self.model = SpeechEmotionLLM.from_config(self.config.model.model_config()).to(self.context.device)
        apply_memory_settings(self.model, self.config)
        if self.model.draft is not None:
            held = self.model.set_descriptor_bank(self.draft_bank)
            self.tracker.console(f"[train] descriptor draft: {held} training descriptors in its bank"
                                 + ("" if held else " (none: the draft will only learn, not fill the slot)"))

    def resume(self) -> None:
        """From the context's latest checkpoint, if any: weights now, optimiser state when its stage starts."""
        folder = self.context.latest_checkpoint()
        if folder is not None:
            self.saved_weights = restore_model(self.model, folder)
            self.position = read_position(folder)
            self.optimizer_tensors = read_optimizer_state(folder)
            p = self.position
            self.tracker.log({"event": "resumed", "step": p.step, "stage": p.stage, "round": p.round, "beta": p.beta,
                              "epoch": p.epoch, "batches_in_epoch": p.batches_in_epoch,
                              "world_size_before": p.world_size, "world_size": self.context.world_size})
            self.tracker.console(f"[train] resumed at step {p.step} ({p.stage}, round {p.round}, beta {p.beta:.3g})")
        torch.manual_seed(self.config.seed + 1000 * self.context.rank + self.position.step)  # noise per rank
        self.stream = EpochStream(self.context, self.config.data.train_split, self.position.epoch,
                                  batches_to_skip(self.position, self.context.world_size))

    def enter_stage(self, where: Position) -> None:
        """A fresh optimiser (and engine) for the stage `where` falls in; mid-stage after a resume, with the
        checkpoint's optimiser state."""
        if where.index == self.runner_index:
            return
        # Full-precision weights of every trained group: the finished stage's from its masters, the groups it
        # froze from `held`; after a resume, the checkpoint's. Under DeepSpeed's bf16 mode the module holds
        # only bf16 copies, so a branch frozen for a stage would otherwise come back (and be saved) rounded.
        carried = dict(self.saved_weights)
        if self.runner is not None:
            carried = {**self.runner.model_state(), **self.held}
            self.runner.close()
        self.runner = StageRunner(self.model, where.stage, self.config, self.context.device)
        self.runner.set_master_weights(carried)
        frozen = {n for params in self.model.parameter_groups().values() for n, _ in params} - set(self.runner.names)
        self.held = {name: weight.detach().clone() for name, weight in carried.items() if name in frozen}
        if self.optimizer_tensors and where.index == self.position.stage_index and where.step_in_stage > 0:
            self.runner.restore(self.saved_weights, self.optimizer_tensors, self.position.optimizer_step)
        self.optimizer_tensors, self.saved_weights = {}, {}
        self.runner_index = where.index
        self.tracker.console(f"[train] {where.stage.name} (round {where.round + 1}/{self.schedule.rounds}): task "
                             f"{where.stage.task}, trains {', '.join(where.stage.trains)}, {where.stage.steps} steps")

    def step(self, where: Position) -> None:
        """One optimiser step; the timer includes waiting for the batches, so data stalls show in tokens/s."""
        optim = self.config.optim
        lr = lr_at(where.stage, where.step_in_stage, optim.warmup_steps, optim.decay, optim.min_lr_ratio)
        self.runner.set_lr(lr)
        beta = self.betas(self.position.step)
        started = time.perf_counter()
        batches = [self.stream.next() for _ in range(optim.grad_accum)]
        metrics = self.runner.train_step(batches, where.stage.task, where.stage.beta_weights(beta),
                                         where.stage.draft_teacher_share(where.step_in_stage))
        self.window.append((metrics, time.perf_counter() - started, batches))
        p = self.position
        p.step += 1
        p.stage_index, p.stage, p.round = where.index, where.stage.name, where.round
        p.epoch, p.batches_in_epoch, p.beta, p.lr = self.stream.epoch, self.stream.batches_in_epoch, beta, lr
        p.world_size = self.context.world_size

    def log(self, where: Position) -> None:
        step = self.position.step
        if not (step % self.config.logging.every_steps == 0 or step in self.boundaries or step == self.total):
            return
        record = summarise(self.window, self.context.world_size, peak_flops(), self.llm_parameters)
        p = self.position
        record |= {"step": step, "stage": where.stage.name, "round": where.round, "beta": p.beta, "lr": p.lr,
                   "epoch": p.epoch}
        self.tracker.log(record)
        draft = f"draft bow {record['draft_bow']:.3f} " if "draft_bow" in record else ""
        self.tracker.console(f"[train] {where.stage.name} r{where.round + 1} step {step}/{self.total} "
                             f"loss {record['loss']:.3f} ce {record['ce']:.3f} {draft}beta {p.beta:.2g} lr {p.lr:.2g} | "
                             f"{record['tokens_per_s']:.0f} tok/s {record['audio_s_per_s']:.1f} audio-s/s "
                             f"pad {record['padding_fraction']:.2f}")
        self.window = []

    def validate(self, where: Position) -> None:
        step = self.position.step
        if step in self.validation_steps:
            self.validation = validate(self.model, self.context, where.stage.task, self.config)
            if self.validation:
                self.tracker.log({"step": step, "stage": where.stage.name, **self.validation})
                self.tracker.console("[valid] " + " ".join(f"{k} {v:.3f}" for k, v in self.validation.items()))

    def report(self) -> None:
        """One report per step that validated or checkpoints: the validation's metrics (what a Tune search
        and its early stopping read, `train.plan.validation_reports`) and the checkpoint, if due. Every
        rank gathers (collectives) and reports (a barrier under Ray Train); rank 0 writes."""
        p = self.position
        due = p.step % self.config.checkpoint.every_steps == 0 or p.step in self.boundaries or p.step == self.total
        if not (due or self.validation):
            return
        folder = None
        if due:
            model_state = {**self.runner.model_state(), **self.held}  # this stage's masters, the frozen groups' fp32
            optimizer_state, p.optimizer_step = self.runner.optimizer_state()
            if self.context.rank == 0:
                run_dir = self.config.run_dir  # staged beside the run when local (same disk), else in /tmp
                folder = write_checkpoint(model_state, self.model.config.to_dict(), optimizer_state, p,
                                          self.config.to_dict(),
                                          staging_root=None if is_remote(run_dir) else run_dir / "workers")
                self.tracker.flush()  # object storage: the metrics up to this checkpoint are there with it
        self.context.report({"step": p.step, "stage": p.stage, "beta": p.beta, **self.validation}, folder)
        self.validation = {}

    def run(self) -> TrainPosition:
        self.build()
        self.resume()
        embedding = self.model.llm.get_input_embeddings().weight.numel()  # a lookup, not a matmul
        self.llm_parameters = count_parameters(self.model.llm)["total"] - embedding
        while self.position.step < self.total:
            where = self.schedule.locate(self.position.step)
            self.enter_stage(where)
            self.step(where)
            self.log(where)
            self.validate(where)
            self.report()
        if self.runner is not None:
            self.runner.close()
        self.tracker.close()
        return self.position


def train_worker(config: TrainConfig, context: TrainContext, draft_bank: list[str] | None = None) -> TrainPosition:
    """Run (or resume) the whole stage schedule on this worker; returns the final position."""
    return WorkerRun(config, context, draft_bank).run()


def summarise(window, world_size: int, flops_peak: float | None, llm_params: int) -> dict:
    """Averages over the logging window; throughput scaled to all workers (rank 0's rate x world size).
    The one place the step's device-side figures are read back."""
    seconds = sum(e for _, e, _ in window) or 1e-9
    metrics = [{k: float(v) for k, v in m.items()} for m, _, _ in window]
    keys = {k for m in metrics for k in m if k not in ("target_tokens", "sequence_tokens")}
    record = {k: sum(m.get(k, 0.0) for m in metrics) / len(metrics) for k in keys}
    tokens = sum(m["sequence_tokens"] for m in metrics)
    audio = sum(b.audio_seconds for _, _, bs in window for b in bs)
    padded = [b.padding_fraction for _, _, bs in window for b in bs]
    record |= {"tokens_per_s": world_size * tokens / seconds, "audio_s_per_s": world_size * audio / seconds,
               "padding_fraction": sum(padded) / len(padded), "step_time_s": seconds / len(window)}
    if flops_peak:  # LoRA on a frozen LLM: ~4 N FLOPs per token (forward + input-gradient backward), N
        record["mfu"] = (tokens / seconds) * 4 * llm_params / flops_peak  # without the input embedding
    return record
