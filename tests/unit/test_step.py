"""The stage runner: learning-rate schedule, and optimiser state that survives a checkpoint exactly
(plain PyTorch and DeepSpeed ZeRO-2), so a resumed run takes the same next step."""

from __future__ import annotations

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


def _runner(config, deepspeed: bool):
    torch.manual_seed(0)
    model = SpeechEmotionLLM.from_config(config)
    run = load_config(None, ["optim.weight_decay=0.1", "optim.betas=[0.9, 0.99]", "optim.grad_clip=1.0",
                             f"deepspeed.enabled={str(deepspeed).lower()}", "deepspeed.zero_stage=2",
                             "deepspeed.precision=fp32"])
    return StageRunner(model, preset_stage("stage2", steps=10, lr=3e-3), run, torch.device("cpu"))


@pytest.mark.parametrize("deepspeed", [False, True])
def test_optimizer_state_round_trip_gives_the_same_next_step(tiny_model_config, tiny_batch, process_group, deepspeed):
    batch, _ = tiny_batch
    host = batch
    beta = {"content": 0.0, "descriptor": 1e-3}
    first = _runner(tiny_model_config, deepspeed)
    for _ in range(3):
        torch.manual_seed(1)
        first.train_step([host], "joint", beta)
    weights = {k: v.clone() for k, v in first.model_state().items()}
    moments, step = first.optimizer_state()
    assert step == 3 and moments and all(v.abs().sum() > 0 for v in moments.values())

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
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    first.close()
    second.close()
