"""Stand-in pretraining for the tiny preset, so its frozen parts behave a little like pretrained ones.

A randomly initialised frozen encoder hears little (../shared/REFERENCE.md section 8), and LoRA on a
random LLM learns little. The tiny preset therefore:
- pretrains its encoder with HuBERT's own first-iteration recipe, on the corpus audio and without any
  label: k-means units of simple acoustic features (log band energies, which keep spectral tilt, and
  frame pitch from autocorrelation) are predicted at masked frames; then the encoder is frozen, as in
  the paper;
- pretrains its LLM as a plain language model on the corpus text (transcripts and descriptors) and the
  prompt strings, again without labels.

Shape legend: B batch, T samples, F frames (20 ms hop, 25 ms window: HuBERT's framing), K units.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FRAME, HOP, SAMPLE_RATE = 400, 320, 16000


# 19 log-spaced bands of a 512-point spectrum (2-256 bins, 62 Hz-8 kHz; duplicates at the low end removed)
BAND_EDGES = np.unique(np.geomspace(2, 256, 21).astype(int))
PITCH = len(BAND_EDGES) - 1  # column of the log pitch (0 when unvoiced)
VOICING = PITCH + 1  # column of the voicing strength
N_FEATURES = VOICING + 1


def frame_features(pcm: np.ndarray) -> np.ndarray:
    """float audio -> F x N_FEATURES: log band energies, log pitch (column PITCH), voicing strength."""
    audio = pcm.astype(np.float32)
    if len(audio) < FRAME:
        return np.zeros((0, N_FEATURES), dtype=np.float32)
    audio = audio / (np.abs(audio).max() + 1e-8)
    frames = np.lib.stride_tricks.sliding_window_view(audio, FRAME)[::HOP]  # F x 400
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(FRAME), n=512)) ** 2  # F x 257
    bands = np.stack([spectrum[:, a:b].sum(1) for a, b in zip(BAND_EDGES[:-1], BAND_EDGES[1:])], 1)
    bands = np.log(bands + 1e-6)
    centred = frames - frames.mean(1, keepdims=True)
    energy = (centred ** 2).sum(1) + 1e-8
    lags = np.arange(40, 200)  # 80-400 Hz
    correlation = np.stack([(centred[:, :-lag] * centred[:, lag:]).sum(1) for lag in lags], 1) / energy[:, None]
    best = correlation.argmax(1)
    voicing = correlation[np.arange(len(best)), best]
    log_pitch = np.log(SAMPLE_RATE / lags[best]) * (voicing > 0.3)
    return np.concatenate([bands, log_pitch[:, None], voicing[:, None]], 1).astype(np.float32)


def acoustic_units(utterances: list[np.ndarray], units: int = 64, seed: int = 0) -> list[np.ndarray]:
    """k-means units (per frame) of the standardised frame features of every utterance."""
    from sklearn.cluster import MiniBatchKMeans

    features = [frame_features(u) for u in utterances]
    stacked = np.concatenate(features)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-6
    kmeans = MiniBatchKMeans(n_clusters=units, random_state=seed, n_init=3, batch_size=4096)
    kmeans.fit((stacked - mean) / std)
    return [kmeans.predict((f - mean) / std) if len(f) else np.zeros(0, dtype=np.int64) for f in features]


def _span_mask(frames: torch.Tensor, max_frames: int, generator: torch.Generator, prob: float = 0.08,
               span: int = 5) -> torch.Tensor:
    """HuBERT-style masks: random span starts, `span` frames each, only inside each utterance."""
    mask = torch.zeros(len(frames), max_frames, dtype=torch.bool)
    for b, n in enumerate(frames.tolist()):
        starts = torch.nonzero(torch.rand(n, generator=generator) < prob).flatten()
        for s in starts.tolist():
            mask[b, s:min(s + span, n)] = True
        if not mask[b, :n].any() and n:
            mask[b, 0] = True
    return mask


def _step(optimizer, model: nn.Module, loss: torch.Tensor, losses: list[float], log, label: str, step: int,
          steps: int) -> None:
    """One clipped optimiser step; records the loss and logs its recent mean five times per run."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    losses.append(loss.item())
    if log and (step + 1) % max(1, steps // 5) == 0:
        log(f"[pretrain] {label} loss {np.mean(losses[-20:]):.3f}")


def pretrain_encoder(encoder: nn.Module, utterances: list[np.ndarray], *, steps: int = 300, batch_size: int = 16,
                     units: int = 64, lr: float = 5e-4, seed: int = 0, log=None) -> list[float]:
    """Masked prediction of acoustic units (HuBERT iteration 1) on a transformers HubertModel, in place.
    Returns the loss per step."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    targets = acoustic_units(utterances, units, seed)
    head = nn.Linear(encoder.config.hidden_size, units)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    encoder.train()
    losses = []
    order = np.random.default_rng(seed).permutation(len(utterances))
    for step in range(steps):
        picks = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
        lengths = torch.tensor([len(utterances[i]) for i in picks])
        pcm = torch.zeros(len(picks), int(lengths.max()))
        for b, i in enumerate(picks):
            audio = torch.from_numpy(utterances[i].astype(np.float32))
            pcm[b, :len(audio)] = (audio - audio.mean()) / (audio.std() + 1e-7)  # the preset normalises input
        frames = encoder._get_feat_extract_output_lengths(lengths)
        max_frames = int(frames.max())
        mask = _span_mask(frames, max_frames, generator)
        attention = (torch.arange(pcm.shape[1])[None] < lengths[:, None]).long()
        hidden = encoder(pcm, attention_mask=attention, mask_time_indices=mask).last_hidden_state
        logits = head(hidden[:, :max_frames])
        labels = torch.full((len(picks), max_frames), -100, dtype=torch.long)
        for b, i in enumerate(picks):
            n = min(int(frames[b]), len(targets[i]))
            labels[b, :n] = torch.from_numpy(targets[i][:n].astype(np.int64))
        labels[~mask] = -100
        loss = nn.functional.cross_entropy(logits.reshape(-1, units), labels.reshape(-1), ignore_index=-100)
        _step(optimizer, encoder, loss, losses, log, f"encoder step {step + 1}/{steps}: masked-unit", step, steps)
    encoder.eval()
    return losses


def lm_sequence(texts: list[str], rng: np.random.Generator, copy_share: float) -> str:
    """One pretraining sequence: a text, or (with probability `copy_share`) "a b a", a text, another
    text, then the first again, whose second copy only context can predict."""
    first = texts[int(rng.integers(len(texts)))]
    if rng.random() >= copy_share:
        return first
    return f"{first} {texts[int(rng.integers(len(texts)))]} {first}"


def pretrain_lm(llm: nn.Module, tokenizer, texts: list[str], *, steps: int = 200, batch_size: int = 32,
                lr: float = 3e-3, seed: int = 0, copy_share: float = 0.5, log=None) -> list[float]:
    """Next-token training of the LLM on `texts` (no labels), in place.

    A pretrained LLM copies from its context (induction heads), and reading the speaking-style slot
    relies on that: a descriptor put there as text is what the target's descriptor repeats. Short
    independent texts never ask a model to copy, so a share of the sequences repeat a text after
    another one (measured in docs/benchmarks.md, "Fifth stop")."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    llm.train()
    losses = []
    for step in range(steps):
        batch = [lm_sequence(texts, rng, copy_share) for _ in range(batch_size)]
        encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=192)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = llm(**encoded, labels=labels).loss
        _step(optimizer, llm, loss, losses, log, f"LLM step {step + 1}/{steps}: text and copies", step, steps)
    llm.eval()
    return losses
