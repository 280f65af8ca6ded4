"""nut_assembly: the square nut onto its peg (robosuite NutAssemblySquare, robomimic's Square)."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import OVERVIEW, WRIST, Task


def _nut_grasp(env) -> tuple[np.ndarray, float]:
    """Grasp point and closing yaw: the handle, unless it points at the robot, where the arm cannot
    reach down; then the ring's opposite wall (square-nut.xml: handle at x=0.054, walls at +-0.033)."""
    T = env.body_pose("SquareNut_main")
    handle = T[:3, :3] @ [0.054, 0, 0] + T[:3, 3]
    if handle[0] > T[0, 3] - 0.03:
        return handle, ex.yaw_of(T[:3, :3]) + np.pi / 2
    return T[:3, :3] @ [-0.03325, 0, 0] + T[:3, 3], ex.yaw_of(T[:3, :3])


def _nut_expert(env):
    nut = lambda e: e.data.body("SquareNut_main").xpos.copy()  # noqa: E731

    def turn(e):
        # square hole onto the square peg: match the nut's yaw to the peg's modulo 90 degrees, choosing the
        # quarter turn that leaves the gripper on the robot's side or beside the peg, never beyond it
        # (out of the arm's reach)
        T = e.body_pose("SquareNut_main")
        pos, rot = e.eef_pose()
        grip = np.arctan2(*(pos - T[:3, 3])[1::-1])
        snap = ex.wrap(ex.yaw_of(e.body_pose("peg1")[:3, :3]) - ex.yaw_of(T[:3, :3]), np.pi / 2)
        turns = [snap + k * np.pi / 2 for k in range(-2, 3)]
        turns = [d for d in turns if np.cos(grip + d) < 0.5 and abs(d) <= np.pi]
        return pos, ex.rot_z(min(turns, key=abs)) @ rot

    peg = lambda e: e.data.body("peg1").xpos.copy()  # noqa: E731
    return ex.Expert(
        ex.pick_phases(lambda e: _nut_grasp(e)[0], lambda e: _nut_grasp(e)[1], np.pi)
        + [ex.Phase("turn", turn, ex.CLOSED, 40)]
        + ex.place_phases(nut, peg, release_height=0.03, carry_height=0.15, speed=0.4)
    )


def _nut_success(env) -> bool:
    return bool(env.env._check_success())


TASK = Task(
    name="nut_assembly", stands_in_for="(robomimic Square)", env_name="NutAssemblySquare",
    object_bodies=lambda env: [("SquareNut_main", "SquareNut_main"), ("peg1", "peg1")],
    expert=_nut_expert, success=_nut_success,
    keypoints={"nut": [[0, 0, 0], [0.054, 0, 0], [0.03, 0.03, 0], [-0.03, -0.03, 0]],
               "peg": [[0, 0, 0.1], [0, 0, 0.0]]},
    cameras=(WRIST, OVERVIEW), horizon=350, demos={"cpu": 40, "paper": 140},
)
