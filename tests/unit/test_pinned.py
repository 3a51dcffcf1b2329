"""Regression pins: the losses of a seeded single-process tiny run, and the exact tokens of the prompt.

Both were recorded from the code before the one-way-flow refactor (commit c0a1465), through the same
fixture chain (synthetic corpus seed 7 -> shards of 24 rows -> tiny base seed 0), and the refactored
code reproduces them. A change in the math (a loss weight, a KL normalisation, a schedule, the order in
which rows are assembled) or in the prompt format moves them and fails here, loudly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sed_ray.model.prompt import IGNORE, TASKS, PromptBuilder

ROOT = Path(__file__).resolve().parents[2]

# (step, {metric: value}) as metrics.jsonl logs them: training steps, then validation at each stage end.
PINNED = [
    (1, {"loss": 64.19125366210938, "ce": 6.510329246520996, "kl_content": 57.68092727661133}),
    (2, {"loss": 18.273090362548828, "ce": 5.93686580657959, "kl_content": 57.259681701660156}),
    (3, {"loss": 7.993717670440674, "ce": 5.35362434387207, "kl_content": 56.879085540771484}),
    (3, {"val_ce": 5.887556552886963, "val_kl_content": 56.68128204345703}),
    (4, {"loss": 5.671578884124756, "ce": 4.7622880935668945, "kl_content": 56.67333221435547,
         "kl_descriptor": 57.80648422241211, "draft_bow": 6.624519348144531}),
    (5, {"loss": 5.290072917938232, "ce": 4.86514949798584, "kl_content": 56.64027404785156,
         "kl_descriptor": 57.524993896484375, "draft_bow": 6.019795894622803}),
    (6, {"loss": 4.781315803527832, "ce": 4.47982931137085, "kl_content": 56.669464111328125,
         "kl_descriptor": 57.28495407104492, "draft_bow": 5.497939109802246}),
    (6, {"val_ce": 4.813040256500244, "val_kl_content": 56.68128204345703, "val_kl_descriptor": 57.166988372802734,
         "val_ua": 0.0}),
]
# Why not exact: CPU kernels (oneDNN, OpenBLAS) choose their reduction order by instruction set and
# thread count, so another machine computes each matmul a few ulps apart, and six Adam steps carry
# that forward. Here two runs are bit-identical; 1e-3 relative is ~1000x that drift and far below
# what any change of the math does (doubling beta moves step 2's loss by ~50 %).
RELATIVE = 1e-3


def test_a_seeded_single_process_run_reproduces_its_pinned_losses(synth_shards, tmp_path, monkeypatch):
    from sed_ray.config import load_config
    from sed_ray.files import read_jsonl
    from sed_ray.train.launcher import run_local

    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = load_config(ROOT / "jobs" / "configs" / "tiny.yaml", [
        f"data.shards={synth_shards}", f"storage={tmp_path}", "name=pinned", "model.tiny_encoder_steps=4",
        "model.tiny_lm_steps=4", "model.draft_bank_size=64", "data.batch_seconds=16",
        "schedule.stages=[{preset: stage1, steps: 3, lr: 0.003}, {preset: stage2, steps: 3, lr: 0.003}]",
        "optim.warmup_steps=1", "logging.every_steps=1", "logging.wandb=false", "validation.max_batches=1",
        "checkpoint.every_steps=100"])
    run_local(config)
    logged = [(r["step"], r) for r in read_jsonl(tmp_path / "pinned" / "metrics.jsonl") if "loss" in r or "val_ce" in r]
    assert [step for step, _ in logged] == [step for step, _ in PINNED]
    for (step, record), (_, pinned) in zip(logged, PINNED):
        for key, value in pinned.items():
            assert record[key] == pytest.approx(value, rel=RELATIVE, abs=1e-6), (step, key)


VALUES = {"transcript": "the cat sat  on the mat", "descriptor": "A low, slow voice with little energy.", "emotion": "sad"}


def test_the_prompt_and_its_targets_tokenise_exactly_as_before(tiny_model_config):
    """The golden file holds, per task, the prompt's pieces, the target ids and each token's field, as the
    code before the refactor produced them with the fixture's tiny tokenizer; the data path's collate
    step and the model's assembly must give the very same tokens."""
    import torch
    from transformers import AutoTokenizer

    from sed_ray.data.collate import token_lists
    from sed_ray.model.speech_llm import SpeechEmotionLLM

    golden = json.loads((ROOT / "tests" / "golden" / "prompt_tokens.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_config.llm)
    builder = PromptBuilder(tokenizer, tiny_model_config.system_prompt)
    collated = token_lists([VALUES], PromptBuilder(tokenizer, ""), tuple(TASKS), fields=True)
    torch.manual_seed(0)
    model = SpeechEmotionLLM.from_config(tiny_model_config).eval()
    for name, task in TASKS.items():
        expected = golden[name]
        assert [[kind, list(p) if kind == "ids" else p] for kind, p in builder.pieces(name)] == expected["pieces"]
        assert collated[f"targets.{name}"][0] == expected["target"]
        assert [task.fields[i] for i in collated[f"fields.{name}"][0]] == expected["fields"]
        # the assembled sequence: prompt ids and stream places in order, then the target, scored
        streams = {s: (torch.zeros(1, 3, model.llm.config.hidden_size), torch.tensor([[True, True, False]]))
                   for s in task.inputs}
        _, attention, _, labels = model._assemble(task, streams, torch.tensor([expected["target"]]))
        prompt = sum(len(p) if kind == "ids" else 2 for kind, p in expected["pieces"])
        assert int(attention.sum()) == prompt + len(expected["target"])
        assert labels[0, -len(expected["target"]):].tolist() == expected["target"]
        assert (labels[0, :-len(expected["target"])] == IGNORE).all()
