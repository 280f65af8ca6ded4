"""MONet (Burgess et al., "MONet: Unsupervised Scene Decomposition and Representation", 2019) with the BASK
authors' settings (robot-learning-freiburg/bask, `models/monet/`, `config.py`).

Attention: a U-Net (5 blocks down and up, each a 3 x 3 convolution, instance norm and ReLU, halving or doubling
the resolution by nearest-neighbour resizing; channels c, 2c, 4c, 8c, 8c; an MLP of 128, 128 at the bottom) reads
the image and the log scope and gives logits l of alpha = sigmoid(l). In log space, which stays finite where
alpha saturates: log alpha = logsigmoid(l), log(1 - alpha) = logsigmoid(l) - l; slot k's mask is
log m_k = log s_k + log alpha_k and the next scope log s_{k+1} = log s_k + log(1 - alpha_k), from log s_1 = 0;
the last slot takes the remaining scope. 6 slots.

Component VAE (one for the first, background slot and one shared by the others, as the authors): the image and
the slot's log mask through 4 convolutions (3 x 3, stride 2; channels c, c, 2c, 2c) and an MLP of 256 to the mean
and log-variance of a 16-d latent; a spatial-broadcast decoder (the latent tiled over an (S + 8)^2 grid with x, y
coordinates, 4 unpadded 3 x 3 convolutions of c channels, a 1 x 1 convolution) gives the slot's RGB mean and
mask logits.

Loss: the per-pixel mixture likelihood -log sum_k m_k N(x; mu_k, sigma_k^2) over the 3 channels, with sigma 0.09
for the first (background) slot and 0.12 for the others, summed over pixels; + beta KL(q(z) || N(0, 1)) summed
over slots and latent (beta 0.5 as the issue; the authors' RLBench config uses 5); + gamma KL(m || softmax of the
decoded mask logits) summed over pixels (gamma 0.5). All averaged over the batch. The likelihood term is offset by
a constant, the log density of a perfect reconstruction by the sharpest component, so that it is 0 at best and
the loss is never negative (its gradients are the likelihood's). The policy reads the slots' latent means
concatenated: 6 x 16 = 96 features per camera.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dckp.representations.bvae import kl_normal
from dckp.representations.config import MONET_PRESETS as PRESETS
from dckp.representations.config import MonetConfig as Config

__all__ = ["PRESETS", "AttentionNet", "ComponentVae", "Config", "Monet", "build", "feature_dim", "features",
           "loss", "masks", "picture"]
PAIRS = False  # trained on single frames


def _block(cin: int, cout: int) -> nn.Sequential:
    """3 x 3 convolution (no bias), instance norm, ReLU: a step of the attention U-Net."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout, affine=True),
                         nn.ReLU())


class AttentionNet(nn.Module):
    """The U-Net: (image, log scope) -> attention logits `(B, 1, S, S)`. Down: blocks of c, 2c, 4c, 8c, 8c
    channels, halving after each but the last; the MLP on the bottom's flattened map; up: blocks of 8c, 4c, 2c,
    c, c on the previous output and the down path's map of the same size, doubling after each but the last."""

    def __init__(self, c: int, image_size: int):
        super().__init__()
        down = [c, 2 * c, 4 * c, 8 * c, 8 * c]
        up = [8 * c, 4 * c, 2 * c, c, c]
        self.down = nn.ModuleList(_block(cin, cout) for cin, cout in zip([4] + down[:-1], down, strict=True))
        self.up = nn.ModuleList(_block(2 * cin, cout) for cin, cout in zip([8 * c] + up[:-1], up, strict=True))
        flat = 8 * c * (image_size // 16) ** 2
        self.mlp = nn.Sequential(nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                 nn.Linear(128, flat), nn.ReLU())
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor, log_scope: torch.Tensor) -> torch.Tensor:
        h, skips = torch.cat([x, log_scope], 1), []
        for i, block in enumerate(self.down):
            skip = block(h)
            skips.append(skip)
            h = F.interpolate(skip, scale_factor=0.5, mode="nearest") if i < 4 else skip
        h = self.mlp(h.flatten(1)).view(h.shape)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips[4 - i]], 1))
            if i < 4:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(h)


class ComponentVae(nn.Module):
    """(image, log mask) -> latent (mu, logvar); latent -> (RGB mean `(B, 3, S, S)`, mask logits `(B, 1, S, S)`)
    by a spatial-broadcast decoder."""

    def __init__(self, cfg: Config):
        super().__init__()
        c, S = cfg.vae_channels, cfg.image_size
        self.latent_dim, self.size = cfg.latent_dim, S
        convs, cin = [], 4
        for cout in (c, c, 2 * c, 2 * c):
            convs += [nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU()]
            cin = cout
        self.encoder = nn.Sequential(*convs, nn.Flatten(), nn.Linear(2 * c * (S // 16) ** 2, 256), nn.ReLU(),
                                     nn.Linear(256, 2 * cfg.latent_dim))
        layers, cin = [], cfg.latent_dim + 2
        for _ in range(4):
            layers += [nn.Conv2d(cin, c, 3), nn.ReLU()]
            cin = c
        self.decoder = nn.Sequential(*layers, nn.Conv2d(c, 4, 1))
        side = torch.linspace(-1, 1, S + 8)
        ys, xs = torch.meshgrid(side, side, indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys])[None], persistent=False)

    def encode(self, x: torch.Tensor, log_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.encoder(torch.cat([x, log_mask], 1))
        return params[:, :self.latent_dim], params[:, self.latent_dim:]

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, n = z.shape[0], self.size + 8
        out = self.decoder(torch.cat([z[:, :, None, None].expand(B, -1, n, n), self.grid.expand(B, -1, -1, -1)], 1))
        return out[:, :3], out[:, 3:]


class Monet(nn.Module):
    """The attention network and the two component VAEs (`vaes[0]` for the first slot, `vaes[1]` for the rest)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.slots = cfg.slots
        self.attention = AttentionNet(cfg.attention_channels, cfg.image_size)
        self.vaes = nn.ModuleList([ComponentVae(cfg), ComponentVae(cfg)])

    def log_masks(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, slots, 1, S, S)` log attention masks (they sum to 1 over slots)."""
        log_scope, out = torch.zeros_like(x[:, :1]), []
        for _ in range(self.slots - 1):
            logits = self.attention(x, log_scope)
            log_alpha = F.logsigmoid(logits)
            out.append(log_scope + log_alpha)
            log_scope = log_scope + log_alpha - logits  # + log(1 - alpha)
        out.append(log_scope)
        return torch.stack(out, 1)

    def encode(self, x: torch.Tensor, log_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots' latent (mu, logvar), each `(B, slots, latent)`."""
        log_masks = self.log_masks(x) if log_masks is None else log_masks
        params = [self.vaes[min(k, 1)].encode(x, log_masks[:, k]) for k in range(self.slots)]
        return torch.stack([p[0] for p in params], 1), torch.stack([p[1] for p in params], 1)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """log_masks `(B, K, 1, S, S)`, mu/logvar `(B, K, L)`, rgb `(B, K, 3, S, S)` and mask_logits
        `(B, K, 1, S, S)` decoded from z = mu + noise * std (`noise (B, K, L)`; None: decoded from mu)."""
        log_masks = self.log_masks(x)
        mu, logvar = self.encode(x, log_masks)
        z = mu if noise is None else mu + noise * torch.exp(0.5 * logvar)
        decoded = [self.vaes[min(k, 1)].decode(z[:, k]) for k in range(self.slots)]
        return {"log_masks": log_masks, "mu": mu, "logvar": logvar, "rgb": torch.stack([d[0] for d in decoded], 1),
                "mask_logits": torch.stack([d[1] for d in decoded], 1)}


def build(cfg: Config) -> Monet:
    return Monet(cfg)


def feature_dim(cfg: Config) -> int:
    """Features per camera: every slot's latent mean."""
    return cfg.slots * cfg.latent_dim


def loss(model: Monet, images: torch.Tensor, cfg: Config, noise_of: Callable[..., torch.Tensor]
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mixture negative log-likelihood (offset to be 0 at best) + beta KL_z + gamma KL_mask of a batch; the noise
    is `noise_of(*shape)`: standard normal `(B, *shape)` on the CPU."""
    noise = noise_of(cfg.slots, cfg.latent_dim).to(images.device)
    out = model(images, noise)
    sigma = torch.full((cfg.slots,), cfg.sigma_fg, device=images.device)
    sigma[0] = cfg.sigma_bg
    sigma = sigma.view(1, -1, 1, 1)
    # per slot and pixel: log N(x; mu_k, sigma_k^2) over 3 channels, less the sharpest component's log N(x; x)
    log_px = (-0.5 * ((images[:, None] - out["rgb"]) / sigma[..., None]) ** 2).sum(2)
    log_px = log_px - 3 * torch.log(sigma / min(cfg.sigma_bg, cfg.sigma_fg))
    nll = -torch.logsumexp(out["log_masks"][:, :, 0] + log_px, 1).sum((1, 2)).mean()
    kl_z = kl_normal(out["mu"], out["logvar"]).sum((1, 2)).mean()
    log_m = out["log_masks"]
    kl_mask = (log_m.exp() * (log_m - out["mask_logits"].log_softmax(1))).sum((1, 2, 3, 4)).mean()
    total = nll + cfg.beta * kl_z + cfg.gamma * kl_mask
    return total, {"loss": total.detach(), "likelihood": nll.detach(), "kl_z": kl_z.detach(),
                   "kl_mask": kl_mask.detach()}


@torch.no_grad()
def features(model: Monet, images: torch.Tensor) -> torch.Tensor:
    """`(B, slots * latent)`: the slots' latent means, slot by slot."""
    return model.encode(images)[0].flatten(1)


@torch.no_grad()
def masks(model: Monet, images: torch.Tensor) -> torch.Tensor:
    """`(B, slots, S, S)` attention masks."""
    return model.log_masks(images)[:, :, 0].exp()


@torch.no_grad()
def picture(model: Monet, images: torch.Tensor) -> tuple[str, bytes]:
    """`slots.png`: per input (columns), the input, the reconstruction, then per slot its mask and its masked
    reconstruction."""
    from dckp.representations.plots import image_grid

    out = model(images, None)
    m = out["log_masks"].exp()
    recon = (m * out["rgb"]).sum(1)
    rows = [[_hwc(x) for x in images], [_hwc(x) for x in recon]]
    labels = ["input", "reconstruction"]
    for k in range(model.slots):
        rows.append([x[0].cpu().numpy() for x in m[:, k]])
        rows.append([_hwc(x) for x in m[:, k] * out["rgb"][:, k]])
        labels += [f"mask {k}", f"slot {k}"]
    return "slots.png", image_grid(rows, labels, "MONet: masks and masked reconstructions per slot")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()

