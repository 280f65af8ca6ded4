"""Expert episodes: run a task's scripted expert from a seed, optionally recording every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dckp.sim.env import SimEnv


@dataclass
class Episode:
    success: bool
    steps: int
    frames: list[dict] = field(default_factory=list)  # observation before each action (if recorded)
    actions: list[np.ndarray] = field(default_factory=list)


def expert_episode(env: SimEnv, seed: int, record: bool = False) -> Episode:
    """Reset to `seed` and run the expert until it has finished all its phases or the horizon."""
    env.reset(seed)
    expert = env.task.expert(env)
    episode = Episode(False, 0)
    while episode.steps < env.task.horizon:
        action = expert.act(env)
        if action is None:
            break
        if record:
            episode.frames.append(env.observe())
            episode.actions.append(action)
        env.step(action)
        episode.steps += 1
    episode.success = env.success()
    return episode
