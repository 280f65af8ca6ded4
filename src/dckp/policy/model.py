"""The behaviour-cloning policy: an encoder, the proprioception and a head (`dckp.policy.heads`).

`Policy` takes an observation vector, the encoder's features with the proprioception appended
(`proprioception`), normalises it and passes it to its head. `VisuomotorPolicy` owns its encoder and the
`Policy`: `reset()` at an episode's start, then `act(observation)` with each `SimEnv.observe()` (or a real
robot's observation of the same keys), which is all that evaluation calls.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dckp.checks import checked_observation
from dckp.errors import DckpError
from dckp.policy.config import PolicyConfig

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


class Policy(nn.Module):
    """The head behind the observation normalisation: per-feature mean and std buffers fitted once on the training
    frames (`fit_normalisation`; features of an encoder trained with the policy are left as they are) and saved with
    the weights. `loss(batch)` and `act(obs (1, obs_dim))` normalise, then call the head (`cfg.head`, built with
    `cfg.options()`)."""

    def __init__(self, obs_dim: int, action_dim: int = 7, cfg: PolicyConfig | None = None):
        from dckp.policy.heads.base import head_class

        super().__init__()
        cfg = cfg or PolicyConfig()
        self.cfg, self.obs_dim, self.action_dim = cfg, obs_dim, action_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.head = head_class(cfg.head)(obs_dim, action_dim, cfg.options())

    def fit_normalisation(self, obs: torch.Tensor) -> None:
        """Set the buffers to the mean and std of `obs (N, obs_dim)`; a std below 1e-6 becomes 1."""
        std = obs.std(dim=0, correction=0)
        self.obs_mean.copy_(obs.mean(dim=0))
        self.obs_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.loss({**batch, "obs": self.normalise(batch["obs"])})

    def reset(self) -> None:
        self.head.reset()

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """One closed-loop step: `obs (1, obs_dim)` -> the action `(1, action_dim)` in [-1, 1]."""
        return self.head.act(self.normalise(obs))


def observation_frames(obs: Mapping[str, np.ndarray], cameras: Sequence[str]) -> dict[str, torch.Tensor]:
    """Encoder input (a batch of 1) from one observation: per camera rgb, depth, K, pose, and object_pose."""
    frames = {f"{cam}_{key}": torch.from_numpy(np.ascontiguousarray(obs[f"{cam}_{key}"])[None])
              for cam in cameras for key in FRAME_KEYS}
    if "object_pose" in obs:
        frames["object_pose"] = torch.from_numpy(np.ascontiguousarray(obs["object_pose"])[None])
    return frames


class VisuomotorPolicy(nn.Module):
    """Encoder + proprioception + `Policy` (normalisation and head), for closed-loop control. `timing` holds the
    seconds spent in the encoder and in the rest of `act` since the last `reset()`."""

    def __init__(self, encoder: nn.Module, policy: Policy):
        super().__init__()
        self.encoder, self.policy = encoder, policy
        self.reset()

    def check(self) -> None:
        """DckpError unless the encoder's features and the proprioception make the head's input."""
        proprio = 7 if self.policy.cfg.proprio == "joint_pos" else 9
        if self.encoder.output_dim() + proprio != self.policy.obs_dim:
            raise DckpError(f"encoder features ({self.encoder.output_dim()}) + proprioception ({proprio}) = "
                            f"{self.encoder.output_dim() + proprio} values, but the policy expects "
                            f"{self.policy.obs_dim}", field="obs_dim")

    def reset(self) -> None:
        self.policy.reset()
        self.timing = {"encoder_s": 0.0, "policy_s": 0.0}
        self.encoder.reset()

    @torch.no_grad()
    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action `(7,)` float64 for one observation (camera images, K, poses and proprioception)."""
        observation = checked_observation(observation, self.encoder.cameras)  # DckpError on a bad frame
        t0 = time.perf_counter()
        device = self.policy.obs_mean.device  # the whole policy's (`load_visuomotor_policy(device=...)`)
        features = self.encoder({k: v.to(device) for k, v in observation_frames(observation, self.encoder.cameras)
                                 .items()})
        t1 = time.perf_counter()
        proprio = proprioception({k: np.asarray(observation[k])[None] for k in PROPRIO_KEYS}, self.policy.cfg.proprio)
        obs = torch.cat([features.float().cpu().reshape(1, -1), torch.from_numpy(proprio)], 1)
        if obs.shape[1] != self.policy.obs_dim:
            raise DckpError(f"encoder features ({features.shape[-1]}) + proprioception ({proprio.shape[1]}) = "
                            f"{obs.shape[1]} values, but the policy expects {self.policy.obs_dim}", field="obs_dim")
        action = self.policy.act(obs.to(self.policy.obs_mean.device))
        self.timing["encoder_s"] += t1 - t0
        self.timing["policy_s"] += time.perf_counter() - t1
        return action[0].double().cpu().numpy()
