"""Transporter (Kulkarni et al., "Unsupervised Learning of Object Keypoints for Perception and Control", NeurIPS
2019) with the BASK authors' settings (robot-learning-freiburg/bask, `config.py`): a feature network and a
keypoint network, each 4 conv blocks (channels 32, 32, 64, 128; kernels 7, 3, 3, 3; strides 1, 1, 2, 1; each
with BatchNorm and ReLU), the keypoint network ending in a 1 x 1 convolution to 10 heatmaps; each keypoint is the
spatial softmax's expected position, drawn back as a Gaussian map of std 0.1 (image-normalised units, [-1, 1]).

Training takes two frames of one demonstration, a source and a target, and reconstructs the target from the
source's features with the keypoint regions transported:

    transported = (1 - H_s) (1 - H_t) F_s + H_t F_t

with H the Gaussian maps summed over keypoints (clamped to 1) and F the feature maps; the source branch (F_s, H_s)
is computed without gradients (stop gradients through the source, as the paper). A refine network, the feature
network mirrored (nearest-neighbour upsampling where it strides), maps the transported features to the target
image; the loss is the mean squared error. Adam at 5e-4. The policy reads the keypoints' (x, y) in [-1, 1]:
2 x 10 = 20 features per camera.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dckp.representations.config import TRANSPORTER_PRESETS as PRESETS
from dckp.representations.config import TransporterConfig as Config

__all__ = ["PRESETS", "Config", "Transporter", "build", "feature_dim", "features", "gaussian_maps",
           "image_keypoints", "loss", "picture", "spatial_softmax", "transport"]
PAIRS = True  # trained on (source, target) pairs
KERNELS, STRIDES = (7, 3, 3, 3), (1, 1, 2, 1)


def conv_blocks(channels_in: int, channels: list[int]) -> nn.Sequential:
    """The 4 blocks of the feature and keypoint networks: convolution (KERNELS, STRIDES, 'same' padding),
    BatchNorm, ReLU."""
    layers = []
    for c, k, s in zip(channels, KERNELS, STRIDES, strict=True):
        layers += [nn.Conv2d(channels_in, c, k, s, k // 2), nn.BatchNorm2d(c), nn.ReLU()]
        channels_in = c
    return nn.Sequential(*layers)


def refine_net(channels: list[int]) -> nn.Sequential:
    """The feature network mirrored: blocks from the last channel count back to the first, upsampling (x2,
    nearest) where the feature network strides, then a convolution to RGB of the first block's kernel."""
    layers = []
    for i in range(len(channels) - 1, 0, -1):
        if STRIDES[i] > 1:
            layers.append(nn.Upsample(scale_factor=STRIDES[i], mode="nearest"))
        layers += [nn.Conv2d(channels[i], channels[i - 1], KERNELS[i], 1, KERNELS[i] // 2),
                   nn.BatchNorm2d(channels[i - 1]), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(channels[0], 3, KERNELS[0], 1, KERNELS[0] // 2))


def spatial_softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap logits `(B, K, h, w)` -> (expected positions `(B, K, 2)` as (x, y) in [-1, 1], the centres of the
    corner cells being -1 and 1; the softmax's peak probability `(B, K)`)."""
    B, K, h, w = logits.shape
    p = logits.flatten(2).softmax(-1).view(B, K, h, w)
    xs = torch.linspace(-1, 1, w, device=logits.device, dtype=p.dtype)
    ys = torch.linspace(-1, 1, h, device=logits.device, dtype=p.dtype)
    xy = torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)
    return xy, p.flatten(2).amax(-1)


def gaussian_maps(xy: torch.Tensor, h: int, w: int, std: float) -> torch.Tensor:
    """`(B, K, h, w)` isotropic Gaussians exp(-d^2 / (2 std^2)) around keypoints `xy (B, K, 2)` in [-1, 1]."""
    xs = torch.linspace(-1, 1, w, device=xy.device, dtype=xy.dtype)
    ys = torch.linspace(-1, 1, h, device=xy.device, dtype=xy.dtype)
    dx2 = (xs.view(1, 1, 1, w) - xy[..., 0, None, None]) ** 2
    dy2 = (ys.view(1, 1, h, 1) - xy[..., 1, None, None]) ** 2
    return torch.exp(-(dx2 + dy2) / (2 * std**2))


def heatmap(maps: torch.Tensor) -> torch.Tensor:
    """`(B, 1, h, w)`: the keypoints' Gaussian maps summed, clamped to 1."""
    return maps.sum(1, keepdim=True).clamp(max=1)


def transport(source_features: torch.Tensor, source_heatmap: torch.Tensor, target_features: torch.Tensor,
              target_heatmap: torch.Tensor) -> torch.Tensor:
    """(1 - H_s)(1 - H_t) F_s + H_t F_t: the source's features with both frames' keypoint regions removed, and the
    target's features pasted in around the target's keypoints. Heatmaps `(B, 1, h, w)`, features `(B, C, h, w)`."""
    return (1 - source_heatmap) * (1 - target_heatmap) * source_features + target_heatmap * target_features


class Transporter(nn.Module):
    """Feature network, keypoint network and refine network."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.std = cfg.keypoint_std
        channels = cfg.block_channels
        self.features = conv_blocks(3, channels)
        self.keypointer = nn.Sequential(conv_blocks(3, channels), nn.Conv2d(channels[-1], cfg.keypoints, 1))
        self.refine = refine_net(channels)

    def keypoints(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) in [-1, 1] `(B, K, 2)` and peak probability `(B, K)` of images `(B, 3, S, S)`."""
        return spatial_softmax(self.keypointer(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature maps `(B, C, h, w)`, keypoint heatmap `(B, 1, h, w)`)."""
        f = self.features(x)
        xy, _ = self.keypoints(x)
        return f, heatmap(gaussian_maps(xy, *f.shape[-2:], self.std))

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `target` from the transported features (no gradients through the source)."""
        with torch.no_grad():
            f_s, h_s = self.encode(source)
        f_t, h_t = self.encode(target)
        return self.refine(transport(f_s, h_s, f_t, h_t))


def build(cfg: Config) -> Transporter:
    return Transporter(cfg)


def feature_dim(cfg: Config) -> int:
    """Features per camera: each keypoint's (x, y)."""
    return 2 * cfg.keypoints


def loss(model: Transporter, pair: tuple[torch.Tensor, torch.Tensor], cfg: Config,
         noise_of: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error of the target's reconstruction from a `(source, target)` batch (`noise_of`: unused,
    the Transporter draws no noise)."""
    source, target = pair
    reconstruction = F.mse_loss(model(source, target), target)
    return reconstruction, {"loss": reconstruction.detach()}


@torch.no_grad()
def features(model: Transporter, images: torch.Tensor) -> torch.Tensor:
    """`(B, 2K)`: the keypoints' (x, y) in [-1, 1], keypoint by keypoint."""
    return model.keypoints(images)[0].flatten(1)


@torch.no_grad()
def image_keypoints(model: Transporter, images: torch.Tensor, height: int, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in the pixels of a `height x width` image (the image seen whole): `uv (B, K, 2)`, and the heatmap
    softmax's peak probability `(B, K)`. [-1, 1] spans the centres of the first and last pixels."""
    xy, peak = model.keypoints(images)
    scale = torch.tensor([width - 1, height - 1], dtype=xy.dtype, device=xy.device)
    return (xy + 1) / 2 * scale, peak


@torch.no_grad()
def picture(model: Transporter, pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[str, bytes]:
    """`keypoints.png`: sources and targets with their keypoints, and the targets' reconstructions."""
    from dckp.representations.plots import image_grid

    source, target = pair
    S = source.shape[-1]
    recon = model(source, target)
    rows, marks = [], []
    for images in (source, target):
        uv, _ = image_keypoints(model, images, S, S)
        rows.append([_hwc(x) for x in images])
        marks.append([p.cpu().numpy() for p in uv])
    rows.append([_hwc(x) for x in recon])
    marks.append([None] * len(recon))
    return "keypoints.png", image_grid(rows, ["source", "target", "reconstruction"],
                                       "Transporter: keypoints (one colour each) and the target's reconstruction",
                                       marks)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
