"""lift: pick up a cube (robosuite Lift). Stands in for TakeLidOffSaucePan: one object, wrist camera."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import WRIST, Placement, Task, cube_corners


def _lift_expert(env):
    cube = lambda e: e.data.body("cube_main").xpos.copy()  # noqa: E731
    yaw = lambda e: ex.yaw_of(e.data.body("cube_main").xmat.reshape(3, 3))  # noqa: E731
    return ex.Expert(ex.pick_phases(cube, yaw, np.pi / 2))


TASK = Task(
    name="lift", stands_in_for="TakeLidOffSaucePan", env_name="Lift",
    object_bodies=lambda env: [("cube_main", "cube_main")],
    placement={"ObjectSampler": Placement(x=(-0.03, 0.03), y=(-0.03, 0.03))},
    expert=_lift_expert, success=lambda env: env.env._check_success(),
    keypoints={"cube": cube_corners(0.02)}, symmetry={"cube": "cube"},
    cameras=(WRIST,), horizon=120, demos={"cpu": 14, "paper": 14},
)
