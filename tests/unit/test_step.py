"""The stage runner: learning-rate schedule, and optimiser state that survives a checkpoint exactly
(plain PyTorch and DeepSpeed ZeRO-2), so a resumed run takes the same next step."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist

from sed_ray.model.speech_llm import SpeechEmotionLLM
from sed_ray.train.stages import preset_stage
from sed_ray.config import load_config
from sed_ray.train.schedules import lr_at
from sed_ray.train.step import StageRunner


def test_lr_warmup_then_decay_to_floor():
    stage = preset_stage("stage1", steps=100, lr=1e-3)
    lrs = [lr_at(stage, s, warmup=10, decay="cosine", min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(stage, 50, 0, "constant", 0.1) == 1e-3


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group and the rank variables, as Ray Train sets them up, so DeepSpeed can run here."""
    variables = {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _runner(config, engine: str, preset: str = "stage2"):
    """engine: "plain", or "zeroN-fp32" / "zeroN-bf16" (DeepSpeed ZeRO stage N in that precision)."""
    torch.manual_seed(0)
    model = SpeechEmotionLLM.from_config(config)
    settings = ["deepspeed.enabled=false"]
    if engine != "plain":
        zero, precision = engine[4:].split("-")
        settings = ["deepspeed.enabled=true", f"deepspeed.zero_stage={zero}", f"deepspeed.precision={precision}"]
    run = load_config(None, ["optim.weight_decay=0.1", "optim.betas=[0.9, 0.99]", "optim.grad_clip=1.0", *settings])
    return StageRunner(model, preset_stage(preset, steps=10, lr=3e-3), run, torch.device("cpu"))


ENGINES = ["plain", "zero2-fp32", "zero0-bf16", "zero1-bf16", "zero2-bf16"]


@pytest.mark.parametrize("engine", ENGINES)
def test_optimizer_state_round_trip_gives_the_same_next_step(tiny_model_config, tiny_batch, process_group, engine):
    """For every engine the configs use: three steps, then the checkpoint state (fp32 master weights and
    Adam moments, full size) put into a fresh engine takes the very same next step. In bf16 the module
    holds bf16 weights while the checkpoint holds their fp32 masters."""
    deepspeed = engine
    batch, _ = tiny_batch
    host = batch
    beta = {"content": 0.0, "descriptor": 1e-3}
    first = _runner(tiny_model_config, deepspeed)
    for _ in range(3):
        torch.manual_seed(1)
        first.train_step([host], "joint", beta)
    weights = {k: v.clone() for k, v in first.model_state().items()}
    moments, step = first.optimizer_state()
    # DeepSpeed's unfused bf16 optimiser (ZeRO 0) creates Adam's state with one zero-gradient step at start
    assert step == 3 + (engine == "zero0-bf16") and moments and all(v.abs().sum() > 0 for v in moments.values())
    assert all(v.dtype == torch.float32 for v in moments.values())
    trained = {n for n in first.names}
    assert all(weights[n].dtype == torch.float32 and weights[n].numel() > 0 for n in trained)
    if engine.endswith("bf16"):  # DeepSpeed's bf16 mode: bf16 module weights, fp32 masters in the checkpoint
        assert all(p.dtype == torch.bfloat16 for p in first.params)
        assert any(not torch.equal(weights[n], weights[n].bfloat16().float()) for n in trained)

    second = _runner(tiny_model_config, deepspeed)
    with torch.no_grad():  # restore weights as a resumed worker does
        for name, param in second.model.trainable_state_dict().items():
            param.copy_(weights[name])
    second.restore(weights, moments, step)
    restored, restored_step = second.optimizer_state()
    assert restored_step == step
    assert all(torch.equal(restored[k], moments[k]) for k in moments)

    for runner in (first, second):
        torch.manual_seed(1)
        runner.train_step([host], "joint", beta)
    a, b = first.model_state(), second.model_state()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    first.close()
    second.close()


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_bf16_deepspeed_trains_both_stages_and_carries_fp32_weights_across_them(tiny_model_config, tiny_batch,
                                                                                  process_group, zero):
    """DeepSpeed's bf16 mode casts every parameter of the module, the trainable blocks, adapters, LoRA and
    draft too; the model must feed each block its own dtype (before the fix: `mat1 and mat2 must have the
    same dtype`), keep the KL and the losses in fp32, and a weight both stages train (LoRA) must enter
    stage 2 with its fp32 master value, not its bf16 rounding."""
    batch, _ = tiny_batch
    beta = {"content": 1e-3, "descriptor": 1e-3}
    first = _runner(dataclasses.replace(tiny_model_config, draft_bank_size=8), f"zero{zero}-bf16", preset="stage1")
    for _ in range(2):
        metrics = first.train_step([batch], "asr", beta)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    carried = first.model_state()
    lora = [n for n in first.names if "lora_" in n]
    first.close()
    second = StageRunner(first.model, preset_stage("stage2", steps=10, lr=3e-3), load_config(None, [
        f"deepspeed.zero_stage={zero}", "deepspeed.precision=bf16"]), torch.device("cpu"))
    second.set_master_weights(carried)
    masters = second.model_state()
    assert all(torch.equal(masters[n], carried[n]) for n in lora)
    metrics = second.train_step([batch], "joint", beta, draft_teacher_share=0.5)
    assert metrics["kl_descriptor"] > 0 and torch.isfinite(torch.tensor(metrics["loss"]))
    second.close()
