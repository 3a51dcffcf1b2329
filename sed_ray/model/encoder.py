"""Frozen SSL speech encoder (HuBERT or any wav2vec2-family checkpoint): all hidden states + frame mask.

Shape legend: B batch, T samples, F frames (50 Hz), L hidden states (CNN output + each layer), D width.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def _load_normalize_flag(name_or_path: str, config) -> bool:
    """Whether the checkpoint expects per-utterance normalised input: its feature-extractor config
    says so when present; otherwise the models with layer-norm feature extractors (HuBERT-large,
    wav2vec2-large-lv60) were trained normalised and the group-norm ones (base) were not."""
    local = Path(name_or_path) / "preprocessor_config.json"
    if local.exists():
        return bool(json.loads(local.read_text()).get("do_normalize", False))
    try:
        from transformers import AutoFeatureExtractor

        return bool(getattr(AutoFeatureExtractor.from_pretrained(name_or_path), "do_normalize", False))
    except (OSError, ValueError):
        return getattr(config, "feat_extract_norm", "group") == "layer"


class SpeechEncoder(nn.Module):
    """Wraps a frozen `AutoModel` checkpoint. Never trains: eval mode and no gradients, always."""

    def __init__(self, model: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize
        # group-norm feature extractors must not be given an attention mask (their training saw none)
        self.use_attention_mask = getattr(model.config, "feat_extract_norm", "group") == "layer"
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str, normalize: bool | None = None, dtype: torch.dtype = torch.float32):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=False)
        return cls(model, _load_normalize_flag(name_or_path, model.config) if normalize is None else normalize)

    @property
    def num_hidden_states(self) -> int:
        return self.model.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True):  # the encoder stays in eval mode whatever the parent does
        super().train(mode)
        self.model.eval()
        return self

    def frame_lengths(self, lengths_B: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lengths_B).to(torch.long)

    @torch.no_grad()
    def forward(self, pcm_BT: torch.Tensor, lengths_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float audio in [-1, 1] -> (hidden states L x B x F x D, frame mask B x F)."""
        mask_BT = torch.arange(pcm_BT.shape[1], device=pcm_BT.device)[None, :] < lengths_B[:, None]
        x_BT = pcm_BT.masked_fill(~mask_BT, 0.0)
        if self.normalize:  # statistics over the valid samples of each utterance only
            n = lengths_B.clamp(min=1).to(x_BT.dtype)[:, None]
            mean = x_BT.sum(1, keepdim=True) / n
            var = ((x_BT - mean).masked_fill(~mask_BT, 0.0) ** 2).sum(1, keepdim=True) / n
            x_BT = ((x_BT - mean) / torch.sqrt(var + 1e-7)).masked_fill(~mask_BT, 0.0)
        dtype = next(self.model.parameters()).dtype
        out = self.model(x_BT.to(dtype), attention_mask=mask_BT.long() if self.use_attention_mask else None,
                         output_hidden_states=True, return_dict=True)
        hidden_LBFD = torch.stack(out.hidden_states, dim=0)
        frames_B = self.frame_lengths(lengths_B).clamp(max=hidden_LBFD.shape[2])
        mask_BF = torch.arange(hidden_LBFD.shape[2], device=pcm_BT.device)[None, :] < frames_B[:, None]
        return hidden_LBFD, mask_BF
