"""Closed-loop policy evaluation: seeded rollouts, success rate with a Wilson interval, timings and videos
(`rollout`); validation rollouts of kept checkpoints while a policy trains (`validation`); the error of keypoints
on the frames of demonstrations (`keypoint_error`, `dckp eval-keypoints`).

Names are imported on first use, so `dckp.evaluation.config` loads without torch (the CLI builds its flags from
it)."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.evaluation.rollout": ("EVAL_SEED_START", "composite", "evaluate_policy", "keep_episodes",
                                "missing_jobs", "run_episodes", "summarise", "wilson_interval",
                                "write_evaluation"),
})
