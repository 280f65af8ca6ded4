"""Configs for collecting demonstrations and pretraining views, with `cpu` and `paper` presets."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.errors import DckpError


@dataclass
class CollectConfig:
    """Expert demonstrations: seeds from `seed` upwards until `demos` successes (failures are skipped).

    `demos=0` takes the task's own number for the preset (paper: 14 single-object, 140 multi-object)."""

    task: str = "lift"
    demos: int = 0
    image_size: int = 128
    seed: int = 0
    max_attempts_factor: float = 2.0  # give up after this many times `demos` seeds

    def __post_init__(self):
        if self.image_size < 16:
            raise DckpError(f"image_size must be >= 16, got {self.image_size}", field="image_size")
        if self.demos < 0:
            raise DckpError(f"demos must be >= 0, got {self.demos}", field="demos")


@dataclass
class ViewsConfig:
    """Static scenes filmed from moving cameras, plus arm-only sequences, for Dense Object Net pretraining.

    Per scene: `free_views` free-camera frames (orbits and approaches at `min_distance`..`max_distance` m),
    then the arm sweeps over the objects through `sweep_waypoints` waypoints without touching them while the
    task's cameras record every `record_every` control steps. Arm-only sequences repeat the sweep and free
    views with every object removed."""

    task: str = "stack"
    scenes: int = 10
    arm_only: int = 2
    image_size: int = 128
    free_views: int = 24
    sweep_waypoints: int = 4
    record_every: int = 3
    min_distance: float = 0.3
    max_distance: float = 1.6
    seed: int = 100_000  # scene seeds start here, apart from demonstration seeds

    def __post_init__(self):
        if self.image_size < 16:
            raise DckpError(f"image_size must be >= 16, got {self.image_size}", field="image_size")
        if not 0 < self.min_distance <= self.max_distance:
            raise DckpError("need 0 < min_distance <= max_distance", field="min_distance")
        if self.scenes < 1:
            raise DckpError(f"scenes must be >= 1, got {self.scenes}", field="scenes")


COLLECT_PRESETS = {"cpu": CollectConfig(image_size=128), "paper": CollectConfig(image_size=256)}
VIEWS_PRESETS = {
    "cpu": ViewsConfig(image_size=128, scenes=10, arm_only=2, free_views=24),
    "paper": ViewsConfig(image_size=256, scenes=40, arm_only=8, free_views=60, record_every=2),
}
