"""LSTM behaviour-cloning policy: observation features -> mean of a fixed-variance Gaussian over actions.

An observation is the encoder's feature vector with the proprioception appended (`proprioception`). The network
normalises it with per-feature mean and std buffers fitted on the training frames (saved with the weights), then
applies Linear(obs_dim, hidden) + ReLU, an LSTM (`layers` x `hidden`) and a Linear(hidden, action_dim) head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from dckp.errors import DckpError
from dckp.policy.config import PolicyConfig

State = tuple[torch.Tensor, torch.Tensor]


def proprioception(obs: Mapping[str, np.ndarray], kind: str) -> np.ndarray:
    """`(T, P)` float32 proprioception from a demonstration's `obs` group (docs/dataset.md).

    `joint_pos`: the 7 joint angles. `eef_pose`: `eef_pos (3)`, `eef_quat (4, wxyz)` and `gripper_qpos (2)`;
    the quaternion's sign is chosen so that w >= 0 (q and -q are the same rotation).
    """
    if kind == "joint_pos":
        return np.asarray(obs["joint_pos"], dtype=np.float32)
    if kind != "eef_pose":
        raise DckpError(f"proprio must be 'joint_pos' or 'eef_pose', got {kind!r}", field="proprio")
    quat = np.asarray(obs["eef_quat"], dtype=np.float32)
    quat = np.where(quat[:, :1] < 0, -quat, quat)
    return np.concatenate([obs["eef_pos"], quat, obs["gripper_qpos"]], axis=1).astype(np.float32)


class LSTMPolicy(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int = 7, cfg: PolicyConfig | None = None):
        super().__init__()
        cfg = cfg or PolicyConfig()
        self.cfg, self.obs_dim, self.action_dim = cfg, obs_dim, action_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.inp = nn.Sequential(nn.Linear(obs_dim, cfg.hidden), nn.ReLU())
        self.lstm = nn.LSTM(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, action_dim)

    def fit_normalisation(self, obs: torch.Tensor) -> None:
        """Set the buffers to the mean and std of `obs (N, obs_dim)`; a std below 1e-6 becomes 1."""
        std = obs.std(dim=0, correction=0)
        self.obs_mean.copy_(obs.mean(dim=0))
        self.obs_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def forward(self, obs: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """`obs (B, T, obs_dim)` -> Gaussian means `(B, T, action_dim)` and the LSTM state `(h, c)` after step T
        (`state=None` starts from zeros)."""
        x = self.inp((obs - self.obs_mean) / self.obs_std)
        out, state = self.lstm(x, state)
        return self.head(out), state

    @torch.no_grad()
    def act(self, obs_t: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """One closed-loop step: `obs_t (B, obs_dim)` -> the Gaussian mean clipped to [-1, 1] `(B, action_dim)`
        and the new state. Start an episode with `state=None` and pass the returned state to the next step."""
        mean, state = self(obs_t[:, None], state)
        return mean[:, 0].clamp(-1.0, 1.0), state


def nll(mean: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `actions (B, T, A)` under `N(mean, diag(std^2))`, `std (A,)` fixed.

    Per step: `l_bt = sum_d [(a_btd - mean_btd)^2 / (2 std_d^2) + log std_d + log(2 pi) / 2]`; the result is
    `sum_bt mask_bt l_bt / sum_bt mask_bt`, the average over the valid (`mask (B, T)` true) steps of all
    trajectories together.
    """
    std = std.to(mean)
    per_step = ((actions - mean) ** 2 / (2 * std**2) + std.log() + 0.5 * math.log(2 * math.pi)).sum(-1)
    mask = mask.to(mean)
    return (per_step * mask).sum() / mask.sum()
