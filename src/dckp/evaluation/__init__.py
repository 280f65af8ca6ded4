"""Closed-loop policy evaluation: seeded rollouts, success rate with a Wilson interval, timings and videos."""

from dckp.evaluation.rollout import (
    EVAL_SEED_START,
    composite,
    draw_keypoints,
    evaluate_policy,
    load_run,
    observation_frames,
    rollout,
    summarise,
    wilson_interval,
)

__all__ = [
    "EVAL_SEED_START", "composite", "draw_keypoints", "evaluate_policy", "load_run", "observation_frames", "rollout",
    "summarise", "wilson_interval",
]
