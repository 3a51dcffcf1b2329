"""Downsampling by frame stacking + ReLU MLP into the LLM's embedding width (SLAM-LLM style).

Shape legend: B batch, F frames, Z latent width, N pseudo-tokens (ceil(F / k)), H LLM width.
"""

from __future__ import annotations

import torch
from torch import nn


def stack_frames(z_BFZ: torch.Tensor, mask_BF: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate each run of k frames into one vector. F not divisible by k: the tail is zero-padded,
    and a stacked token is valid when its first frame is."""
    batch, frames, width = z_BFZ.shape
    pad = (-frames) % k
    if pad:
        z_BFZ = torch.nn.functional.pad(z_BFZ, (0, 0, 0, pad))
        mask_BF = torch.nn.functional.pad(mask_BF, (0, pad), value=False)
    z_BFZ = z_BFZ * mask_BF[..., None].to(z_BFZ.dtype)  # padded frames contribute zeros, not garbage
    stacked_BNK = z_BFZ.reshape(batch, (frames + pad) // k, k * width)
    return stacked_BNK, mask_BF[:, ::k]


class Adapter(nn.Module):
    def __init__(self, latent: int, k: int, hidden: int, llm_width: int) -> None:
        super().__init__()
        self.k = k
        self.net = nn.Sequential(nn.Linear(latent * k, hidden), nn.ReLU(), nn.Linear(hidden, llm_width))

    def forward(self, z_BFZ: torch.Tensor, mask_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pseudo-token embeddings B x N x H, token mask B x N)."""
        stacked, mask_BN = stack_frames(z_BFZ, mask_BF, self.k)
        return self.net(stacked), mask_BN
