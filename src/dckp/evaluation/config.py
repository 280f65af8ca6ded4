"""Closed-loop evaluation settings (`dckp evaluate`). Light: no torch, so the CLI builds its flags from it quickly."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import check_device, option
from dckp.errors import DckpError


@dataclass
class EvalConfig:
    """Closed-loop episodes of a trained policy, seeded `seed_start`, `seed_start + 1`, ..."""

    episodes: int = option(50, "closed-loop episodes")
    seed_start: int = option(1_000_000, "first episode seed (apart from demonstration and view seeds)")
    workers: int = option(2, "worker processes running episodes in parallel")
    videos: int = option(3, "the first this many episodes are recorded (rollout_SEED.mp4)")
    max_steps: int = option(0, "most control steps per episode (0: the task's horizon)")
    device: str = option("cpu", "torch device of the policy and its encoder: cpu, cuda or cuda:N (the simulator "
                         "stays on the CPU)")
    task: str = option("", "evaluate on this task instead of the one run.json names, on purpose (it must have the "
                       "policy's cameras); '': run.json's, checked against the demonstrations it was trained on")

    def __post_init__(self):
        for name in ("episodes", "workers"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        check_device(self.device)
        for name in ("videos", "max_steps", "seed_start"):
            if getattr(self, name) < 0:
                raise DckpError(f"must be >= 0, got {getattr(self, name)}", field=name)
