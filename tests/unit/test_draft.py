"""The descriptor draft: its bank, retrieval, bag-of-words loss, teacher rows, and the model around it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sed_ray.model.prompt import IGNORE
from sed_ray.model.draft import BANK_PAD, DescriptorDraft, bag_of_words_loss, draft_tokens, pooled_statistics, valid_first
from sed_ray.model.prompt import get_task
from sed_ray.model.speech_llm import SpeechEmotionLLM
from sed_ray.model.weights import load_model, save_trainable
from sed_ray.train.stages import STAGE_PRESETS, Stage


def pad(lists):
    """Token lists -> B x D, right-padded with IGNORE (as data/collate.py builds them)."""
    width = max(len(x) for x in lists) or 1
    return torch.tensor([list(x) + [IGNORE] * (width - len(x)) for x in lists])


ids = pad


def test_pooled_statistics_ignore_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert pooled_statistics(x, mask)[0].tolist() == pytest.approx([2.0, 1.0, 0.02])  # mean, std, frames / 100


def test_the_bank_keeps_non_empty_descriptors_cut_to_its_width_and_size():
    draft = DescriptorDraft(layers=1, in_dim=2, hidden=8, llm_width=4, bank_size=2, bank_tokens=3)
    draft.set_bank([[], [1, 2, 3, 4], [5], [6, 7]])
    assert draft.bank_count == 2
    assert draft.bank_ids.tolist() == [[1, 2, 3], [5, BANK_PAD, BANK_PAD]]
    draft.set_bank([[7]])  # refilling clears what was there
    assert draft.bank_ids.tolist() == [[7, BANK_PAD, BANK_PAD], [BANK_PAD] * 3]


def test_retrieval_picks_the_descriptor_with_the_best_mean_token_log_probability():
    draft = DescriptorDraft(layers=1, in_dim=2, hidden=8, llm_width=4, bank_size=4, bank_tokens=3)
    draft.set_bank([[0, 1], [2, 3, 3], [4]])
    logp = torch.log_softmax(torch.tensor([[0.0, 0.0, 5.0, 5.0, 4.0, 0.0],    # 2 and 3 likely: row 1
                                           [0.0, 0.0, 0.0, 0.0, 5.0, 0.0],    # 4 alone: row 2, not diluted
                                           [3.0, 3.0, 3.0, 0.0, 2.9, 0.0]]), -1)  # row 1 is diluted by 3
    ids, valid, row = draft.retrieve(logp)
    assert row.tolist() == [1, 2, 0]
    assert ids[0][valid[0]].tolist() == [2, 3, 3] and ids[1][valid[1]].tolist() == [4]


def test_retrieval_scores_pointwise_mutual_information_so_words_every_descriptor_uses_do_not_decide():
    draft = DescriptorDraft(layers=1, in_dim=2, hidden=8, llm_width=4, bank_size=4, bank_tokens=4)
    bank = [[0, 0, 0, 1], [0, 2], [0, 3]]  # token 0 is in every descriptor, as "the" would be
    draft.set_bank(bank)
    prior = torch.zeros(5)
    for ids in bank:
        for t in ids:
            prior[t] += 1 / len(ids) / len(bank)
    logp = torch.log(torch.tensor([[0.70, 0.09, 0.20, 0.005, 0.005]]))
    expected = [float(sum(logp[0, t] - prior[t].log() for t in ids) / len(ids)) for ids in bank]
    _, _, row = draft.retrieve(logp)
    assert row.item() == max(range(3), key=expected.__getitem__) == 1  # token 2 is 1.2x likelier than usual
    plain = [float(logp[0, ids].mean()) for ids in bank]
    assert max(range(3), key=plain.__getitem__) == 0  # a plain mean would have picked the common words


def test_an_empty_bank_retrieves_nothing():
    draft = DescriptorDraft(layers=1, in_dim=2, hidden=8, llm_width=4, bank_size=4, bank_tokens=3)
    ids, valid, row = draft.retrieve(torch.log_softmax(torch.randn(2, 6), -1))
    assert not valid.any() and row.tolist() == [-1, -1] and ids.shape == (2, 3)


def test_bag_of_words_loss_skips_rows_without_a_descriptor_and_learns_which_descriptor_fits():
    torch.manual_seed(0)
    embedding = torch.randn(12, 16)
    bank = [[3, 4, 5], [6, 7], [8, 9, 10]]
    draft = DescriptorDraft(layers=2, in_dim=3, hidden=32, llm_width=16, bank_size=4, bank_tokens=4)
    draft.set_bank(bank)
    x = torch.randn(2, 3, 10, 3) * 3  # two hidden states of three utterances
    mask = torch.ones(3, 10, dtype=torch.bool)
    empty = bag_of_words_loss(draft(x, mask, embedding), ids([[], [], []]))
    assert empty.item() == 0.0 and empty.requires_grad  # nothing to learn, still a graph
    targets = ids([bank[2], [], bank[0]])  # utterance 1 has no descriptor: it teaches nothing
    optimizer = torch.optim.Adam(draft.parameters(), lr=1e-2)
    draft.train()
    first = None
    for _ in range(150):
        loss = bag_of_words_loss(draft(x, mask, embedding), targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first
    draft.eval()
    _, _, row = draft.retrieve(draft(x, mask, embedding))
    assert row[0].item() == 2 and row[2].item() == 0


def test_draft_tokens_embed_the_retrieved_ids_and_teacher_rows_get_the_reference_cut_to_the_width():
    embedding = torch.randn(8, 4)
    ids = torch.tensor([[1, 2, 0], [1, 2, 3], [4, 0, 0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    references = (pad([[], [5, 4, 3, 2, 1], []]), torch.tensor([False, True, True]))
    tokens, keep = draft_tokens(ids, valid, embedding, references)
    assert keep.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    assert torch.allclose(tokens[0, :2], embedding[[1, 2]]) and not tokens[0, 2].any()  # row 0: retrieved
    assert torch.allclose(tokens[1], embedding[[5, 4, 3]])  # row 1: the reference, cut to 3 places
    assert not tokens[2].any()  # row 2: an empty reference leaves the slot empty


def test_valid_tokens_move_to_the_front_in_order():
    tokens = torch.arange(5.0).view(1, 5, 1)
    valid = torch.tensor([[False, True, False, True, True]])
    moved, moved_valid = valid_first(tokens, valid)
    assert moved[0, :3, 0].tolist() == [1.0, 3.0, 4.0] and moved_valid.tolist() == [[True, True, True, False, False]]


def test_feature_statistics_are_exact_over_every_training_utterance_and_frozen_in_eval():
    draft = DescriptorDraft(layers=1, in_dim=2, hidden=8, llm_width=4, bank_size=2, bank_tokens=3)
    embedding = torch.randn(5, 4)
    first, second = torch.randn(1, 4, 7, 2) + 3.0, torch.randn(1, 1, 7, 2) * 2.0  # a batch of one counts too
    mask = torch.ones(4, 7, dtype=torch.bool)
    draft.eval()
    draft(first, mask, embedding)
    mean, var = draft.feature_moments()
    assert torch.equal(mean, torch.zeros(5)) and torch.equal(var, torch.ones(5))  # nothing seen yet
    draft.train()
    draft(first, mask, embedding)
    draft(second, mask[:1], embedding)
    pooled = torch.cat([pooled_statistics(first[0], mask), pooled_statistics(second[0], mask[:1])])
    mean, var = draft.feature_moments()
    assert torch.allclose(mean, pooled.mean(0), atol=1e-5)
    assert torch.allclose(var, pooled.var(0, unbiased=False), atol=1e-4)
    draft.eval()
    draft(torch.randn(1, 4, 7, 2) * 9, mask, embedding)  # inference leaves them as they are
    assert torch.allclose(draft.feature_moments()[0], mean)


def test_teacher_share_falls_from_one_to_zero_over_the_configured_fraction():
    stage = Stage("stage2", "joint", ("lora",), steps=100, lr=1e-3, draft_teacher_until=0.5)
    assert [stage.draft_teacher_share(s) for s in (0, 25, 50, 99)] == [1.0, 0.5, 0.0, 0.0]
    assert Stage("s", "joint", ("lora",), 10, draft_teacher_until=0.0).draft_teacher_share(0) == 0.0
    assert "draft_teacher_until" in " ".join(Stage("s", "joint", ("lora",), 10, draft_teacher_until=2).validate())


# --- the model with a draft -------------------------------------------------------------------------
@pytest.fixture()
def draft_model(tiny_model_config, tiny_batch):
    torch.manual_seed(0)
    model = SpeechEmotionLLM.from_config(dataclasses.replace(tiny_model_config, draft_bank_size=8))
    _, targets = tiny_batch
    bank = [t["descriptor"] for t in targets] + ["The speaker talks slowly, with a low pitch."]
    assert model.set_descriptor_bank(bank) == len(set(bank))
    return model


def test_stage2_trains_the_draft_and_its_bag_of_words_loss_is_reported(draft_model, tiny_batch):
    batch, targets = tiny_batch
    draft_model.set_trainable(STAGE_PRESETS["stage2"]["trains"])
    draft_model.train()
    out = draft_model(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint", beta={"descriptor": 1e-3},
                      descriptor_ids_BD=batch.descriptor_ids_BD)
    assert out.draft_bow is not None and "draft_bow" in out.parts()
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in draft_model.parameter_groups()["descriptor_draft"])


def test_the_no_descriptor_ablation_never_sees_the_draft(draft_model, tiny_batch):
    batch, targets = tiny_batch
    draft_model.set_trainable(STAGE_PRESETS["stage2"]["trains"])
    out = draft_model(batch.pcm_BT, batch.lengths_B, batch.targets["joint_no_descriptor"], "joint_no_descriptor",
                      draft_teacher_share=1.0)
    out.loss.backward()
    assert out.draft_bow is None
    assert all(p.grad is None for _, p in draft_model.parameter_groups()["descriptor_draft"])
    assert all(r["descriptor_draft"] is None
               for r in draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint_no_descriptor", max_new_tokens=4))


def test_teacher_forcing_puts_the_reference_descriptor_in_the_slot(draft_model, tiny_batch):
    batch, targets = tiny_batch
    draft_model.eval()
    hidden, mask = draft_model.encoder(batch.pcm_BT, batch.lengths_B)
    references = [draft_model.prompts.descriptor_ids(t) for t in targets]
    use = torch.ones(len(references), dtype=torch.bool)
    streams, _, _ = draft_model.encode_for(get_task("joint"), hidden, mask, (batch.descriptor_ids_BD, use))
    tokens, valid = streams["descriptor"]
    embedding = draft_model.llm.get_input_embeddings().weight
    for row, ids in enumerate(references):
        assert torch.allclose(tokens[row, :len(ids)], embedding[ids].to(tokens.dtype))
        frames = int(draft_model.encode_hidden(hidden, mask, ("descriptor",))[0]["descriptor"][1][row].sum())
        assert int(valid[row].sum()) == len(ids) + frames  # the reference, then the frame pseudo-tokens


def test_the_emotion_follows_the_draft_by_default_and_the_generated_descriptor_on_request(draft_model, tiny_batch):
    batch, targets = tiny_batch
    own = draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=8)
    generated = draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint", descriptors="generated", max_new_tokens=8)
    for a, b in zip(own, generated):
        assert a["descriptor"] == a["descriptor_draft"] != "" and b["descriptor"] == b["descriptor_generated"]
        assert a["descriptor_generated"] == b["descriptor_generated"] and a["descriptor_draft"] == b["descriptor_draft"]
    # the posterior really is scored after the descriptor named: the same prefixes give the same posterior
    draft_model.eval()  # as predict runs (no sampling in the bottleneck)
    streams, _, _ = draft_model.encode_for(get_task("joint"), *draft_model.encoder(batch.pcm_BT, batch.lengths_B))
    for rows in (own, generated):
        again = draft_model.score_labels(streams, "joint", [{"transcript": r["transcript"], "descriptor": r["descriptor"]}
                                                             for r in rows])
        assert torch.allclose(again, torch.tensor([[r["posterior"][k] for k in draft_model.config.labels] for r in rows]),
                              atol=1e-5)
    with pytest.raises(ValueError, match="descriptors must be one of"):
        draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint", descriptors="draft")


def test_without_a_bank_the_emotion_follows_the_generated_descriptor(draft_model, tiny_batch):
    batch, _ = tiny_batch
    draft_model.set_descriptor_bank([])
    rows = draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=8)
    assert all(r["descriptor_draft"] == "" and r["descriptor"] == r["descriptor_generated"] for r in rows)


def test_save_load_round_trip_keeps_the_draft_its_statistics_and_its_bank(draft_model, tiny_batch, tmp_path):
    batch, targets = tiny_batch
    draft_model.train()
    draft_model(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint",
                descriptor_ids_BD=batch.descriptor_ids_BD)  # moves the running statistics
    with torch.no_grad():
        for _, p in draft_model.parameter_groups()["descriptor_draft"]:
            p.add_(torch.randn_like(p) * 0.05)
    draft_model.eval()
    save_trainable(draft_model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    assert torch.equal(loaded.draft.stat_sum, draft_model.draft.stat_sum) and float(loaded.draft.seen) > 0
    assert torch.equal(loaded.draft.bank_ids, draft_model.draft.bank_ids)
    pa = draft_model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=6)
    pb = loaded.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=6)
    assert [r["descriptor_draft"] for r in pa] == [r["descriptor_draft"] for r in pb]
    bank = {draft_model.prompts.decode([i for i in row if i >= 0]) for row in draft_model.draft.bank_ids.tolist()}
    assert all(r["descriptor_draft"] in bank for r in pa)  # a draft is always one of the bank's descriptors
    assert [r["posterior"] for r in pa] == [r["posterior"] for r in pb]


def test_the_launcher_fills_the_bank_with_distinct_training_descriptors_only(synth_shards):
    import pyarrow.dataset as pads

    from sed_ray.data.stream import shard_files
    from sed_ray.data.reads import descriptor_bank

    table = pads.dataset(shard_files(synth_shards), format="parquet").to_table(columns=["split", "descriptor"])
    train = {" ".join(d.split()) for s, d in zip(table.column("split").to_pylist(), table.column("descriptor").to_pylist())
             if s == "train"}
    bank = descriptor_bank(synth_shards, "train", 10_000, seed=0)
    assert len(bank) == len(set(bank)) and set(bank) == train
    few = descriptor_bank(synth_shards, "train", 5, seed=3)
    assert len(few) == 5 and set(few) <= train and few == descriptor_bank(synth_shards, "train", 5, seed=3)
    assert descriptor_bank(synth_shards, "train", 0, seed=0) == []
