"""Configs for collecting demonstrations and pretraining views, with `cpu` and `paper` presets."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import option
from dckp.errors import DckpError
from dckp.sim.tasks import TASKS, get_task

# What the cameras draw (dckp.sim.render), stored with every file and result made from images (a file's `config`,
# `dckp run`'s stage configs, results/table1.json `config`), so that images rendered otherwise are not taken for
# these: the visual geoms, as robosuite's cameras (until 2026-12 the collision geoms were drawn over them too).
RENDER = "visual geoms"


# fields added to CollectConfig since demonstrations were collected without them, with the value that made those
COLLECT_ADDED = {"noise": 0.0, "noise_phases": "all"}
VIEWS_ADDED = {"approach": False}  # the same for ViewsConfig
NOISE_PHASES = ("all", "motion", "taper")


@dataclass
class CollectConfig:
    """Expert demonstrations: seeds from `seed` upwards until `demos` successes (failures are skipped).

    `demos=0` takes the task's own number for the preset (`dckp tasks`); `dckp collect` saves the number it used."""

    task: str = option("lift", "simulated task (see `dckp tasks`)", choices=TASKS)
    demos: int = option(0, "successful demonstrations to collect (0: the task's number for the preset)")
    image_size: int = option(128, "camera image height and width in pixels")
    seed: int = option(0, "first episode seed; failed episodes are skipped")
    noise: float = option(0.0, "DART: std of Gaussian noise on the executed translation (fraction of the "
                          "controller's range); the expert's correcting action is recorded (0: none)")
    noise_phases: str = option("all", "where the DART noise acts: all phases, motion only (not while the hand "
                               "closes on or lets go of an object), or all phases tapering to none within 5 cm of "
                               "each phase's target", choices=NOISE_PHASES)
    max_attempts_factor: float = option(2.0, "give up after this many times `demos` seeds")
    workers: int = option(1, "worker processes running expert episodes (1: in this process; any number gives the "
                          "same file)")

    def __post_init__(self):
        get_task(self.task)
        if self.image_size < 16:
            raise DckpError(f"must be >= 16, got {self.image_size}", field="image_size")
        if self.demos < 0:
            raise DckpError(f"must be >= 0 (0: the task's number), got {self.demos}", field="demos")
        if self.seed < 0:
            raise DckpError(f"must be >= 0, got {self.seed}", field="seed")
        if self.workers < 1:
            raise DckpError(f"must be >= 1, got {self.workers}", field="workers")
        if self.noise_phases not in NOISE_PHASES:
            raise DckpError(f"must be one of {', '.join(NOISE_PHASES)}, got {self.noise_phases!r}",
                            field="noise_phases")
        if not 0 <= self.noise <= 1:
            raise DckpError(f"must be in [0, 1], got {self.noise}", field="noise")
        if self.max_attempts_factor < 1:
            raise DckpError(f"must be >= 1, got {self.max_attempts_factor}", field="max_attempts_factor")


@dataclass
class ViewsConfig:
    """Static scenes filmed from moving cameras, plus arm-only sequences, for Dense Object Net pretraining.

    Per scene: `free_views` free-camera frames (orbits and approaches at `min_distance`..`max_distance` m),
    then the arm sweeps over the objects through `sweep_waypoints` waypoints without touching them while the
    task's cameras record every `record_every` control steps and, with `approach`, the task's expert moves in to
    its first grasp and stops where it would close the gripper (the demonstrations' first frames: the wrist
    camera within about 10 cm of the object, the fingers around it; nothing is touched). Arm-only sequences repeat
    the sweep and free views with every object removed."""

    task: str = option("lift", "simulated task (see `dckp tasks`)", choices=TASKS)
    scenes: int = option(20, "static scenes, each filmed by free cameras and the task's cameras")
    arm_only: int = option(2, "sequences with every object removed (the arm as its own object)")
    image_size: int = option(128, "camera image height and width in pixels")
    free_views: int = option(24, "free-camera frames per scene")
    sweep_waypoints: int = option(4, "waypoints of the arm's sweep above the objects")
    record_every: int = option(3, "the task's cameras record every this many control steps of the sweep")
    approach: bool = option(True, "end each scene with the expert's approach to its first grasp, up to closing "
                                  "the gripper: the wrist camera close in, as in the demonstrations")
    min_distance: float = option(0.3, "nearest free-camera distance from its target (metres)")
    max_distance: float = option(1.6, "farthest free-camera distance from its target (metres)")
    seed: int = option(100_000, "first scene seed (apart from demonstration seeds)")

    def __post_init__(self):
        if self.image_size < 16:
            raise DckpError(f"must be >= 16, got {self.image_size}", field="image_size")
        if not 0 < self.min_distance <= self.max_distance:
            raise DckpError("need 0 < min_distance <= max_distance", field="min_distance")
        get_task(self.task)
        for name in ("scenes", "free_views", "sweep_waypoints", "record_every"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("arm_only", "seed"):
            if getattr(self, name) < 0:
                raise DckpError(f"must be >= 0, got {getattr(self, name)}", field=name)


COLLECT_PRESETS = {"cpu": CollectConfig(image_size=128), "paper": CollectConfig(image_size=256)}
VIEWS_PRESETS = {
    "cpu": ViewsConfig(image_size=128, scenes=20, arm_only=2, free_views=24),
    "paper": ViewsConfig(image_size=256, scenes=40, arm_only=8, free_views=60, record_every=2),
}
