"""nut_assembly: the square nut onto its peg (robosuite NutAssemblySquare, robomimic's Square)."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import OVERVIEW, WRIST, Placement, Task


def _nut_handle(env) -> tuple[np.ndarray, float]:
    """The handle's centre (square-nut.xml: x=0.054 in the nut's frame) and the yaw to close along."""
    T = env.body_pose("SquareNut_main")
    return T[:3, :3] @ [0.054, 0, 0] + T[:3, 3], ex.yaw_of(T[:3, :3]) + np.pi / 2


def _nut_expert(env):
    """Grasp the handle, turn the nut square to the peg, carry it above the peg, lower it on, let go.

    Two things matter, both about the Panda's reach (the nut spawns near the base, the peg near the far
    limit): the descent onto the handle is slow, since at full speed the arm drifts ~1 cm off a handle that
    points at the robot and lands on the ring; and of the four yaws that square the nut to the peg, the turn
    picks the nearest one that leaves the handle (hence the gripper) on the robot's side of the peg or beside
    it, since a gripper beyond the peg (x > 0.26) is out of reach and the nut jams part-way down.
    """
    nut = lambda e: e.data.body("SquareNut_main").xpos.copy()  # noqa: E731

    def turn(e):
        # the nut's yaw to the peg's modulo 90 degrees, with the gripper (bearing `grip` from the nut's centre)
        # not pointing away from the robot (+x)
        T = e.body_pose("SquareNut_main")
        pos, rot = e.eef_pose()
        off = pos - T[:3, 3]
        grip = np.arctan2(off[1], off[0])
        snap = ex.wrap(ex.yaw_of(e.body_pose("peg1")[:3, :3]) - ex.yaw_of(T[:3, :3]), np.pi / 2)
        turns = [d for d in snap + np.pi / 2 * np.arange(-2, 3) if np.cos(grip + d) < 0.5]
        return pos, ex.rot_z(min(turns, key=abs)) @ rot

    peg = lambda e: e.data.body("peg1").xpos.copy()  # noqa: E731
    pick = ex.pick_phases(lambda e: _nut_handle(e)[0], lambda e: _nut_handle(e)[1], np.pi)
    pick[1].speed, pick[1].max_steps = 0.25, 60  # slow descent: a fast one drifts off the handle near the base
    return ex.Expert(
        pick + [ex.Phase("turn", turn, ex.CLOSED, 40)]
        + ex.place_phases(nut, peg, release_height=0.03, carry_height=0.15)
    )


def _nut_success(env) -> bool:
    return bool(env.env._check_success())


TASK = Task(
    name="nut_assembly", stands_in_for="(robomimic Square)", env_name="NutAssemblySquare",
    object_bodies=lambda env: [("SquareNut_main", "SquareNut_main"), ("peg1", "peg1")],
    placement={"SquareNutSampler": Placement(x=(-0.115, -0.11), y=(0.11, 0.225))},  # the peg is fixed
    expert=_nut_expert, success=_nut_success,
    keypoints={"nut": [[0, 0, 0], [0.054, 0, 0], [0.03, 0.03, 0], [-0.03, -0.03, 0]],
               "peg": [[0, 0, 0.1], [0, 0, 0.0]]},
    symmetry={"nut": "square", "peg": "square"},  # the square ring (not its handle) and the square peg, about z
    workspace=((-0.3, 0.0, 0.79), (0.35, 0.35, 0.97)),  # the nut and the square peg, not the unused round peg
    cameras=(WRIST, OVERVIEW), horizon=350, demos={"cpu": 40, "paper": 140},
    # gt-kp rnn-gmm succeeded in 0.65 of 100 validation seeds with noise 0.2, 0.54 without (benchmarks/learner.py)
    dart_noise=0.2,
)
