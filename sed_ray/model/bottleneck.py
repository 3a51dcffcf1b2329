"""Disentanglement block: softmax-weighted sum of encoder layers -> variational information bottleneck.

Shape legend: L hidden states, B batch, F frames, D encoder width, Z latent width.

KL convention: KL(q(z|x) || N(0, I)) summed over the Z latent dimensions of a frame, then averaged
over the valid (unpadded) frames of the batch. So beta weighs "nats per frame".
"""

from __future__ import annotations

import torch
from torch import nn


class LayerWeightedSum(nn.Module):
    """Learnable softmax weights over the L hidden states (initialised uniform)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, hidden_LBFD: torch.Tensor) -> torch.Tensor:
        w = self.weights.to(hidden_LBFD.dtype)
        return torch.einsum("l,lbfd->bfd", w, hidden_LBFD)


def masked_kl(mu_BFZ: torch.Tensor, logvar_BFZ: torch.Tensor, mask_BF: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)): summed over Z, averaged over valid frames; in float32 whatever
    the block computes in (a bf16 sum over thousands of frames would lose the small terms)."""
    mu_BFZ, logvar_BFZ = mu_BFZ.float(), logvar_BFZ.float()
    kl_BF = 0.5 * (mu_BFZ.pow(2) + logvar_BFZ.exp() - 1.0 - logvar_BFZ).sum(-1)
    valid = mask_BF.to(kl_BF.dtype)
    return (kl_BF * valid).sum() / valid.sum().clamp(min=1.0)


class VariationalBottleneck(nn.Module):
    """Two-layer perceptron giving mu and log-variance; reparameterised sample while training, mu otherwise."""

    def __init__(self, in_dim: int, hidden: int, latent: int, init_logvar: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * latent))
        with torch.no_grad():  # the starting posterior variance: see ModelConfig.bottleneck_init_logvar
            self.net[-1].bias[latent:].fill_(init_logvar)

    def forward(self, x_BFD: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu_BFZ, logvar_BFZ = self.net(x_BFD).chunk(2, dim=-1)
        logvar_BFZ = logvar_BFZ.clamp(-20.0, 10.0)  # keeps exp() finite early in training
        if sample:
            z_BFZ = mu_BFZ + torch.randn_like(mu_BFZ) * torch.exp(0.5 * logvar_BFZ)
        else:
            z_BFZ = mu_BFZ
        return z_BFZ, mu_BFZ, logvar_BFZ


class DisentanglementBlock(nn.Module):
    """Its own layer weighting + its own bottleneck: one per branch (content, descriptor)."""

    def __init__(self, num_layers: int, in_dim: int, hidden: int, latent: int, init_logvar: float = 0.0) -> None:
        super().__init__()
        self.layer_sum = LayerWeightedSum(num_layers)
        self.bottleneck = VariationalBottleneck(in_dim, hidden, latent, init_logvar)

    @property
    def trainable(self) -> bool:
        return self.layer_sum.logits.requires_grad

    def forward(self, hidden_LBFD: torch.Tensor, mask_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (z B x F x Z, KL scalar). A frozen block behaves as at inference (z = mu): its stage is over.
        Computes in its own weights' dtype: float32, or bf16 where DeepSpeed's bf16 mode cast the module
        (its fp32 master copy then lives in the optimiser)."""
        x_BFD = self.layer_sum(hidden_LBFD).to(self.bottleneck.net[0].weight.dtype)
        z_BFZ, mu_BFZ, logvar_BFZ = self.bottleneck(x_BFD, sample=self.training and self.trainable)
        return z_BFZ, masked_kl(mu_BFZ, logvar_BFZ, mask_BF)
