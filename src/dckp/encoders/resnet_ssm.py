"""`resnet-ssm`: robomimic's visual core, a strong modern end-to-end baseline that the paper lacks.

As robomimic's BC-RNN-image (`VisualCore`): a ResNet-18 trunk (torchvision, randomly initialised, without its
pooling and classifier), a spatial softmax with 32 keypoints (a 1 x 1 convolution to 32 maps, softmax over each
map, the expected (x, y) in [-1, 1]) and a linear layer to 64 features per camera. Images are resized to
`resize` pixels (84, robomimic's image size) and cropped to `crop` (76): at a random offset in training, the
centre at test time, as robomimic's crop randomiser. Every camera goes through the same network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dckp.config import option
from dckp.encoders.augment import centre_crop, random_crop
from dckp.encoders.base import Encoder
from dckp.errors import DckpError


@dataclass
class ResnetSsmOptions:
    resize: int = option(84, "resnet-ssm: images resized to this many pixels (robomimic: 84)")
    crop: int = option(76, "resnet-ssm: random crop in training, centre crop at test time (robomimic: 76)")
    spatial_keypoints: int = option(32, "resnet-ssm: spatial-softmax keypoints per camera")
    feature_dim: int = option(64, "resnet-ssm: features per camera after the linear layer")

    def __post_init__(self):
        if not 32 <= self.crop <= self.resize:
            raise DckpError(f"need 32 <= crop <= resize, got crop {self.crop}, resize {self.resize}", field="crop")
        for name in ("spatial_keypoints", "feature_dim"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)


class SpatialSoftmax(nn.Module):
    """`(B, C, H, W)` -> `(B, 2K)`: per keypoint map, the softmax-weighted mean of the pixel coordinates."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.conv(x)
        B, K, H, W = maps.shape
        prob = maps.flatten(2).softmax(-1).view(B, K, H, W)
        ys, xs = torch.linspace(-1, 1, H, device=x.device), torch.linspace(-1, 1, W, device=x.device)
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1).flatten(1)


class ResnetSsm(Encoder):
    name = "resnet-ssm"
    options = ResnetSsmOptions
    inputs = ("rgb",)
    trainable = True

    def __init__(self, cameras, image_size, options=None, **artefacts):
        import torchvision

        super().__init__(cameras, image_size, options)
        trunk = torchvision.models.resnet18(weights=None)
        self.trunk = nn.Sequential(*list(trunk.children())[:-2])
        self.pool = SpatialSoftmax(512, self.opts.spatial_keypoints)
        self.linear = nn.Linear(2 * self.opts.spatial_keypoints, self.opts.feature_dim)

    def output_dim(self) -> int:
        return len(self.cameras) * self.opts.feature_dim

    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = self.linear.weight.device
        out = []
        for cam in self.cameras:
            x = frames[f"{cam}_rgb"].to(device).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(self.opts.resize,) * 2, mode="bilinear", antialias=True, align_corners=False)
            x = random_crop(x, self.opts.crop) if self.training else centre_crop(x, self.opts.crop)
            out.append(self.linear(self.pool(self.trunk(x))))
        return torch.cat(out, 1)
