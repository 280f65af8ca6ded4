"""`cnn` and `cnnd`: the paper's end-to-end baselines, trained with the policy.

The authors' architecture (robot-learning-freiburg/bask, `encoder/cnn.py`): the image resized to 128 x 128
(bilinear), three convolutions of kernel 3, stride 2 and padding 1, each followed by ELU, with channels
3 -> 2 -> 1 -> 1: a 16 x 16 map, 256 features per camera. Every camera goes through the same network, and the
features are concatenated in sorted camera order. `cnnd` adds depth as a fourth channel, divided by
`DEPTH_RANGE` and clipped to [0, 1] like the colour channels (the authors feed raw metres). Augmentation: a
random shift of up to `shift` pixels in training (DrQ); the authors use none, which is the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dckp.config import option
from dckp.encoders.augment import random_shift
from dckp.encoders.base import Encoder
from dckp.errors import DckpError

SIZE = 128  # the authors' input size
DEPTH_RANGE = 2.0  # metres: depth / DEPTH_RANGE, clipped to [0, 1]


@dataclass
class CnnOptions:
    shift: int = option(0, "random-shift augmentation of end-to-end CNN inputs in training, in pixels (0: none, "
                        "as the paper)")

    def __post_init__(self):
        if self.shift < 0:
            raise DckpError(f"must be >= 0, got {self.shift}", field="shift")


class Cnn(Encoder):
    name = "cnn"
    options = CnnOptions
    inputs = ("rgb",)
    trainable = True

    def __init__(self, cameras, image_size, options=None, **artefacts):
        super().__init__(cameras, image_size, options)
        channels = 4 if "depth" in self.inputs else 3
        self.net = nn.Sequential(nn.Conv2d(channels, 2, 3, 2, 1), nn.ELU(), nn.Conv2d(2, 1, 3, 2, 1), nn.ELU(),
                                 nn.Conv2d(1, 1, 3, 2, 1), nn.ELU())

    def output_dim(self) -> int:
        return len(self.cameras) * (SIZE // 8) ** 2

    def image(self, frames: Mapping[str, torch.Tensor], cam: str) -> torch.Tensor:
        """`(B, C, 128, 128)` float network input of one camera."""
        rgb = frames[f"{cam}_rgb"]
        # converted and scaled in place, in one buffer: the numbers of `rgb.float() / 255` and of a concatenated
        # depth channel with a third of the memory traffic (the conversion was a third of a CPU training step)
        x = torch.empty((*rgb.shape[:-1], 4 if "depth" in self.inputs else 3), device=rgb.device)
        x[..., :3] = rgb
        x[..., :3].div_(255)
        if "depth" in self.inputs:
            x[..., 3] = frames[f"{cam}_depth"]
            x[..., 3].div_(DEPTH_RANGE).clamp_(0, 1)
        x = x.permute(0, 3, 1, 2)  # channels-last in memory: on the CPU, the convolutions' fast layout (cnnd's
        # backward pass 8x faster than from a channels-first copy, with the same numbers)
        if x.shape[-1] != SIZE:
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        return random_shift(x, self.opts.shift) if self.training else x

    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.cat([self.net(self.image(frames, cam).to(device)).flatten(1) for cam in self.cameras], 1)


class CnnDepth(Cnn):
    name = "cnnd"
    inputs = ("rgb", "depth")
