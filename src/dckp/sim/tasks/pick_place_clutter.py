"""pick_place_clutter: the can into its bin, among milk, bread and cereal (robosuite PickPlace).

Stands in for PutRubbishInBin: clutter and occlusion."""

from __future__ import annotations

import numpy as np

from dckp.sim import experts as ex
from dckp.sim.tasks.base import OVERVIEW, WRIST, Task

_PP_OBJECTS = ("Milk", "Bread", "Cereal", "Can")


def _can_closing_yaw(env) -> float:
    """Close the fingers across the line to the nearest other object, so they pass beside it."""
    can = env.data.body("Can_main").xpos
    others = [env.data.body(f"{o}_main").xpos for o in _PP_OBJECTS[:3]]
    near = min(others, key=lambda p: np.linalg.norm(p[:2] - can[:2]))
    d = near[:2] - can[:2]
    return float(np.arctan2(d[1], d[0]) + np.pi / 2)


def _pick_place_expert(env):
    can = lambda e: e.data.body("Can_main").xpos.copy()  # noqa: E731
    goal = lambda e: e.env.target_bin_placements[3].copy()  # noqa: E731
    return ex.Expert(ex.pick_phases(can, _can_closing_yaw, np.pi, approach=0.12, lift=0.2)
                     + ex.place_phases(can, goal, release_height=0.08, carry_height=0.2))


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
    expert=_pick_place_expert, success=_pick_place_success, prepare_model=_hide_visual_objects,
    keypoints={"milk": [[0, 0, 0]], "bread": [[0, 0, 0]], "cereal": [[0, 0, 0]],
               "can": [[0, 0, 0.04], [0, 0, -0.04], [0.03, 0, 0], [-0.03, 0, 0], [0, 0, 0]]},
    workspace=((-0.075, -0.475, 0.79), (0.275, -0.025, 1.0)),  # inside the source bin's walls
    cameras=(WRIST, OVERVIEW), horizon=350, demos={"cpu": 40, "paper": 140},
)
