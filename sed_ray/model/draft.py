"""Descriptor draft: a first guess of the descriptor, as text tokens the LLM reads in its speaking-style slot.

Why (measured in docs/benchmarks.md, "Diagnosis"): a small LLM learns within ~100 steps to read *text*
put in the speaking-style slot, but not to build an utterance-level description from continuous frame
pseudo-tokens; it falls back to the one cue that is free, the utterance's length. The draft gives the
descriptor branch a direct path to text: pooled statistics of the branch's layer-weighted features ->
an MLP -> N positions in the LLM's embedding space -> logits against the LLM's own (frozen) embedding
matrix, trained with CTC against the reference descriptor. Greedy CTC decoding (blanks and repeats
dropped) gives hard token ids; their embeddings go in front of the branch's frame pseudo-tokens, with
a straight-through gradient so the LLM's loss reaches the draft too. Off in the paper's model
(`ModelConfig.draft_tokens = 0`); the tiny preset turns it on.

Shape legend: B batch, F frames, D feature width, N draft positions, V vocabulary, H LLM width.
"""

from __future__ import annotations

import torch
from torch import nn


def pooled_statistics(x_BFD: torch.Tensor, mask_BF: torch.Tensor) -> torch.Tensor:
    """Per utterance: mean and standard deviation over its valid frames, and its length (frames / 100)."""
    valid_BF1 = mask_BF[..., None].to(x_BFD.dtype)
    frames_B1 = valid_BF1.sum(1).clamp(min=1.0)
    mean_BD = (x_BFD * valid_BF1).sum(1) / frames_B1
    var_BD = (((x_BFD - mean_BD[:, None]) ** 2) * valid_BF1).sum(1) / frames_B1
    return torch.cat([mean_BD, var_BD.clamp(min=1e-6).sqrt(), frames_B1 / 100.0], dim=-1)


class DescriptorDraft(nn.Module):
    def __init__(self, in_dim: int, hidden: int, positions: int, llm_width: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.positions, self.llm_width, self.momentum = positions, llm_width, momentum
        stats = 2 * in_dim + 1
        # Each pooled feature is standardised across utterances (what the measured heads needed to learn
        # in a few hundred steps), always by running estimates that training updates: a training batch's
        # own statistics would differ from inference's, since the loader buckets utterances by length.
        self.register_buffer("running_mean", torch.zeros(stats))
        self.register_buffer("running_var", torch.ones(stats))
        self.net = nn.Sequential(nn.Linear(stats, hidden), nn.ReLU(), nn.Linear(hidden, positions * llm_width))

    def forward(self, x_BFD: torch.Tensor, mask_BF: torch.Tensor, embedding_VH: torch.Tensor) -> torch.Tensor:
        """-> logits B x N x V over the LLM's vocabulary (scored against its input embeddings)."""
        stats_BS = pooled_statistics(x_BFD.float(), mask_BF)
        if self.training and stats_BS.shape[0] > 1:  # one utterance has no spread to learn from
            with torch.no_grad():
                batch = stats_BS.detach()
                self.running_mean.lerp_(batch.mean(0), self.momentum)
                self.running_var.lerp_(batch.var(0), self.momentum)
        normed_BS = (stats_BS - self.running_mean) / torch.sqrt(self.running_var + 1e-5)
        hidden_BNH = self.net(normed_BS).view(-1, self.positions, self.llm_width)
        return hidden_BNH @ embedding_VH.detach().float().T


def greedy_ids(logits_BNV: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy CTC decoding: (argmax ids B x N, keep B x N) where keep drops blanks and repeated ids."""
    ids_BN = logits_BNV.argmax(-1)
    repeat_BN = torch.zeros_like(ids_BN, dtype=torch.bool)
    repeat_BN[:, 1:] = ids_BN[:, 1:] == ids_BN[:, :-1]
    return ids_BN, (ids_BN != blank) & ~repeat_BN


def draft_tokens(logits_BNV: torch.Tensor, embedding_VH: torch.Tensor, blank: int,
                 references: list[list[int] | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token embeddings B x N x H, valid B x N) for the slot. The hypothesis is hard (one id per kept
    position) with a straight-through gradient into the logits. A row whose `references[i]` is a list
    gets those ids instead (teacher forcing, truncated to N), with no gradient into the draft."""
    probs_BNV = torch.softmax(logits_BNV.float(), dim=-1)
    ids_BN, keep_BN = greedy_ids(logits_BNV, blank)
    hard_BNV = nn.functional.one_hot(ids_BN, probs_BNV.shape[-1]).to(probs_BNV.dtype)
    straight_BNV = hard_BNV - probs_BNV.detach() + probs_BNV
    weight_VH = embedding_VH.detach()
    tokens_BNH = straight_BNV.to(weight_VH.dtype) @ weight_VH
    if references is not None and any(r is not None for r in references):
        tokens_BNH, keep_BN = tokens_BNH.clone(), keep_BN.clone()
        for row, ids in enumerate(references):
            if ids is None:
                continue
            ids = list(ids)[:tokens_BNH.shape[1]]
            tokens_BNH[row] = 0.0
            keep_BN[row] = False
            if ids:
                tokens_BNH[row, :len(ids)] = weight_VH[torch.tensor(ids, device=weight_VH.device)]
                keep_BN[row, :len(ids)] = True
    return tokens_BNH, keep_BN


def valid_first(tokens_BNH: torch.Tensor, valid_BN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid tokens to its front, in order: the prompt takes a row's first `valid.sum()`."""
    order_BN = torch.argsort((~valid_BN).to(torch.int8), dim=1, stable=True)
    return (torch.gather(tokens_BNH, 1, order_BN[..., None].expand_as(tokens_BNH)),
            torch.gather(valid_BN, 1, order_BN))


def ctc_draft_loss(logits_BNV: torch.Tensor, targets: list[list[int]], blank: int) -> torch.Tensor:
    """CTC loss per target token, averaged over the rows that have a target (an empty one is skipped:
    a corpus without a descriptor for that utterance)."""
    rows = [i for i, t in enumerate(targets) if t]
    if not rows:
        return logits_BNV.sum() * 0.0
    log_probs_NBV = torch.log_softmax(logits_BNV[rows].float(), dim=-1).transpose(0, 1)
    flat = torch.tensor([t for i in rows for t in targets[i]], dtype=torch.long, device=logits_BNV.device)
    target_lengths = torch.tensor([len(targets[i]) for i in rows], dtype=torch.long, device=logits_BNV.device)
    input_lengths = torch.full((len(rows),), log_probs_NBV.shape[0], dtype=torch.long, device=logits_BNV.device)
    # zero_infinity: a descriptor longer than the draft's positions cannot be aligned; it adds nothing
    return nn.functional.ctc_loss(log_probs_NBV, flat, input_lengths, target_lengths, blank=blank,
                                  reduction="mean", zero_infinity=True)
