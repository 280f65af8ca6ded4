"""pick_place_clutter: the can into its bin, among milk, bread and cereal (robosuite PickPlace).

Stands in for PutRubbishInBin: clutter and occlusion."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import OVERVIEW, WRIST, Placement, Task

_PP_OBJECTS = ("Milk", "Bread", "Cereal", "Can")


HAND_HALF_LENGTH = 0.1  # metres: the Panda hand is about 0.2 m long along the line through its fingers


def _footprint(env, body: str) -> np.ndarray:
    """World (x, y) of the corners of every geom's bounding box of an object, seen from above."""
    m, d = env.model, env.data
    geoms = np.flatnonzero(m.geom_bodyid == m.body(body).id)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    local = [m.geom_aabb[g, :3] + corners * m.geom_aabb[g, 3:] for g in geoms]  # (8, 3) in each geom's frame
    pts = [p @ d.geom_xmat[g].reshape(3, 3).T + d.geom_xpos[g] for g, p in zip(geoms, local, strict=True)]
    return np.concatenate(pts)[:, :2]


def _can_closing_yaw(env) -> float:
    """The closing direction whose hand (a segment through the can along the fingers) keeps farthest from
    the other objects' footprints, so the hand comes down between them."""
    can = env.data.body("Can_main").xpos[:2]
    return closing_yaw(np.concatenate([_footprint(env, f"{o}_main") for o in _PP_OBJECTS[:3]]) - can)


def closing_yaw(obstacles: np.ndarray) -> float:
    """Of 36 closing yaws in [0, pi), the one whose hand segment through the origin (the can) keeps farthest from
    the `(P, 2)` obstacle points (relative to the can)."""
    yaws = np.linspace(0, np.pi, 36, endpoint=False)
    axes = np.stack([np.cos(yaws), np.sin(yaws)], 1)
    along = np.clip(obstacles @ axes.T, -HAND_HALF_LENGTH, HAND_HALF_LENGTH)  # (P, yaws)
    gaps = np.linalg.norm(obstacles[:, None] - along[..., None] * axes[None], axis=-1).min(0)
    return float(yaws[np.argmax(gaps)])


GOAL_MARGIN = 0.06  # metres inside the can's bin quarter, from its corner nearest the robot
GRASP_ABOVE_CENTRE = 0.01  # metres: lower, the fingertips meet the bin floor before the hand reaches its target


def _can_goal(env) -> np.ndarray:
    """Where the expert puts the can: `GOAL_MARGIN` inside the corner of the can's quarter of the goal bin nearest
    the robot. The quarter's centre (robosuite's `target_bin_placements`) is at the edge of the Panda's reach: aimed
    there, the hand stalled short of every carry, align and lower target, each phase ended on its step limit rather
    than on reaching its target, and the hand sat still for 14-33 steps before letting go (140 of 140
    demonstrations), a moment no observation marks."""
    centre = env.env.target_bin_placements[3]
    return np.r_[centre[:2] - env.env.bin_size[:2] / 4 + GOAL_MARGIN, centre[2]]


def _pick_place_expert(env):
    can = lambda e: e.data.body("Can_main").xpos.copy()  # noqa: E731
    return ex.Expert(ex.pick_phases(can, _can_closing_yaw, np.pi, grasp_dz=GRASP_ABOVE_CENTRE, approach=0.2, lift=0.2)
                     + ex.place_phases(can, _can_goal, release_height=0.08, carry_height=0.2))


def _pick_place_success(env) -> bool:
    env.env._check_success()  # updates objects_in_bins (object in its bin and the hand away from it)
    return bool(env.env.objects_in_bins[3])


def _hide_visual_objects(env) -> None:
    m = env.sim.model._model
    for o in env.visual_objects:
        body = m.body(o.root_body).id
        m.geom_group[m.geom_bodyid == body] = 5  # a group the renderer does not draw


TASK = Task(
    name="pick_place_clutter", stands_in_for="PutRubbishInBin", env_name="PickPlace",
    object_bodies=lambda env: [(f"{o}_main", f"{o}_main") for o in _PP_OBJECTS],
    placement={"CollisionObjectSampler": Placement(x=(-0.145, 0.145), y=(-0.195, 0.195))},  # the source bin
    expert=_pick_place_expert, success=_pick_place_success, prepare_model=_hide_visual_objects,
    keypoints={"milk": [[0, 0, 0]], "bread": [[0, 0, 0]], "cereal": [[0, 0, 0]],
               "can": [[0, 0, 0.04], [0, 0, -0.04], [0.03, 0, 0], [-0.03, 0, 0], [0, 0, 0]]},
    symmetry={"can": "revolution"},  # about its axis, z (the carton, the loaf and the printed box: none)
    workspace=((-0.075, -0.475, 0.79), (0.275, -0.025, 1.0)),  # inside the source bin's walls
    # 40 cpu demonstrations were too few even for ground-truth keypoints (3 of 50 episodes); see policy CPU_STEPS
    cameras=(WRIST, OVERVIEW), horizon=350, demos={"cpu": 140, "paper": 140},
    # gt-kp rnn-gmm succeeded in 0.39 of 100 validation seeds with noise 0.3, 0.28 without (benchmarks/learner.py)
    dart_noise=0.3,
    # noise in every phase: phases that end within millimetres of a target ended on their step limits (24 of 180 in
    # 20 seeds), the policy hovered holding the can; gt-kp rnn-gmm succeeded in 100 validation seeds from 2,010,000
    # in 0.60 with the noise tapering near each target, 0.36 with none in the precise phases (benchmarks/learner.py)
    dart_phases="taper",
)
