"""`blind`: no visual features, so the policy sees proprioception alone.

The standard control of a visual-representation comparison: a task on which `blind` comes close to
ground-truth keypoints does not test vision. Same LSTM, same training steps as every other encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dckp.encoders.base import register_encoder


@register_encoder("blind")
class Blind:
    needs_images = False  # evaluation need not render the cameras

    def feature_dim(self, cameras: Sequence[str]) -> int:
        return 0

    def encode(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`(B, 0)`: the batch size of the frames, no features."""
        return torch.zeros(len(next(iter(frames.values()))), 0)
