"""stack: put cube A onto cube B (robosuite Stack). Stands in for PhoneOnBase: two objects, precise placement."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import OVERVIEW, WRIST, Placement, Task, cube_corners


def _closing_yaw(env) -> float:
    """Of cube A's two grasp axes, the one pointing furthest from cube B, so no finger lands on B."""
    yaw = ex.yaw_of(env.data.body("cubeA_main").xmat.reshape(3, 3))
    d = env.data.body("cubeB_main").xpos[:2] - env.data.body("cubeA_main").xpos[:2]
    to_b = np.arctan2(d[1], d[0])
    return min((yaw, yaw + np.pi / 2), key=lambda y: abs(np.cos(y - to_b)))


def _stack_expert(env):
    a = lambda e: e.data.body("cubeA_main").xpos.copy()  # noqa: E731
    b = lambda e: e.data.body("cubeB_main").xpos.copy()  # noqa: E731
    # cubeA (half size 0.02) released 1 cm above cubeB's top (half size 0.025)
    return ex.Expert(ex.pick_phases(a, _closing_yaw, np.pi) + ex.place_phases(a, b, release_height=0.055))


TASK = Task(
    name="stack", stands_in_for="PhoneOnBase", env_name="Stack",
    object_bodies=lambda env: [("cubeA_main", "cubeA_main"), ("cubeB_main", "cubeB_main")],
    placement={"ObjectSampler": Placement(x=(-0.08, 0.08), y=(-0.08, 0.08))},
    expert=_stack_expert, success=lambda env: env.env._check_success(),
    keypoints={"cubeA": cube_corners(0.02), "cubeB": cube_corners(0.025)}, symmetry={"cubeA": "cube", "cubeB": "cube"},
    cameras=(WRIST, OVERVIEW), horizon=300, demos={"cpu": 40, "paper": 140},
)
