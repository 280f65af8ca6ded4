"""`blind`: no visual features, so the policy sees proprioception alone.

The standard control of a visual-representation comparison: a task on which `blind` comes close to
ground-truth keypoints does not test vision. Same LSTM, same training steps as every other encoder.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dckp.encoders.base import Encoder


class Blind(Encoder):
    name = "blind"

    def output_dim(self) -> int:
        return 0

    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`(B, 0)`: the batch size of the frames, no features."""
        return torch.zeros(len(next(iter(frames.values()))), 0)
