"""The tiny preset's label-free stand-in pretraining: its targets and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sed_ray.base.pretrain import N_FEATURES, PITCH, VOICING, acoustic_units, frame_features, pretrain_encoder

RATE = 16000


def tone(hz: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sign(np.sin(2 * np.pi * hz * t))).astype(np.float32)  # harmonic-rich, like a voice


def test_frame_features_hear_the_pitch_of_a_tone_and_none_in_noise():
    for hz in (110.0, 260.0):
        features = frame_features(tone(hz))
        assert features.shape[1] == N_FEATURES
        assert np.median(np.exp(features[:, PITCH])) == pytest.approx(hz, rel=0.05)
        assert np.median(features[:, VOICING]) > 0.3  # the voiced threshold frame_features applies
    noise = np.random.default_rng(0).normal(0, 0.3, RATE // 2).astype(np.float32)
    assert (frame_features(noise)[:, PITCH] == 0).mean() > 0.8  # aperiodic frames count as unvoiced


def test_encoder_pretraining_lowers_its_loss():
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    encoder = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, conv_dim=(16,) * 7, feat_extract_norm="layer",
                                       do_stable_layer_norm=True, num_conv_pos_embeddings=16,
                                       num_conv_pos_embedding_groups=2, mask_time_prob=0.05))
    rng = np.random.default_rng(1)
    audio = [np.concatenate([tone(f, 0.3) for f in rng.uniform(90, 300, 4)]) for _ in range(8)]
    assert len(acoustic_units(audio, units=8)) == 8
    losses = pretrain_encoder(encoder, audio, steps=120, batch_size=4, units=8, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])  # about 2.1 -> 1.1 measured
    assert not encoder.training  # handed back frozen-ready, in eval mode


def test_lm_sequences_repeat_a_text_after_another_in_the_configured_share():
    from sed_ray.base.pretrain import lm_sequence

    texts = [f"text{i}" for i in range(50)]
    rng = np.random.default_rng(0)
    sequences = [lm_sequence(texts, rng, copy_share=0.5) for _ in range(400)]
    copies = [s.split() for s in sequences if len(s.split()) == 3]
    assert all(parts[0] == parts[2] and parts[0] in texts and parts[1] in texts for parts in copies)
    assert all(s in texts for s in sequences if len(s.split()) == 1)
    assert 0.4 < len(copies) / len(sequences) < 0.6
    assert all(lm_sequence(texts, rng, copy_share=0.0) in texts for _ in range(20))
