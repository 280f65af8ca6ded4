"""close_door: push an open door shut (robosuite Door, started open). Stands in for CloseMicrowave.

Articulated: the door's appearance changes along the trajectory."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import OVERVIEW, WRIST, Placement, Task

DOOR_OPEN_RANGE = (0.25, 0.4)  # rad; robosuite's hinge stops at 0.4 (0.3-0.9 made the task easier: blind 50 of 50)
DOOR_CLOSED_BELOW = 0.05  # rad


def _door_hinge(env) -> float:
    return float(env.data.qpos[env.env.hinge_qpos_addr])


def _prepare(env) -> None:
    """robosuite's Door sets the hinge frictionless; a microwave door stays where it is left. Its overview camera
    (agentview) faces the robot, with the door at the image's edge; it takes the pose of robosuite's sideview,
    which faces the door and the arm."""
    m = env.sim.model._model
    dof = m.jnt_dofadr[m.joint("Door_hinge").id]
    m.dof_frictionloss[dof], m.dof_damping[dof] = 1.0, 1.0
    overview, side = m.camera(OVERVIEW).id, m.camera("sideview").id
    for pose in (m.cam_pos, m.cam_quat, m.cam_fovy):
        pose[overview] = pose[side]


def _open_door(env, rng) -> None:
    """Open the door by an angle drawn from DOOR_OPEN_RANGE. Where the open door would cut into the arm (a door
    standing close to the arm's start puts its handle through the gripper, and the contact slams it shut before
    the episode starts), another angle is drawn, and after every 10 tries another placement of the door from the
    task's ranges (from the episode's generator, as robosuite placed it)."""
    import mujoco  # here, so that listing the tasks does not load the simulator

    from dckp.sim.render import ROBOT_LABEL

    m, d = env.model, env.data
    root = m.body(env.env.door.root_body).id
    d.qvel[m.jnt_dofadr[m.joint("Door_hinge").id]] = 0.0
    labels = env.geom_labels()
    for attempt in range(1, 101):
        d.qpos[env.env.hinge_qpos_addr] = rng.uniform(*DOOR_OPEN_RANGE)
        mujoco.mj_forward(m, d)
        if not any({labels[c.geom1], labels[c.geom2]} == {1, ROBOT_LABEL} for c in d.contact[: d.ncon]):
            return
        if attempt % 10 == 0:
            pos, quat, _ = env.env.placement_initializer.sample()[env.env.door.name]
            m.body_pos[root], m.body_quat[root] = pos, quat
    raise RuntimeError("no door placement clear of the arm in 100 tries")


_DOOR_HINGE = np.array([0.255, 0.0, 0.0])  # in the door body's frame (door.xml); its axis is z
_DOOR_PUSH = np.array([-0.19, -0.02, 0.06])  # on the robot-side face, near the free edge, above the handle


def _door_point(env, local, closed: bool = False) -> np.ndarray:
    """World position of a point fixed on the door, now or once the door is shut (hinge angle 0)."""
    T = env.body_pose("Door_door")
    hinge, point = T[:3, :3] @ _DOOR_HINGE + T[:3, 3], T[:3, :3] @ local + T[:3, 3]
    return hinge + ex.rot_z(-_door_hinge(env)) @ (point - hinge) if closed else point


def _door_expert(env):
    """Push the open door shut from the robot's side with the closed gripper, then lift away.

    Before the push the hand first goes well out in front of the door's face (`out`): from the arm's start, a
    straight line to the push point can pass behind the panel of a door turned toward the arm and push it open.
    Once the door is shut the hand rises instead of backing off, which could pull it open again by the handle."""
    toward_robot = np.array([0.0, -0.09, 0.0])  # in the door body's frame: its face normal, robot side

    def rise(e):
        pos, _ = e.eef_pose()
        return np.r_[pos[:2], _door_point(e, _DOOR_PUSH)[2]], ex.top_down(e)

    def out(e):
        return _door_point(e, _DOOR_PUSH + 2.5 * toward_robot), ex.top_down(e)

    def pre_push(e):
        return _door_point(e, _DOOR_PUSH + toward_robot), ex.top_down(e)

    def push(e):
        beyond = np.array([0.0, 0.03, 0.0])  # aim past the shut face so the door reaches its stop
        return _door_point(e, _DOOR_PUSH + beyond, closed=True), e.eef_pose()[1]

    def lift_away(e):
        pos, rot = e.eef_pose()
        return pos + np.array([0.0, 0.0, 0.1]), rot

    return ex.Expert([
        ex.Phase("rise", rise, ex.CLOSED, 40),
        ex.Phase("out", out, ex.CLOSED, 40, tol=0.03),
        ex.Phase("pre_push", pre_push, ex.CLOSED, 60),
        ex.Phase("push", push, ex.CLOSED, 50),
        ex.Phase("lift_away", lift_away, ex.CLOSED, 20),
    ])


def _door_success(env) -> bool:
    return _door_hinge(env) < DOOR_CLOSED_BELOW


TASK = Task(
    name="close_door", stands_in_for="CloseMicrowave", env_name="Door",
    env_kwargs={"use_latch": False},
    object_bodies=lambda env: [("Door_door", "Door_door")],  # the panel and its handle
    # robosuite's ranges (x 0.07..0.09, y -0.01..0.01, yaw -pi/2-0.25..-pi/2) let a blind policy close the door
    # in 50 of 50 episodes, and x 0..0.16, y -0.08..0.08, yaw -pi/2-0.35..-pi/2+0.15 in 41 of 50 (gt-kp 47).
    # The door now stands anywhere in 30 x 30 cm, turned +-0.5 rad. The wrist camera (its forearm starts rolled
    # 0.7 rad toward the door) sees it at the start in 60 % of episodes, the overview camera (moved to face the
    # door, see _prepare) in all.
    placement={"ObjectSampler": Placement(x=(-0.1, 0.2), y=(-0.15, 0.15), yaw=(-np.pi / 2 - 0.5, -np.pi / 2 + 0.5))},
    joint_offset=(0.0, 0.0, 0.0, 0.0, 0.7, 0.0, 0.0), ranges={"door_open_rad": DOOR_OPEN_RANGE},
    expert=_door_expert, success=_door_success, prepare_model=_prepare, on_reset=_open_door,
    keypoints={"door": [[-0.2, -0.02, 0.2], [-0.2, -0.02, -0.2], [0.0, -0.02, 0.0], [-0.1, -0.12, -0.025]]},
    workspace=((-0.65, -0.68, 0.75), (0.22, 0.05, 1.45)), park=(-0.3, 0.3, 1.2),  # the door over 200 seeds
    cameras=(WRIST, OVERVIEW), horizon=200, demos={"cpu": 14, "paper": 14},
)
