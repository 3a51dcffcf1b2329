"""The model: bottleneck maths, downsampling, trainability per stage, scoring, save/load, overfitting."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from sed_ray.model.adapter import stack_frames
from sed_ray.model.bottleneck import DisentanglementBlock, LayerWeightedSum, VariationalBottleneck, masked_kl
from sed_ray.model.prompt import get_task, parse_output, target_text
from sed_ray.model.speech_llm import SpeechEmotionLLM
from sed_ray.model.weights import load_model, save_trainable
from sed_ray.train.stages import STAGE_PRESETS


@pytest.fixture()
def model(tiny_model_config):
    torch.manual_seed(0)
    return SpeechEmotionLLM.from_config(tiny_model_config)


def test_kl_matches_closed_form_and_ignores_padding():
    # frame 1: mu = (1, 0), var = (1, 1) -> KL = 0.5; frame 2: mu = 0, var = (e, e) -> 2 * 0.5 (e - 1 - 1)
    mu = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [50.0, -50.0]]])
    logvar = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])  # the third frame is padding with absurd values
    expected = (0.5 + (math.e - 2.0)) / 2
    assert masked_kl(mu, logvar, mask).item() == pytest.approx(expected, rel=1e-6)


def test_layer_weights_sum_to_one():
    layers = LayerWeightedSum(7)
    with torch.no_grad():
        layers.logits.copy_(torch.randn(7))
    assert layers.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    hidden = torch.randn(7, 2, 3, 4)
    expected = sum(w * h for w, h in zip(layers.weights, hidden))
    assert torch.allclose(layers(hidden), expected, atol=1e-6)


@pytest.mark.parametrize("frames,k,tokens", [(10, 5, 2), (7, 5, 2), (1, 5, 1), (11, 5, 3), (6, 3, 2)])
def test_downsampling_handles_any_length(frames, k, tokens):
    z = torch.randn(2, frames, 3)
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, frames // 2 + 1:] = False
    stacked, token_mask = stack_frames(z, mask, k)
    assert stacked.shape == (2, tokens, 3 * k) and token_mask.shape == (2, tokens)
    assert torch.equal(stacked[0].reshape(-1, 3)[:frames], z[0])  # frames in order, tail zero-padded
    assert not stacked[0].reshape(-1, 3)[frames:].any()
    valid = frames // 2 + 1
    assert token_mask[1].sum().item() == math.ceil(valid / k)
    assert not stacked[1].reshape(-1, 3)[valid:].any()  # padded frames contribute zeros


@pytest.mark.parametrize("init_logvar", [0.0, -4.6])
def test_bottleneck_starts_at_the_configured_posterior_variance(init_logvar):
    torch.manual_seed(0)
    bottleneck = VariationalBottleneck(in_dim=16, hidden=32, latent=8, init_logvar=init_logvar)
    _, mu, logvar = bottleneck(torch.randn(4, 50, 16), sample=False)
    assert logvar.mean().item() == pytest.approx(init_logvar, abs=0.3)
    assert mu.abs().mean().item() > 0.01  # only the variance starts fixed: mu still depends on x


def test_block_samples_only_while_training_and_trainable():
    block = DisentanglementBlock(num_layers=3, in_dim=4, hidden=8, latent=2)
    hidden, mask = torch.randn(3, 1, 5, 4), torch.ones(1, 5, dtype=torch.bool)
    block.eval()
    assert torch.equal(block(hidden, mask)[0], block(hidden, mask)[0])
    block.train()
    assert not torch.equal(block(hidden, mask)[0], block(hidden, mask)[0])
    block.requires_grad_(False)  # a frozen branch behaves as at inference
    assert torch.equal(block(hidden, mask)[0], block(hidden, mask)[0])


def test_frame_mask_follows_sample_lengths(model):
    lengths = torch.tensor([16000, 8000, 4000])
    pcm = torch.randn(3, 16000) * 0.1
    hidden, mask = model.encoder(pcm, lengths)
    assert hidden.shape[0] == model.encoder.num_hidden_states and hidden.shape[1] == 3
    expected = model.encoder.model._get_feat_extract_output_lengths(lengths)
    assert mask.sum(1).tolist() == expected.tolist()
    assert all(not p.requires_grad for p in model.encoder.parameters())


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stage", list(STAGE_PRESETS))
def test_frozen_parameters_bit_identical_through_an_optimiser_step(model, tiny_batch, stage):
    batch, targets = tiny_batch
    spec = STAGE_PRESETS[stage]
    model.set_trainable(spec["trains"])
    model.train()
    trainable = {n for params in model.parameter_groups().values() for n, p in params if p.requires_grad}
    expected = {n for g in spec["trains"] for n, _ in model.parameter_groups()[g]}
    assert trainable == expected
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    before = _snapshot(model)
    out = model(batch.pcm_BT, batch.lengths_B, batch.targets[spec["task"]], spec["task"],
                beta={"content": 1.0, "descriptor": 1.0}, descriptor_ids_BD=batch.descriptor_ids_BD)
    out.loss.backward()
    optimizer.step()
    after = _snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == expected  # every trainable tensor moved, nothing else did (bit-identical)


def test_label_scoring_is_a_distribution_over_exactly_the_label_set(model, tiny_batch):
    batch, _ = tiny_batch
    results = model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=8)
    for row in results:
        assert set(row["posterior"]) == set(model.config.labels)
        assert sum(row["posterior"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["emotion"] in model.config.labels


def test_batched_generation_matches_single(model, tiny_batch):
    """Left padding with explicit positions: an utterance decodes the same alone or in a batch."""
    batch, _ = tiny_batch
    model.eval()
    streams, _, _ = model.encode(batch.pcm_BT, batch.lengths_B, "joint")
    together = model.generate_text(streams, "joint", batch.size, max_new_tokens=6)
    short = int(batch.lengths_B.argmin())
    alone_streams, _, _ = model.encode(batch.pcm_BT[short:short + 1, : int(batch.lengths_B[short])],
                                       batch.lengths_B[short:short + 1], "joint")
    assert model.generate_text(alone_streams, "joint", 1, max_new_tokens=6)[0] == together[short]


def test_save_load_round_trip_gives_identical_outputs(model, tiny_batch, tmp_path):
    batch, targets = tiny_batch
    model.set_trainable(STAGE_PRESETS["both"]["trains"])
    with torch.no_grad():  # make the trainable weights differ from a fresh model's
        for _, p in model.trainable_state_dict().items():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    save_trainable(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "trainable.safetensors").exists()
    loaded = load_model(tmp_path / "ckpt").eval()
    with torch.no_grad():
        a = model(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint").loss
        b = loaded(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint").loss
    assert torch.equal(a, b)
    pa = model.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=6)
    pb = loaded.predict(batch.pcm_BT, batch.lengths_B, "joint", max_new_tokens=6)
    assert [r["posterior"] for r in pa] == [r["posterior"] for r in pb]


def test_listening_check_tells_audio_from_its_length(model, tiny_batch):
    batch, targets = tiny_batch
    check = model.listening_check(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint", batch.fields["joint"])
    assert set(check) == {"nll_own", "nll_silence", "nll_other", "target_tokens", "fields"}
    assert all(len(v) == batch.size for v in check.values())
    tokens = [len(model.prompts.target_ids(get_task("joint"), t)) for t in targets]
    assert check["target_tokens"] == tokens
    for row, fields in enumerate(check["fields"]):  # the fields split the whole target exactly
        assert list(fields) == ["transcript", "descriptor", "emotion"]
        assert sum(f["tokens"] for f in fields.values()) == tokens[row]
        for key, total in (("own", "nll_own"), ("silence", "nll_silence"), ("other", "nll_other")):
            assert sum(f[key] for f in fields.values()) == pytest.approx(check[total][row], rel=1e-4)
    # a fresh model's pseudo-tokens follow its input, so other audio changes the likelihood
    assert any(abs(a - b) > 1e-3 for a, b in zip(check["nll_own"], check["nll_silence"]))
    with torch.no_grad():  # adapters that ignore their input: only the number of pseudo-tokens is left
        for branch in ("content", "descriptor"):
            model.adapters[branch].net[-1].weight.zero_()
    deaf = model.listening_check(batch.pcm_BT, batch.lengths_B, batch.targets["joint"], "joint", batch.fields["joint"])
    assert deaf["nll_own"] == pytest.approx(deaf["nll_silence"], abs=1e-4)
    assert all(f["own"] == pytest.approx(f["silence"], abs=1e-4) for row in deaf["fields"] for f in row.values())
    single = model.listening_check(batch.pcm_BT[:1], batch.lengths_B[:1], batch.targets["joint"][:1], "joint",
                                   batch.fields["joint"][:1])
    assert single["nll_other"] == [None] and single["fields"][0]["emotion"]["other"] is None


@pytest.mark.parametrize("values", [
    {"transcript": "The cat sat.", "descriptor": "Speaks slowly, softly.", "emotion": "sad"},
    {"transcript": "", "descriptor": "", "emotion": "angry"},  # empty fields still own their title
    {"transcript": "Ça va? Ünïcode — ok", "descriptor": "A\nnew  line", "emotion": "happy"},
])
def test_every_target_token_is_given_to_the_field_it_starts_in(model, values):
    task = get_task("joint")
    ids = model.prompts.target_ids(task, values)
    owners = model.prompts.token_fields(task, values)
    assert len(owners) == len(ids) and owners[-1] == "emotion"  # the end token goes with the last field
    assert owners == sorted(owners, key=task.fields.index)  # one contiguous run per field, in order
    for field in task.fields:
        text = model.tokenizer.decode([i for i, f in zip(ids, owners) if f == field], skip_special_tokens=True)
        assert text.strip().startswith(f"{field.capitalize()}:"), (field, text)
        assert " ".join(str(values[field]).split()) in text
    no_descriptor = get_task("joint_no_descriptor")
    assert set(model.prompts.token_fields(no_descriptor, values)) == {"transcript", "emotion"}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "both"])
def test_tiny_model_overfits_a_handful_of_utterances(model, tiny_batch, stage):
    batch, targets = tiny_batch
    spec = STAGE_PRESETS[stage]
    model.set_trainable(spec["trains"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(40):
        out = model(batch.pcm_BT, batch.lengths_B, batch.targets[spec["task"]], spec["task"],
                    beta={"content": 1e-4, "descriptor": 1e-4}, descriptor_ids_BD=batch.descriptor_ids_BD)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.ce.item())
    assert losses[-1] < 0.35 * losses[0], losses


def test_prompt_target_format_round_trips():
    task = get_task("joint")
    values = {"transcript": "The cat sat.", "descriptor": "Speaks  slowly,\nsoftly.", "emotion": "sad"}
    text = target_text(task, values)
    assert text == "Transcript: The cat sat.\nDescriptor: Speaks slowly, softly.\nEmotion: sad"
    assert parse_output(text + "<junk after>") == {"transcript": "The cat sat.",
                                                  "descriptor": "Speaks slowly, softly.", "emotion": "sad<junk after>"}
    assert target_text(task, values, upto="emotion").endswith("Emotion:")


def test_paper_size_model_on_meta_device():
    from sed_ray.model.presets import paper_model_on_meta
    from sed_ray.model.speech_llm import count_parameters

    model = paper_model_on_meta()
    model.set_trainable(STAGE_PRESETS["stage1"]["trains"])
    counts = count_parameters(model)
    assert 8.2e9 < counts["total"] < 8.5e9  # HuBERT-large 0.32 B + Llama-3.1-8B 8.03 B + ours
    assert 1e7 < counts["trainable"] < 0.01 * counts["total"]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_model_package_imports_neither_ray_nor_deepspeed():
    code = ("import sys; import sed_ray.model.speech_llm, sed_ray.model.presets, sed_ray.model.weights; "
            "bad = [m for m in ('ray', 'deepspeed') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
