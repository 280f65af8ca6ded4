"""The behaviour-cloning policy: an encoder, the proprioception and an LSTM head predicting the mean of a
fixed-variance Gaussian over actions.

`LSTMPolicy` (the head) takes an observation vector, the encoder's features with the proprioception appended
(`proprioception`). It normalises it with per-feature mean and std buffers fitted on the training frames (saved
with the weights; features of an encoder trained with the policy are left as they are), then applies
Linear(obs_dim, hidden) + ReLU, an LSTM (`layers` x `hidden`) and a Linear(hidden, action_dim) head.
`VisuomotorPolicy` owns its encoder and the head: `reset()` at an episode's start, then `act(observation)` with
each `SimEnv.observe()` (or a real robot's observation of the same keys), which is all that evaluation calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dckp.checks import checked_observation
from dckp.errors import DckpError
from dckp.policy.config import PolicyConfig

State = tuple[torch.Tensor, torch.Tensor]
FRAME_KEYS = ("rgb", "depth", "K", "pose")
PROPRIO_KEYS = ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")


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


def observation_frames(obs: Mapping[str, np.ndarray], cameras: Sequence[str]) -> dict[str, torch.Tensor]:
    """Encoder input (a batch of 1) from one observation: per camera rgb, depth, K, pose, and object_pose."""
    frames = {f"{cam}_{key}": torch.from_numpy(np.ascontiguousarray(obs[f"{cam}_{key}"])[None])
              for cam in cameras for key in FRAME_KEYS}
    if "object_pose" in obs:
        frames["object_pose"] = torch.from_numpy(np.ascontiguousarray(obs["object_pose"])[None])
    return frames


class VisuomotorPolicy(nn.Module):
    """Encoder + proprioception + LSTM Gaussian head, for closed-loop control.

    A head trained on windows of `seq_len` steps (each from a zero LSTM state) restarts from a zero state every
    `seq_len` steps, as robomimic's BC-RNN does, so that it meets the states it was trained on. `timing` holds
    the seconds spent in the encoder and in the rest of `act` since the last `reset()`.
    """

    def __init__(self, encoder: nn.Module, head: LSTMPolicy):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.reset()

    def check(self) -> None:
        """DckpError unless the encoder's features and the proprioception make the head's input."""
        proprio = 7 if self.head.cfg.proprio == "joint_pos" else 9
        if self.encoder.output_dim() + proprio != self.head.obs_dim:
            raise DckpError(f"encoder features ({self.encoder.output_dim()}) + proprioception ({proprio}) = "
                            f"{self.encoder.output_dim() + proprio} values, but the policy expects "
                            f"{self.head.obs_dim}", field="obs_dim")

    def reset(self) -> None:
        self.state: State | None = None
        self.steps = 0
        self.timing = {"encoder_s": 0.0, "policy_s": 0.0}
        self.encoder.reset()

    @torch.no_grad()
    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action `(7,)` float64 for one observation (camera images, K, poses and proprioception)."""
        observation = checked_observation(observation, self.encoder.cameras)  # DckpError on a bad frame
        t0 = time.perf_counter()
        device = self.head.obs_mean.device  # the whole policy's (`load_visuomotor_policy(device=...)`)
        features = self.encoder({k: v.to(device) for k, v in observation_frames(observation, self.encoder.cameras)
                                 .items()})
        t1 = time.perf_counter()
        proprio = proprioception({k: np.asarray(observation[k])[None] for k in PROPRIO_KEYS}, self.head.cfg.proprio)
        obs = torch.cat([features.float().cpu().reshape(1, -1), torch.from_numpy(proprio)], 1)
        if obs.shape[1] != self.head.obs_dim:
            raise DckpError(f"encoder features ({features.shape[-1]}) + proprioception ({proprio.shape[1]}) = "
                            f"{obs.shape[1]} values, but the policy expects {self.head.obs_dim}", field="obs_dim")
        if self.head.cfg.seq_len and self.steps % self.head.cfg.seq_len == 0:
            self.state = None
        action, self.state = self.head.act(obs.to(self.head.obs_mean.device), self.state)
        self.steps += 1
        self.timing["encoder_s"] += t1 - t0
        self.timing["policy_s"] += time.perf_counter() - t1
        return action[0].double().cpu().numpy()
