"""What a task defines. Each task lives in its own module of this package and exports `TASK`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

WRIST, OVERVIEW = "robot0_eye_in_hand", "agentview"
ANY_YAW = (-math.pi, math.pi)


@dataclass(frozen=True)
class Placement:
    """Where one of robosuite's placement samplers puts the centres of its objects at reset: uniformly in `x` and
    `y` (metres, relative to the sampler's reference point: the table's or the bin's centre) and `yaw` (radians).
    A sampler that keeps its objects' outlines inside the box (robosuite's `ensure_object_boundary_in_range`)
    uses a smaller box still."""

    x: tuple[float, float]
    y: tuple[float, float]
    yaw: tuple[float, float] = ANY_YAW


@dataclass(frozen=True)
class Task:
    """A robosuite task with its objects (segmentation labels 1..N in `keypoints` order), cameras,
    horizon, demonstrations per preset, success test, scripted expert and ground-truth keypoints
    (points fixed on each object, in its pose body's frame, for the ground-truth-keypoint baseline)."""

    name: str
    stands_in_for: str
    env_name: str
    object_bodies: Callable  # robosuite env -> [(root body, pose body)], one per object
    placement: dict[str, Placement]  # robosuite sampler name -> its ranges (overriding robosuite's)
    expert: Callable  # SimEnv -> experts.Expert
    success: Callable  # SimEnv -> bool
    keypoints: dict[str, list]  # object name -> points in its pose body's frame (metres)
    cameras: tuple[str, ...]
    horizon: int
    demos: dict[str, int]  # preset -> number of demonstrations
    env_kwargs: dict = field(default_factory=dict)
    # world box (metres) holding the objects and the table or bin floor, not the resting arm: what `dckp fuse`
    # fuses and segments
    workspace: tuple = ((-0.25, -0.25, 0.75), (0.25, 0.25, 0.95))
    park: tuple | None = None  # end-effector position (m) to move the arm to, out of the way, for free views
    settle_steps: int = 10
    prepare_model: Callable = lambda env: None  # once, after the model is built
    on_reset: Callable = lambda simenv, rng: None  # after each reset, before settling
    joint_noise: float = 0.02  # rad: std of the Gaussian noise on the arm's initial joint angles (robosuite's)
    joint_offset: tuple = (0.0,) * 7  # rad, added to robosuite's initial joint angles (to face the objects)
    ranges: dict = field(default_factory=dict)  # other randomised quantities (name -> [low, high]), for the docs
    # object name -> the kind of its shape's symmetry (SYMMETRIES), about its pose body's origin; others have none
    symmetry: dict[str, str] = field(default_factory=dict)
    # DART noise (CollectConfig.noise) of the demonstrations the converged protocol learns from, chosen on validation
    # rollouts of gt-kp (benchmarks/learner.py); the paper's protocol collects without noise
    dart_noise: float = 0.0
    dart_phases: str = "all"  # CollectConfig.noise_phases of those demonstrations

    @property
    def objects(self) -> list[str]:
        return list(self.keypoints)

    @property
    def randomisation(self) -> dict:
        """Every initial-state range of the task, as listed by `dckp tasks` and in results/tasks.json."""
        return {"placement": {name: {"x": list(p.x), "y": list(p.y), "yaw": list(p.yaw)}
                              for name, p in self.placement.items()},
                "joint_noise_std": self.joint_noise, "joint_offset": list(self.joint_offset),
                **{k: list(v) for k, v in self.ranges.items()}}


SYMMETRIES = ("cube", "square", "revolution")
REVOLUTION_STEPS = 360  # a body of revolution's rotations, one per degree: at 5 cm from the axis, 0.4 mm apart


def symmetry_rotations(kind: str | None) -> np.ndarray:
    """`(G, 3, 3)` the rotations that map a shape onto itself, the identity first: `cube` the cube's 24, `square` 4
    about z, `revolution` rotations about z every degree, None the identity alone."""
    if kind is None:
        return np.eye(3)[None]
    if kind == "cube":  # the signed permutation matrices of determinant +1
        mats = [np.eye(3)[list(p)] * s for p in itertools.permutations(range(3))
                for s in itertools.product((1, -1), repeat=3)]
        mats = [m for m in mats if np.linalg.det(m) > 0]
        return np.stack(sorted(mats, key=lambda m: not np.array_equal(m, np.eye(3))))
    if kind in ("square", "revolution"):
        n = 4 if kind == "square" else REVOLUTION_STEPS
        angle = 2 * np.pi * np.arange(n) / n
        mats = np.zeros((n, 3, 3))
        mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1] = np.cos(angle), -np.sin(angle), np.sin(angle), \
            np.cos(angle)
        mats[:, 2, 2] = 1
        return mats
    raise ValueError(f"unknown symmetry {kind!r}; choose from {SYMMETRIES}")


def cube_corners(h: float) -> list:
    """The four top corners and the centre of a cube of half size `h`."""
    return [[sx * h, sy * h, h] for sx in (-1, 1) for sy in (-1, 1)] + [[0, 0, 0]]


def describe_randomisation(r: dict) -> str:
    """One line from `Task.randomisation`: each sampler's ranges (x, y in m from its reference point, yaw in rad),
    then the rest."""
    parts = [f"{name}: x {p['x'][0]:+.3f}..{p['x'][1]:+.3f}, y {p['y'][0]:+.3f}..{p['y'][1]:+.3f}, "
             f"yaw {p['yaw'][0]:+.2f}..{p['yaw'][1]:+.2f}" for name, p in r["placement"].items()]
    parts.append(f"joint noise std {r['joint_noise_std']} rad")
    if any(r.get("joint_offset", ())):
        parts.append(f"arm start offset {r['joint_offset']} rad")
    parts += [f"{k} {v[0]}..{v[1]}" for k, v in r.items() if k not in ("placement", "joint_noise_std", "joint_offset")]
    return "; ".join(parts)
