"""Expert episodes: run a task's scripted expert from a seed, optionally recording every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dckp.sim.env import SimEnv

TAPER = 0.05  # metres: under noise_phases "taper" the noise shrinks linearly to none within this of a phase's target


@dataclass
class Episode:
    success: bool
    steps: int
    frames: list[dict] = field(default_factory=list)  # observation before each action (if recorded)
    actions: list[np.ndarray] = field(default_factory=list)


def expert_episode(env: SimEnv, seed: int, record: bool = False, noise: float = 0.0,
                   noise_phases: str = "all") -> Episode:
    """Reset to `seed` and run the expert until it has finished all its phases or the horizon.

    `noise` > 0 (DART, Laskey et al. 2017): the arm executes the expert's translation plus Gaussian noise of that
    std (a fraction of the controller's range, drawn from `seed`), while the expert's own action, which corrects
    the drift from the state reached, is what is recorded. A policy then sees states off the expert's path, with
    the way back, as it will when its own errors take it there. `noise_phases` "motion": not in the expert's
    `precise` phases (descending onto an object, closing, lowering it, letting go), which end when the hand is
    within millimetres of its target: under noise that is a chance event, so the demonstrations would switch from
    closed to open (or back) at random moments while the hand hovers, which no observation marks. `taper`: in every
    phase, with a std scaled by the hand's distance to the phase's target over `TAPER` (at most 1), so that every
    phase ends on reaching its target, as without noise, and the way back is shown wherever the hand is far off."""
    env.reset(seed)
    expert = env.task.expert(env)
    rng = np.random.default_rng(seed)
    episode = Episode(False, 0)
    while episode.steps < env.task.horizon:
        action = expert.act(env)
        if action is None:
            break
        if record:
            episode.frames.append(env.observe())
            episode.actions.append(action)
        if noise > 0 and not (noise_phases == "motion" and expert.precise):
            std = noise * min(1.0, expert.to_goal(env) / TAPER) if noise_phases == "taper" else noise
            action = np.r_[np.clip(action[:3] + rng.normal(0, std, 3), -1, 1), action[3:]]
        env.step(action)
        episode.steps += 1
    episode.success = env.success()
    return episode
