"""Behaviour-cloning policy config, with `cpu` and `paper` presets.

The policy predicts the mean of a Gaussian over the action `a = [dx, dy, dz, rx, ry, rz, g]` with a fixed
standard deviation per dimension, given in action units: translation is scaled by 0.05 m and rotation by 0.5 rad
per step (docs/conventions.md), so 1 mm is 0.001 / 0.05 = 0.02 and 0.25 degrees is radians(0.25) / 0.5 = 0.0087266.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dckp.errors import DckpError

PROPRIO = ("joint_pos", "eef_pose")


@dataclass
class PolicyConfig:
    """LSTM policy and its training.

    - `hidden`: width of the input MLP layer and of the LSTM; `layers`: LSTM layers.
    - `steps`: Adam steps (1000 for single-object tasks, 1500 for multi-object ones; the caller sets it).
    - `batch_size`: demonstrations per step, drawn uniformly with replacement.
    - `seq_len`: 0 trains on whole demonstrations (padded to the batch's longest, with a mask), so the LSTM
      always starts from a zero state at t = 0 exactly as in closed-loop control; `seq_len > 0` trains on random
      windows of that length (the whole demo when shorter), started from a zero state.
    - `std_translation`, `std_rotation`, `std_gripper`: the Gaussian's fixed std in action units (1 mm,
      0.25 degrees, 0.1 of the gripper's [-1, 1] range).
    - `proprio`: the proprioception appended to the encoder's features: `joint_pos` (7) or `eef_pose`
      (eef_pos 3 + eef_quat 4 wxyz with w >= 0 + gripper_qpos 2 = 9); see `dckp.policy.proprioception`.
    - `checkpoint_every`: steps between resumable checkpoints (`policy_last.safetensors`).
    """

    hidden: int = 128
    layers: int = 2
    lr: float = 3e-4
    weight_decay: float = 3e-6
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 0
    std_translation: float = 0.001 / 0.05
    std_rotation: float = math.radians(0.25) / 0.5
    std_gripper: float = 0.1
    proprio: str = "eef_pose"
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        for name in ("hidden", "layers", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise DckpError(f"{name} must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("lr", "std_translation", "std_rotation", "std_gripper"):
            if not getattr(self, name) > 0:
                raise DckpError(f"{name} must be > 0, got {getattr(self, name)}", field=name)
        if self.seed < 0:
            raise DckpError(f"seed must be >= 0, got {self.seed}", field="seed")
        if self.weight_decay < 0:
            raise DckpError(f"weight_decay must be >= 0, got {self.weight_decay}", field="weight_decay")
        if self.seq_len < 0:
            raise DckpError(f"seq_len must be >= 0 (0 = whole demonstrations), got {self.seq_len}", field="seq_len")
        if self.proprio not in PROPRIO:
            raise DckpError(f"proprio must be one of {list(PROPRIO)}, got {self.proprio!r}", field="proprio")


def action_std(cfg: PolicyConfig) -> torch.Tensor:
    """`(7,)` float32 std per action dimension: 3 x translation, 3 x rotation, gripper."""
    return torch.tensor([cfg.std_translation] * 3 + [cfg.std_rotation] * 3 + [cfg.std_gripper])


# Network sizes are this implementation's choice; `paper` only differs where more compute is affordable.
POLICY_PRESETS = {
    "cpu": PolicyConfig(hidden=128, layers=2, batch_size=16),
    "paper": PolicyConfig(hidden=256, layers=2, batch_size=32),
}
