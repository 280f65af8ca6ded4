"""`lstm`: the paper's head. An input MLP layer, an LSTM and a linear layer predicting the mean of a Gaussian over
the action with a fixed standard deviation per dimension, so its loss is a weighted squared error.

The standard deviations are in action units: translation is scaled by 0.05 m and rotation by 0.5 rad per step
(docs/conventions.md), so 1 mm is 0.001 / 0.05 = 0.02 and 0.25 degrees is radians(0.25) / 0.5 = 0.0087266.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dckp.config import option
from dckp.errors import DckpError
from dckp.policy.heads.base import Head, masked_mean


@dataclass
class LSTMOptions:
    """`seq_len` 0 trains on whole demonstrations (padded to the batch's longest, with a mask), so the LSTM always
    starts from a zero state at t = 0 exactly as in closed-loop control; `seq_len > 0` trains on random windows of
    that length (the whole demo when shorter), also from a zero state, and control restarts from a zero state
    every `seq_len` steps, as robomimic's BC-RNN does."""

    hidden: int = option(128, "width of the input MLP layer and of the LSTM")
    layers: int = option(2, "LSTM layers")
    seq_len: int = option(0, "training window in steps (0: whole demonstrations)")
    std_translation: float = option(0.001 / 0.05, "lstm head: fixed std over dx, dy, dz in action units (1 mm)")
    std_rotation: float = option(math.radians(0.25) / 0.5, "lstm head: fixed std over rx, ry, rz in action units "
                                 "(0.25 degrees)")
    std_gripper: float = option(0.1, "lstm head: fixed std of the gripper action (range -1..1)")

    def __post_init__(self):
        for name in ("hidden", "layers"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.seq_len < 0:
            raise DckpError(f"must be >= 0 (0 = whole demonstrations), got {self.seq_len}", field="seq_len")
        for name in ("std_translation", "std_rotation", "std_gripper"):
            if not getattr(self, name) > 0:
                raise DckpError(f"must be > 0, got {getattr(self, name)}", field=name)


def action_std(opts: LSTMOptions) -> torch.Tensor:
    """`(7,)` float32 std per action dimension: 3 x translation, 3 x rotation, gripper."""
    return torch.tensor([opts.std_translation] * 3 + [opts.std_rotation] * 3 + [opts.std_gripper])


def nll(mean: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `actions (B, T, A)` under `N(mean, diag(std^2))`, `std (A,)` fixed.

    Per step: `l_bt = sum_d [(a_btd - mean_btd)^2 / (2 std_d^2) + log std_d + log(2 pi) / 2]`; the result is
    `sum_bt mask_bt l_bt / sum_bt mask_bt`, the average over the valid (`mask (B, T)` true) steps of all
    trajectories together.
    """
    std = std.to(mean)
    per_step = ((actions - mean) ** 2 / (2 * std**2) + std.log() + 0.5 * math.log(2 * math.pi)).sum(-1)
    return masked_mean(per_step, mask)


class LSTMHead(Head):
    name = "lstm"
    options = LSTMOptions

    def __init__(self, obs_dim: int, action_dim: int, options: LSTMOptions):
        super().__init__(obs_dim, action_dim, options)
        self.inp = nn.Sequential(nn.Linear(obs_dim, options.hidden), nn.ReLU())
        self.lstm = nn.LSTM(options.hidden, options.hidden, num_layers=options.layers, batch_first=True)
        self.out = nn.Linear(options.hidden, action_dim)
        self.register_buffer("std", action_std(options), persistent=False)
        self.reset()

    @classmethod
    def window(cls, options: LSTMOptions) -> tuple[int, int, int]:
        return options.seq_len, 0, 0

    def forward(self, obs: torch.Tensor, state=None):
        """`obs (B, T, F)` -> Gaussian means `(B, T, A)` and the LSTM state `(h, c)` after step T."""
        out, state = self.lstm(self.inp(obs), state)
        return self.out(out), state

    def loss(self, batch):
        return nll(self(batch["obs"])[0], batch["action"], batch["mask"], self.std)

    def reset(self) -> None:
        self.state, self.steps = None, 0

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        if self.opts.seq_len and self.steps % self.opts.seq_len == 0:
            self.state = None
        mean, self.state = self(obs[:, None], self.state)
        self.steps += 1
        return mean[:, 0].clamp(-1.0, 1.0)
