"""Expert episodes: run a task's scripted expert from a seed, optionally recording every step."""

from __future__ import annotations

from collections.abc import Callable

from dckp.sim.env import SimEnv


def expert_episode(env: SimEnv, seed: int, record: Callable | None = None) -> tuple[bool, int]:
    """Reset to `seed` and run the expert until success (then a few steps more) or the horizon.

    `record(obs, action)` is called before each step with the observation the action was chosen on.
    Returns (success, number of steps).
    """
    env.reset(seed)
    expert = env.task.expert(env)
    steps = 0
    while steps < env.task.horizon:
        action = expert.act(env)
        if action is None:
            break
        if record is not None:
            record(env.observe(), action)
        env.step(action)
        steps += 1
    return env.success(), steps
