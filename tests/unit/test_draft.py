"""The descriptor draft: CTC decoding, straight-through tokens, teacher rows, and the model around it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sed_ray.model.draft import DescriptorDraft, ctc_draft_loss, draft_tokens, greedy_ids, pooled_statistics, valid_first
from sed_ray.model.prompt import get_task
from sed_ray.model.speech_llm import SpeechEmotionLLM
from sed_ray.model.weights import load_model, save_trainable
from sed_ray.train.stages import STAGE_PRESETS, Stage

BLANK = 0


def one_hot_logits(ids: list[list[int]], vocab: int = 6) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float() * 10.0


def test_greedy_decoding_drops_blanks_and_repeats_but_keeps_a_repeat_across_a_blank():
    ids, keep = greedy_ids(one_hot_logits([[3, 3, 0, 3, 4, 4, 0, 0, 5]]), BLANK)
    assert ids[keep].tolist() == [3, 3, 4, 5]


def test_pooled_statistics_ignore_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert pooled_statistics(x, mask)[0].tolist() == pytest.approx([2.0, 1.0, 0.02])  # mean, std, frames / 100


def test_draft_tokens_are_hard_embeddings_with_a_gradient_into_the_logits():
    embedding = torch.randn(6, 4)
    logits = one_hot_logits([[2, 2, 0, 5]]).requires_grad_(True)
    tokens, keep = draft_tokens(logits, embedding, BLANK)
    assert keep.tolist() == [[True, False, False, True]]
    assert torch.allclose(tokens[0, 0], embedding[2]) and torch.allclose(tokens[0, 3], embedding[5])
    (tokens * torch.randn_like(tokens)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through


def test_teacher_rows_get_the_reference_ids_truncated_to_the_positions():
    embedding = torch.randn(6, 4)
    logits = one_hot_logits([[1, 2, 3], [1, 2, 3], [4, 4, 4]])
    tokens, keep = draft_tokens(logits, embedding, BLANK, [None, [5, 4, 3, 2, 1], []])
    assert keep.tolist() == [[True, True, True], [True, True, True], [False, False, False]]
    assert torch.allclose(tokens[0, 1], embedding[2])  # row 0 keeps its hypothesis
    assert torch.allclose(tokens[1], embedding[[5, 4, 3]])  # row 1: the reference, cut to 3 positions
    assert not tokens[2].any()


def test_valid_tokens_move_to_the_front_in_order():
    tokens = torch.arange(5.0).view(1, 5, 1)
    valid = torch.tensor([[False, True, False, True, True]])
    moved, moved_valid = valid_first(tokens, valid)
    assert moved[0, :3, 0].tolist() == [1.0, 3.0, 4.0] and moved_valid.tolist() == [[True, True, True, False, False]]


def test_ctc_loss_skips_rows_without_a_descriptor_and_learns_to_write_one():
    torch.manual_seed(0)
    embedding = torch.randn(8, 16)
    draft = DescriptorDraft(in_dim=3, hidden=32, positions=6, llm_width=16)
    x = torch.randn(3, 10, 3)
    mask = torch.ones(3, 10, dtype=torch.bool)
    targets = [[3, 4, 4], [], [5, 6]]
    empty = ctc_draft_loss(draft(x, mask, embedding), [[], [], []], BLANK)
    assert empty.item() == 0.0 and empty.requires_grad  # nothing to learn, still a graph
    optimizer = torch.optim.Adam(draft.parameters(), lr=1e-2)
    draft.train()
    for _ in range(150):
        loss = ctc_draft_loss(draft(x, mask, embedding), targets, BLANK)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    draft.eval()
    ids, keep = greedy_ids(draft(x, mask, embedding), BLANK)
    assert ids[0][keep[0]].tolist() == [3, 4, 4] and ids[2][keep[2]].tolist() == [5, 6]


def test_running_statistics_update_in_training_only_and_a_single_utterance_uses_them():
    draft = DescriptorDraft(in_dim=2, hidden=8, positions=3, llm_width=4)
    embedding = torch.randn(5, 4)
    x, mask = torch.randn(4, 7, 2) + 3.0, torch.ones(4, 7, dtype=torch.bool)
    draft.eval()
    draft(x, mask, embedding)
    assert torch.equal(draft.running_mean, torch.zeros(5))
    draft.train()
    draft(x, mask, embedding)
    assert draft.running_mean.abs().sum() > 0
    before = draft.running_mean.clone()
    draft(x[:1], mask[:1], embedding)  # one utterance has no batch spread: no error, no update
    assert torch.equal(draft.running_mean, before)


def test_teacher_share_falls_from_one_to_zero_over_the_configured_fraction():
    stage = Stage("stage2", "joint", ("lora",), steps=100, lr=1e-3, draft_teacher_until=0.5)
    assert [stage.draft_teacher_share(s) for s in (0, 25, 50, 99)] == [1.0, 0.5, 0.0, 0.0]
    assert Stage("s", "joint", ("lora",), 10, draft_teacher_until=0.0).draft_teacher_share(0) == 0.0
    assert "draft_teacher_until" in " ".join(Stage("s", "joint", ("lora",), 10, draft_teacher_until=2).validate())


# --- the model with a draft -------------------------------------------------------------------------
@pytest.fixture()
def draft_model(tiny_model_config):
    torch.manual_seed(0)
    return SpeechEmotionLLM.from_config(dataclasses.replace(tiny_model_config, draft_tokens=40))


def test_stage2_trains_the_draft_and_its_ctc_loss_is_reported(draft_model, tiny_batch):
    batch, targets = tiny_batch
    draft_model.set_trainable(STAGE_PRESETS["stage2"]["trains"])
    draft_model.train()
    out = draft_model(batch.pcm_BT, batch.lengths_B, targets, "joint", beta={"descriptor": 1e-3})
    assert out.draft_ctc is not None and "draft_ctc" in out.parts()
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in draft_model.parameter_groups()["descriptor_draft"])


def test_the_no_descriptor_ablation_never_sees_the_draft(draft_model, tiny_batch):
    batch, targets = tiny_batch
    draft_model.set_trainable(STAGE_PRESETS["stage2"]["trains"])
    out = draft_model(batch.pcm_BT, batch.lengths_B, targets, "joint_no_descriptor", draft_teacher_share=1.0)
    out.loss.backward()
    assert out.draft_ctc is None
    assert all(p.grad is None for _, p in draft_model.parameter_groups()["descriptor_draft"])
    assert all(r["descriptor_draft"] is None
               for r in draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint_no_descriptor", max_new_tokens=4))


def test_teacher_forcing_puts_the_reference_descriptor_in_the_slot(draft_model, tiny_batch):
    batch, targets = tiny_batch
    draft_model.eval()
    hidden, mask = draft_model.encoder(batch.pcm_BT, batch.lengths_B)
    references = [draft_model.descriptor_ids(t) for t in targets]
    streams, _, _ = draft_model.encode_for(get_task("joint"), hidden, mask, references)
    tokens, valid = streams["descriptor"]
    embedding = draft_model.llm.get_input_embeddings().weight
    for row, ids in enumerate(references):
        assert torch.allclose(tokens[row, :len(ids)], embedding[ids].to(tokens.dtype))
        frames = int(draft_model.encode_hidden(hidden, mask, ("descriptor",))[0]["descriptor"][1][row].sum())
        assert int(valid[row].sum()) == len(ids) + frames  # the reference, then the frame pseudo-tokens


def test_save_load_round_trip_keeps_the_draft_and_its_statistics(draft_model, tiny_batch, tmp_path):
    batch, targets = tiny_batch
    draft_model.train()
    draft_model(batch.pcm_BT, batch.lengths_B, targets, "joint")  # moves the running statistics
    with torch.no_grad():
        for _, p in draft_model.parameter_groups()["descriptor_draft"]:
            p.add_(torch.randn_like(p) * 0.05)
    draft_model.eval()
    save_trainable(draft_model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    assert torch.equal(loaded.draft.running_mean, draft_model.draft.running_mean)
    pa = draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=6)
    pb = loaded.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=6)
    assert [r["descriptor_draft"] for r in pa] == [r["descriptor_draft"] for r in pb]
    assert [r["posterior"] for r in pa] == [r["posterior"] for r in pb]
