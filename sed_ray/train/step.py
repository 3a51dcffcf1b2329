"""One stage's optimiser and one optimisation step, with DeepSpeed ZeRO or plain PyTorch.

A fresh optimiser (and DeepSpeed engine) is built per stage: each stage trains a different set of
parameter groups, and only those are handed to the optimiser, so the frozen ones cannot move. The
optimiser builder checks that its parameters are exactly the stage's declared groups.
Runs without Ray; DeepSpeed is imported only when enabled.
"""

from __future__ import annotations

import torch

from sed_ray.config import TrainConfig
from sed_ray.train.stages import Stage


# deepspeed.precision -> what the step runs in; "auto" is resolved per device by `resolve_precision`
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def deepspeed_config(zero_stage: int, precision: str, grad_accum: int, grad_clip: float, micro_batch: int = 1) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,  # batches are pre-formed: one per micro-step
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,  # our own logging, not DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if grad_clip > 0:
        config["gradient_clipping"] = grad_clip
    return config


class StageRunner:
    """Owns the optimiser (or DeepSpeed engine) for one stage of the schedule."""

    def __init__(self, model, stage: Stage, config: TrainConfig, device: torch.device) -> None:
        """The optimiser for `stage` from the config's `optim:` section, wrapped by DeepSpeed as its
        `deepspeed:` section says (precision "auto" resolved for `device`)."""
        self.model, self.stage, self.device = model, stage, device
        optim = config.optim
        self.grad_clip, self.grad_accum = optim.grad_clip, optim.grad_accum
        model.set_trainable(stage.trains)
        groups = model.parameter_groups()
        self.names = [n for g in stage.trains for n, _ in groups[g]]
        params = [p for g in stage.trains for _, p in groups[g]]
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in params}, "optimiser groups must cover exactly the stage's trainable set"
        self.params = params
        optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
        self.engine = None
        if config.deepspeed.enabled:
            import deepspeed as ds

            precision = resolve_precision(config.deepspeed.precision, device)
            settings = deepspeed_config(config.deepspeed.zero_stage, precision, optim.grad_accum, optim.grad_clip)
            self.engine, self.optimizer, _, _ = ds.initialize(model=model, optimizer=optimizer,
                                                               model_parameters=params, config=settings,
                                                               dist_init_required=False)
        else:
            self.optimizer = optimizer
        # Without ZeRO partitioning, DeepSpeed's bf16 mode keeps the fp32 master copies in the wrapping
        # optimiser's fp32_groups (the torch optimiser steps those): find a parameter's master by position.
        self._masters = {id(p): m for low, high in zip(getattr(self.optimizer, "fp16_groups", []),
                                                        getattr(self.optimizer, "fp32_groups", []))
                         for p, m in zip(low, high)}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batches: list, task: str, beta: dict[str, float], draft_teacher_share: float = 0.0) -> dict:
        """One optimiser step over `grad_accum` micro-batches (collated `data.collate.Batch`es on the host).
        Returns the step's figures as 0-dim tensors, not read back: the host reads them when it logs."""
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        target_tokens = sequence_tokens = 0
        for batch in batches:
            if task not in batch.targets:
                raise ValueError(f"the batches carry targets for {sorted(batch.targets)}, not {task!r}: the stream's "
                                 "Collate must list every task of the stage schedule")
            batch = batch.to(self.device)
            inputs = (batch.pcm_BT, batch.lengths_B, batch.targets[task], task, beta, draft_teacher_share,
                      batch.descriptor_ids_BD, batch.scored.get(task))
            if self.engine is not None:
                out = self.engine(*inputs)
                self.engine.backward(out.loss)
                self.engine.step()  # DeepSpeed steps the optimiser only at accumulation boundaries
            else:
                out = self.model(*inputs)
                (out.loss / self.grad_accum).backward()
            for key, value in out.parts().items():
                sums[key] = sums.get(key, 0.0) + value.float() / len(batches)
            target_tokens += out.target_tokens
            sequence_tokens += out.sequence_tokens
        if self.engine is None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip) if self.grad_clip > 0 else None
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if norm is not None:
                sums["grad_norm"] = norm.detach()
        else:
            norm = self.engine.get_global_grad_norm()
            if norm is not None:
                sums["grad_norm"] = torch.as_tensor(norm)
        return {**sums, "target_tokens": target_tokens, "sequence_tokens": sequence_tokens}

    # --- checkpoint state: full-size tensors, identical on every rank, world-size independent -------
    def _full(self, param, key: str | None):
        """The full fp32 weight (key None) or Adam moment `key` of `param`."""
        if self._partitioned():
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

            return safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
        master = self._masters.get(id(param), param)  # the module holds it, unless DeepSpeed's bf16 copy
        if key is None:
            return master.detach()
        return self._base_optimizer().state.get(master, {}).get(key)

    def model_state(self) -> dict[str, torch.Tensor]:
        """All trainable-group weights; this stage's from the optimiser's fp32 master copy.
        A collective under DeepSpeed: every rank must call it."""
        state = {n: p.detach() for n, p in self.model.trainable_state_dict().items()}
        for name, param in zip(self.names, self.params):
            full = self._full(param, None)
            if full is not None:
                state[name] = full
        return state

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], int]:
        """(Adam moments by parameter name, optimiser step count). A collective under DeepSpeed."""
        state = {}
        for name, param in zip(self.names, self.params):
            for key in ("exp_avg", "exp_avg_sq"):
                value = self._full(param, key)
                if value is not None:
                    state[f"{key}/{name}"] = value
        return state, self._optimizer_step()

    def _base_optimizer(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)  # DeepSpeed wraps the torch optimiser

    def _optimizer_step(self) -> int:
        for state in self._base_optimizer().state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def restore(self, weights: dict[str, torch.Tensor], moments: dict[str, torch.Tensor], step: int) -> None:
        """Resume mid-stage: the optimiser's fp32 master weights and Adam's moments and step count."""
        self.set_master_weights(weights)
        self.load_optimizer_state(moments, step)

    def set_master_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put full-precision weights (by name) into this stage's master copies, where they differ from the
        module's (DeepSpeed's bf16 mode): after a resume, and when a stage starts, so that a weight two
        stages train (LoRA) carries its fp32 value across the boundary instead of its bf16 rounding."""
        if self._partitioned():
            from deepspeed.utils import safe_set_full_fp32_param

            for name, param in zip(self.names, self.params):
                if name in weights:
                    safe_set_full_fp32_param(param, weights[name].to(self.device, torch.float32))
            return
        with torch.no_grad():
            for name, param in zip(self.names, self.params):
                master = self._masters.get(id(param))
                if master is not None and name in weights:
                    master.copy_(weights[name].to(master.device, master.dtype))
                    param.copy_(master)

    def _partitioned(self) -> bool:
        return self.engine is not None and any(hasattr(p, "_hp_mapping") or hasattr(p, "ds_id") for p in self.params)

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Put saved moments back. Adam's state must exist first: a zero-lr step with zero gradients
        creates it without moving any weight."""
        if not tensors:
            return
        partitioned = self._partitioned()
        if not partitioned:
            for name, param in zip(self.names, self.params):
                master = self._masters.get(id(param), param)
                if f"exp_avg/{name}" in tensors:
                    self._base_optimizer().state[master] = {
                        "step": torch.tensor(float(step)),
                        "exp_avg": tensors[f"exp_avg/{name}"].to(master.device, master.dtype).clone(),
                        "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(master.device, master.dtype).clone()}
            return
        from deepspeed.utils import safe_set_full_optimizer_state

        self._materialize_optimizer_state()
        for name, param in zip(self.names, self.params):
            for key in ("exp_avg", "exp_avg_sq"):
                if f"{key}/{name}" in tensors:
                    safe_set_full_optimizer_state(param, tensors[f"{key}/{name}"].to(self.device), key)
        for state in self._base_optimizer().state.values():
            if "step" in state:
                state["step"] = torch.tensor(float(step)) if torch.is_tensor(state["step"]) else step

    def _materialize_optimizer_state(self) -> None:
        """Adam creates its moments at its first step. Take one step with zero gradients at lr 0 (Adam's
        moments stay 0, weight decay scales by 1 - 0: no weight moves) so they exist to be overwritten."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.set_lr(0.0)
        for _ in range(self.grad_accum):  # DeepSpeed steps only at the accumulation boundary
            zero = sum(p.float().sum() for p in self.params) * 0.0
            self.engine.backward(zero)
            self.engine.step()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    def close(self) -> None:
        """Release the engine so the next stage's can wrap the same module."""
        if self.engine is not None:
            self.engine.destroy()
        self.engine = None
