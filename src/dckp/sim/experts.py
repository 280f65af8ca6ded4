"""Scripted experts on privileged state: a list of phases, each servoing to a target frozen at its start.

A phase's target (end-effector position and rotation) is computed once, when the phase begins, from the
simulator's true state. The action is proportional control clipped to the controller's limits (0.05 m and 0.5 rad
per step). A phase ends when the target is reached within `tol` or after `max_steps`; `Expert.ended` records
which. A phase that ends on its step limit with the hand still short of its target ends at a moment no observation
marks, which a policy cannot learn to reproduce: a task's targets should be reachable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

MAX_DPOS, MAX_DROT = 0.05, 0.5
OPEN, CLOSED = -1.0, 1.0


@dataclass
class Phase:
    name: str
    target: Callable  # env -> (pos (3,), rot (3,3)), evaluated once when the phase starts
    gripper: float
    max_steps: int
    tol: float | None = 0.01  # metres; None runs all max_steps (e.g. while the gripper closes)
    speed: float = 1.0  # fraction of the controller's per-step limits
    precise: bool = False  # closing in on or letting go of an object: DART noise "motion" leaves it out


class Expert:
    def __init__(self, phases: list[Phase]):
        self.phases = phases
        self.index, self.steps, self.goal = 0, 0, None
        self.ended: list[tuple[str, int, bool]] = []  # each ended phase: name, steps, whether its target was reached

    def short_of_target(self) -> list[tuple[str, int]]:
        """`(name, steps)` of each ended phase with a target (`tol`) that ended on its step limit, not reaching it."""
        tol = {p.name: p.tol for p in self.phases}
        return [(name, steps) for name, steps, reached in self.ended if tol[name] is not None and not reached]

    @property
    def precise(self) -> bool:
        """Whether the phase that gave the last action is `precise`."""
        return not self.done and self.phases[self.index].precise

    def to_goal(self, env) -> float:
        """Metres from the hand to the target of the phase that gave the last action (0 once all have ended)."""
        return 0.0 if self.done else float(np.linalg.norm(self.goal[0] - env.eef_pose()[0]))

    @property
    def done(self) -> bool:
        return self.index >= len(self.phases)

    def act(self, env) -> np.ndarray | None:
        """The next action, or None once every phase has ended."""
        while not self.done:
            phase = self.phases[self.index]
            if self.goal is None:
                self.goal, self.steps = phase.target(env), 0
            pos, rot = env.eef_pose()
            reached = phase.tol is not None and np.linalg.norm(self.goal[0] - pos) < phase.tol \
                and rotation_error(self.goal[1], rot) < 0.05
            if self.steps >= phase.max_steps or reached:
                self.ended.append((phase.name, self.steps, reached))
                self.index, self.goal = self.index + 1, None
                continue
            self.steps += 1
            return servo(pos, rot, *self.goal, phase.gripper, phase.speed)
        return None


def servo(pos, rot, goal_pos, goal_rot, gripper: float, speed: float = 1.0) -> np.ndarray:
    dpos = np.clip((goal_pos - pos) / MAX_DPOS, -speed, speed)
    drot = np.clip(Rotation.from_matrix(goal_rot @ rot.T).as_rotvec() / MAX_DROT, -speed, speed)
    return np.r_[dpos, drot, gripper]


def rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(Rotation.from_matrix(a @ b.T).as_rotvec()))


def rot_z(angle: float) -> np.ndarray:
    return Rotation.from_euler("z", angle).as_matrix()


def yaw_of(rot: np.ndarray) -> float:
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def wrap(angle: float, period: float) -> float:
    """`angle` modulo `period`, in [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def top_down(env) -> np.ndarray:
    """The exact top-down gripper rotation closest to the current one (the Panda starts ~10 deg tilted)."""
    _, rot = env.eef_pose()
    z = np.array([0.0, 0.0, -1.0])
    x = rot[:, 0] - rot[:, 0] @ z * z
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def finger_axis_yaw(env, rot: np.ndarray) -> float:
    """World yaw of the line through the two fingers if the hand had rotation `rot`."""
    _, cur = env.eef_pose()
    left, right = (env.data.body(f"gripper0_right_{f}finger").xpos for f in ("left", "right"))
    axis = rot @ cur.T @ (left - right)
    return float(np.arctan2(axis[1], axis[0]))


def grasp_rotation(env, close_along_yaw: float, symmetry: float) -> np.ndarray:
    """Top-down rotation whose fingers close along `close_along_yaw` (modulo the object's symmetry)."""
    rot = top_down(env)
    return rot_z(wrap(close_along_yaw - finger_axis_yaw(env, rot), symmetry)) @ rot


def pick_phases(obj_pos: Callable, close_along: Callable, symmetry: float, grasp_dz: float = 0.0,
                approach: float = 0.08, lift: float = 0.15) -> list[Phase]:
    """Top-down grasp of the point `obj_pos(env)` and lift. `close_along(env)` gives the closing yaw."""

    def above(env):
        return obj_pos(env) + [0, 0, approach], grasp_rotation(env, close_along(env), symmetry)

    def at(env):
        return obj_pos(env) + [0, 0, grasp_dz], env.eef_pose()[1]

    def hold(env):
        return env.eef_pose()

    def up(env):
        pos, rot = env.eef_pose()
        return pos + [0, 0, lift], rot

    return [
        Phase("above", above, OPEN, 80, tol=0.005),
        Phase("descend", at, OPEN, 60, tol=0.004, speed=0.5, precise=True),  # at full speed it drifts ~1-2 cm
        Phase("close", hold, CLOSED, 12, tol=None, precise=True),
        Phase("lift", up, CLOSED, 50),
    ]


def place_phases(obj_pos: Callable, goal_pos: Callable, release_height: float, carry_height: float = 0.1,
                 retreat: float = 0.1, speed: float = 1.0) -> list[Phase]:
    """Carry the held object so that `obj_pos` reaches `goal_pos` + `release_height`, open, retreat."""

    def shift(env, dz):
        pos, rot = env.eef_pose()
        return pos + goal_pos(env) + [0, 0, dz] - obj_pos(env), rot

    def up(env):
        pos, rot = env.eef_pose()
        return pos + [0, 0, retreat], rot

    return [
        Phase("carry", lambda env: shift(env, carry_height), CLOSED, int(80 / speed), speed=speed),
        Phase("align", lambda env: shift(env, carry_height), CLOSED, 30, tol=0.004, speed=speed),
        Phase("lower", lambda env: shift(env, release_height), CLOSED, int(40 / speed), tol=0.005, speed=speed,
              precise=True),
        Phase("release", lambda env: env.eef_pose(), OPEN, 8, tol=None, precise=True),
        Phase("retreat", up, OPEN, 30),
    ]
