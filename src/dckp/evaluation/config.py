"""Closed-loop evaluation settings (`dckp evaluate`)."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.errors import DckpError


@dataclass
class EvalConfig:
    """episodes from seed `seed_start` (disjoint from demonstration and view seeds), run by `workers` processes;
    the first `videos` episodes are recorded; `max_steps` 0 keeps the task's horizon."""

    episodes: int = 50
    seed_start: int = 1_000_000
    workers: int = 2
    videos: int = 3
    max_steps: int = 0

    def __post_init__(self):
        for name in ("episodes", "workers"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.videos < 0 or self.max_steps < 0:
            raise DckpError("videos and max_steps must be >= 0", field="videos" if self.videos < 0 else "max_steps")
