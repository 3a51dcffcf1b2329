"""Descriptor draft: a first guess of the descriptor, as text the LLM reads in its speaking-style slot.

Why (measured in docs/benchmarks.md, "Diagnosis" and "Fifth stop"): a small LLM learns within ~100
steps to read *text* put in the speaking-style slot, but not to build an utterance-level description
from continuous frame pseudo-tokens; it falls back to the one cue that is free, the utterance's length.

The draft gives the speaking-style slot a direct path from the audio to text, by retrieval:
- pooled statistics of each of the encoder's hidden states -> an MLP -> one vector in the LLM's
  embedding space -> log-probabilities over the LLM's vocabulary (scored against its frozen input
  embeddings, so the head scales to any vocabulary);
- trained as a bag of words: the mean log-probability of the reference descriptor's tokens;
- at use, every descriptor in a bank of training descriptors is scored by the mean pointwise mutual
  information of its tokens with the audio (log p(token | audio) - log p(token) over the bank), and the
  best one's tokens go in front of the branch's frame pseudo-tokens.

A retrieved draft is always a fluent descriptor someone wrote, and the bag of words learns in a few
hundred steps what a CTC head writing the sentence token by token did not (per-cue accuracy on held-out
voices 0.70-0.83 against 0.39-0.71). The bank lives in the model's buffers, so a checkpoint carries it.
Off in the paper's model (`ModelConfig.draft_bank_size = 0`); the tiny preset turns it on.

Shape legend: L layers (hidden states), B batch, F frames, D feature width, V vocabulary, H LLM width,
K bank size, T bank tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from sed_ray.model.prompt import IGNORE

BANK_PAD = -1  # an unused token place in the bank


def pooled_statistics(x_BFD: torch.Tensor, mask_BF: torch.Tensor) -> torch.Tensor:
    """Per utterance: mean and standard deviation over its valid frames, and its length (frames / 100)."""
    valid_BF1 = mask_BF[..., None].to(x_BFD.dtype)
    frames_B1 = valid_BF1.sum(1).clamp(min=1.0)
    mean_BD = (x_BFD * valid_BF1).sum(1) / frames_B1
    var_BD = (((x_BFD - mean_BD[:, None]) ** 2) * valid_BF1).sum(1) / frames_B1
    return torch.cat([mean_BD, var_BD.clamp(min=1e-6).sqrt(), frames_B1 / 100.0], dim=-1)


class DescriptorDraft(nn.Module):
    def __init__(self, layers: int, in_dim: int, hidden: int, llm_width: int, bank_size: int, bank_tokens: int) -> None:
        super().__init__()
        stats = layers * (2 * in_dim + 1)
        # Each pooled feature is standardised across utterances (what the measured heads needed to learn
        # in a few hundred steps) by the mean and variance of every training utterance seen so far. Not a
        # batch's own statistics, nor a moving average: the loader buckets utterances by length, so the
        # last few batches are all long or all short, and a moving average of them ends up off by most of
        # a standard deviation on the length feature (measured: 0.8). The input is the frozen encoder's,
        # so the exact average over everything seen is the right one.
        self.register_buffer("seen", torch.zeros((), dtype=torch.float64))
        self.register_buffer("stat_sum", torch.zeros(stats, dtype=torch.float64))
        self.register_buffer("stat_sum_sq", torch.zeros(stats, dtype=torch.float64))
        self.net = nn.Sequential(nn.Linear(stats, hidden), nn.ReLU(), nn.Linear(hidden, llm_width))
        self.register_buffer("bank_ids", torch.full((bank_size, bank_tokens), BANK_PAD, dtype=torch.int32))

    # --- the bank -----------------------------------------------------------------------------------
    def set_bank(self, descriptors: list[list[int]]) -> None:
        """Fill the bank with descriptors as token ids (each cut to the bank's width; the first
        `bank_size` non-empty ones); the places left stay empty."""
        size, width = self.bank_ids.shape
        kept = [ids[:width] for ids in descriptors if ids][:size]
        bank = torch.full((size, width), BANK_PAD, dtype=torch.int32)
        for row, ids in enumerate(kept):
            bank[row, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
        self.bank_ids.copy_(bank)

    @property
    def bank_count(self) -> int:
        return int((self.bank_ids[:, 0] != BANK_PAD).sum())

    def bank_log_prior(self, vocab: int) -> torch.Tensor:
        """log p(token) over the bank: each descriptor's bag of words, averaged (V; tokens absent from the
        bank get the smallest probability seen, so they never look informative)."""
        bank_KT = self.bank_ids[:self.bank_count].long()
        valid_KT = bank_KT != BANK_PAD
        weight_KT = valid_KT / valid_KT.sum(-1, keepdim=True)
        prior_V = torch.zeros(vocab, device=bank_KT.device).index_add_(0, bank_KT[valid_KT], weight_KT[valid_KT].float())
        prior_V = prior_V / prior_V.sum()
        return prior_V.clamp(min=float(prior_V[prior_V > 0].min())).log()

    def feature_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the pooled features over the training utterances seen (0 and 1 before any)."""
        if float(self.seen) == 0:
            return torch.zeros_like(self.stat_sum, dtype=torch.float32), torch.ones_like(self.stat_sum, dtype=torch.float32)
        mean = self.stat_sum / self.seen
        var = (self.stat_sum_sq / self.seen - mean ** 2).clamp(min=0.0)
        return mean.float(), var.float()

    # --- scoring ------------------------------------------------------------------------------------
    def forward(self, hidden_LBFD: torch.Tensor, mask_BF: torch.Tensor, embedding_VH: torch.Tensor) -> torch.Tensor:
        """Encoder hidden states -> log-probabilities B x V over the LLM's vocabulary: the bag of words the
        utterance's descriptor is expected to use. Every layer is pooled on its own: a layer-weighted sum
        loses cues that single layers keep (docs/benchmarks.md, "Fifth stop")."""
        stats_BS = torch.cat([pooled_statistics(x_BFD.float(), mask_BF) for x_BFD in hidden_LBFD], dim=-1)
        if self.training:
            with torch.no_grad():
                batch = stats_BS.detach().double()
                self.seen += batch.shape[0]
                self.stat_sum += batch.sum(0)
                self.stat_sum_sq += (batch ** 2).sum(0)
        mean_S, var_S = self.feature_moments()
        normed_BS = (stats_BS - mean_S) / torch.sqrt(var_S + 1e-5)
        normed_BS = normed_BS.to(self.net[0].weight.dtype)  # bf16 where DeepSpeed's bf16 mode cast the module
        weight_VH = embedding_VH.detach()
        # in the embedding's dtype: a float32 copy of an 8B model's 128k x 4096 matrix would cost 2 GB
        logits_BV = self.net(normed_BS).to(weight_VH.dtype) @ weight_VH.T
        return torch.log_softmax(logits_BV.float(), dim=-1)

    def retrieve(self, logp_BV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best bank descriptor per utterance, by the mean pointwise mutual information of its tokens ->
        (ids B x T, valid B x T, bank row B; -1 and nothing valid when the bank is empty)."""
        count = self.bank_count
        width = self.bank_ids.shape[1]
        if count == 0:
            batch = logp_BV.shape[0]
            return (torch.zeros(batch, width, dtype=torch.long, device=logp_BV.device),
                    torch.zeros(batch, width, dtype=torch.bool, device=logp_BV.device),
                    torch.full((batch,), -1, dtype=torch.long, device=logp_BV.device))
        bank_KT = self.bank_ids[:count].long()
        valid_KT = bank_KT != BANK_PAD
        # Pointwise mutual information, log p(token | audio) - log p(token): words every descriptor uses
        # ("the", "with", commas) cancel, and the choice rests on the words that tell descriptors apart.
        gain_BV = logp_BV.detach() - self.bank_log_prior(logp_BV.shape[-1]).to(logp_BV.device)
        token_gain_BKT = gain_BV[:, bank_KT.clamp(min=0)] * valid_KT
        score_BK = token_gain_BKT.sum(-1) / valid_KT.sum(-1)
        best_B = score_BK.argmax(-1)
        return bank_KT[best_B].clamp(min=0), valid_KT[best_B], best_B


def bag_of_words_loss(logp_BV: torch.Tensor, ids_BD: torch.Tensor) -> torch.Tensor:
    """Minus the mean log-probability of each reference descriptor's tokens (`ids_BD`, right-padded with
    IGNORE), averaged over the rows that have one (an empty one is skipped: a corpus without a descriptor
    for that utterance). No host synchronisation."""
    valid_BD = ids_BD != IGNORE
    counts_B = valid_BD.sum(-1)
    per_row_B = -(logp_BV.gather(1, ids_BD.clamp(min=0)) * valid_BD).sum(-1) / counts_B.clamp(min=1)
    has_B = (counts_B > 0).to(per_row_B.dtype)
    return (per_row_B * has_B).sum() / has_B.sum().clamp(min=1)


def draft_tokens(ids_BT: torch.Tensor, valid_BT: torch.Tensor, embedding_VH: torch.Tensor,
                 references: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token embeddings B x T x H, valid B x T) for the slot: the retrieved descriptors, except that the
    rows `use_B` of `references = (ids_BD, use_B)` get their reference ids instead (teacher forcing, cut
    to T; ids_BD right-padded with IGNORE)."""
    if references is not None:
        ref_BD, use_B = references
        width = ids_BT.shape[1]
        ref_BT = torch.nn.functional.pad(ref_BD[:, :width], (0, max(0, width - ref_BD.shape[1])), value=IGNORE)
        use_B1 = use_B.to(ids_BT.device)[:, None]
        ids_BT = torch.where(use_B1, ref_BT.clamp(min=0).to(ids_BT.dtype), ids_BT)
        valid_BT = torch.where(use_B1, ref_BT != IGNORE, valid_BT)
    weight_VH = embedding_VH.detach()
    return weight_VH[ids_BT] * valid_BT[..., None].to(weight_VH.dtype), valid_BT


def valid_first(tokens_BNH: torch.Tensor, valid_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid tokens to its front, in order: the prompt takes a row's first `valid.sum()`."""
    order_BN = torch.argsort((~valid_BN).to(torch.int8), dim=1, stable=True)
    return (torch.gather(tokens_BNH, 1, order_BN[..., None].expand_as(tokens_BNH)),
            torch.gather(valid_BN, 1, order_BN))
