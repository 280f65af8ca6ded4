"""beta-VAE (Higgins et al., ICLR 2017) as the BASK authors configure it (robot-learning-freiburg/bask,
`models/bvae/beta_vae.py`): four convolutions of 32 channels, kernel 4, stride 2, each with BatchNorm and ReLU, a
fully connected layer of 128, then the mean and log-variance of a 32-d latent; the decoder mirrors it (fully
connected 128 and back to the last feature map, four transposed convolutions with BatchNorm and ReLU, a 3 x 3
convolution to RGB and a sigmoid). The policy reads the latent mean: 32 features per camera.

Loss: reconstruction + beta * KL, beta = 1.5: the squared error summed over the image's pixels and channels (the
negative log-likelihood of a Gaussian of variance 1/2, up to a constant) and the KL summed over the latent, both
averaged over the batch. The authors (`encoder/bvae.py`) average the squared error over pixels instead and
multiply the KL by `kld_weight = batch / dataset size` (their `kld_correction`, PyTorch-VAE's `M_N`): against
their per-pixel error the KL weighs 1.5 x 16 / N, 0.005 for N = 5000 frames, a weight that shrinks as the data
grows. We do not use that factor. (Without it, their per-pixel mean error + 1.5 KL would price one nat of latent
information above the whole image's error, and the posterior would fall onto the prior.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dckp.representations.config import BVAE_PRESETS as PRESETS
from dckp.representations.config import BvaeConfig as Config

__all__ = ["PRESETS", "BetaVae", "Config", "build", "feature_dim", "features", "loss", "picture"]
PAIRS = False  # trained on single frames


class BetaVae(nn.Module):
    """The beta-VAE: `encode` gives (mu, logvar), `decode` an image in [0, 1]."""

    def __init__(self, cfg: Config):
        super().__init__()
        c, s = cfg.conv_channels, cfg.image_size // 16
        self.shape = (c, s, s)
        down, cin = [], 3
        for _ in range(4):
            down += [nn.Conv2d(cin, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU()]
            cin = c
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(c * s * s, cfg.hidden), nn.ReLU())
        self.mu, self.logvar = nn.Linear(cfg.hidden, cfg.latent_dim), nn.Linear(cfg.hidden, cfg.latent_dim)
        self.decoder_input = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(),
                                           nn.Linear(cfg.hidden, c * s * s))
        up = []
        for _ in range(4):
            up += [nn.ConvTranspose2d(c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU()]
        self.decoder = nn.Sequential(*up, nn.Conv2d(c, 3, 3, 1, 1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_input(z).view(len(z), *self.shape))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar) of images `x (B, 3, S, S)`, with `noise (B, latent)` ~ N(0, 1)."""
        mu, logvar = self.encode(x)
        return self.decode(mu + noise * torch.exp(0.5 * logvar)), mu, logvar


def build(cfg: Config) -> BetaVae:
    return BetaVae(cfg)


def feature_dim(cfg: Config) -> int:
    """Features per camera: the latent mean."""
    return cfg.latent_dim


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per element."""
    return -0.5 * (1 + logvar - mu**2 - logvar.exp())


def loss(model: BetaVae, images: torch.Tensor, cfg: Config, noise_of: Callable[..., torch.Tensor]
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """reconstruction + beta * KL of a batch `(B, 3, S, S)`; the noise is `noise_of(*shape)`: standard normal
    `(B, *shape)` on the CPU."""
    noise = noise_of(cfg.latent_dim).to(images.device)
    recon, mu, logvar = model(images, noise)
    reconstruction = ((recon - images) ** 2).sum((1, 2, 3)).mean()
    kl = kl_normal(mu, logvar).sum(1).mean()
    total = reconstruction + cfg.beta * kl
    return total, {"loss": total.detach(), "reconstruction": reconstruction.detach(), "kl": kl.detach()}


@torch.no_grad()
def features(model: BetaVae, images: torch.Tensor) -> torch.Tensor:
    """`(B, latent_dim)`: the latent mean."""
    return model.encode(images)[0]


@torch.no_grad()
def picture(model: BetaVae, images: torch.Tensor) -> tuple[str, bytes]:
    """`reconstructions.png`: inputs (top row) and the reconstructions of their latent means (bottom row)."""
    from dckp.representations.plots import image_grid

    recon = model.decode(model.encode(images)[0])
    rows = [[_hwc(x) for x in images], [_hwc(x) for x in recon]]
    return "reconstructions.png", image_grid(rows, ["input", "reconstruction"], "beta-VAE: inputs and "
                                             "reconstructions of the latent mean")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()

