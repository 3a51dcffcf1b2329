"""What the model is taught and scored on: fields a corpus lacks are not learnt, the label set can be
restricted to a protocol's, and label scoring in chunks with logits only at the label gives the same
posterior as one pass over everything."""

from __future__ import annotations

import pytest
import torch

from sed_ray.data.collate import collate_rows, token_lists
from sed_ray.model.prompt import IGNORE, get_task
from sed_ray.model.speech_llm import SpeechEmotionLLM


@pytest.fixture(scope="module")
def model(tiny_model_config):
    torch.manual_seed(0)
    return SpeechEmotionLLM.from_config(tiny_model_config)


def test_a_field_the_utterance_lacks_is_read_but_not_learnt(model):
    task = get_task("joint")
    full = {"transcript": "the cat sat", "descriptor": "A low slow voice.", "emotion": "sad"}
    no_emotion = {**full, "emotion": None}
    no_descriptor = {**full, "descriptor": ""}
    lists = token_lists([full, no_emotion, no_descriptor], model.prompts, ("joint",), fields=True)
    assert lists["unscored.joint"][0] == []
    for row, lacking in ((1, "emotion"), (2, "descriptor")):
        owners = [task.fields[i] for i in lists["fields.joint"][row]]
        assert lists["unscored.joint"][row] == [i for i, f in enumerate(owners) if f == lacking] != []


def test_the_loss_counts_only_the_scored_target_tokens(model, tiny_batch):
    batch, _ = tiny_batch
    model.eval()
    targets = batch.targets["joint"]
    everything = model(batch.pcm_BT, batch.lengths_B, targets, "joint")
    half = (targets != IGNORE) & (torch.arange(targets.shape[1]) < targets.shape[1] // 2)
    part = model(batch.pcm_BT, batch.lengths_B, targets, "joint", target_scored_BS=half)
    assert int(everything.target_tokens) == int((targets != IGNORE).sum())
    assert int(part.target_tokens) == int(half.sum()) and not torch.isclose(part.ce, everything.ce)


def test_rows_without_an_emotion_leave_the_emotion_unscored_through_collate(model, tiny_batch):
    batch, targets = tiny_batch
    pcm = (batch.pcm_BT * 32768).round().to(torch.int16)  # the fixture's batch is already float
    rows = [{"pcm": pcm[i, :int(batch.lengths_B[i])].numpy().tobytes(), "num_samples": int(batch.lengths_B[i]),
             "text": t["transcript"], "descriptor": t["descriptor"], "emotion": None if i == 0 else t["emotion"]}
            for i, t in enumerate(targets)]
    collated = collate_rows(rows, model.prompts, ("joint",), fields=True)
    emotion = get_task("joint").fields.index("emotion")
    assert not collated.scored["joint"][0][collated.fields["joint"][0] == emotion].any()
    assert collated.scored["joint"][1][collated.fields["joint"][1] == emotion].all()


def test_a_restricted_label_set_is_scored_alone_and_an_unknown_label_is_refused(model, tiny_batch):
    batch, _ = tiny_batch
    rows = model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=4, labels=("happy", "sad"))
    assert all(set(r["posterior"]) == {"happy", "sad"} and r["emotion"] in ("happy", "sad") for r in rows)
    with pytest.raises(ValueError, match="not among the model's labels"):
        model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=4, labels=("bored",))


def test_label_scoring_in_chunks_matches_one_pass(model, tiny_batch):
    batch, targets = tiny_batch
    model.eval()
    streams, _, _ = model.encode_for(get_task("joint"), *model.encoder(batch.pcm_BT, batch.lengths_B))
    prefixes = [{"transcript": t["transcript"], "descriptor": t["descriptor"]} for t in targets]
    whole = model.score_labels(streams, "joint", prefixes, chunk_utterances=10_000)
    chunked = model.score_labels(streams, "joint", prefixes, chunk_utterances=3)  # chunks cut utterances apart
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert torch.allclose(whole.sum(-1), torch.ones(len(prefixes)), atol=1e-5)


def test_label_scoring_on_the_prefix_cache_matches_whole_sequences(model, tiny_batch):
    """The KV-cached scoring (prefix once, each label on its cache) against every utterance x label row
    run whole, as label scoring was before the cache."""
    from sed_ray.bench.memory_bench import full_logits_scoring

    batch, targets = tiny_batch
    model.eval()
    with torch.no_grad():
        streams, _, _ = model.encode_for(get_task("joint"), *model.encoder(batch.pcm_BT, batch.lengths_B))
        prefixes = [{"transcript": t["transcript"] + " more words" * i, "descriptor": t["descriptor"]}
                    for i, t in enumerate(targets)]  # prefixes of different lengths: left padding differs
        whole = full_logits_scoring(model, streams, "joint", prefixes).view(len(prefixes), -1)
        cached = model.score_labels(streams, "joint", prefixes, chunk_utterances=2)
    assert torch.allclose(torch.softmax(whole, dim=-1), cached, atol=1e-5)
