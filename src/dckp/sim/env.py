"""A robosuite environment for one dckp task: seeded resets, proprioception, RGB-D cameras, object poses."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import mujoco
import numpy as np

from dckp.sim.render import HIDDEN_GROUP, ROBOT_LABEL, Cameras

ROBOT_PREFIXES = ("robot0_", "gripper0_", "fixed_mount0_")
PROPRIO_KEYS = ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")


_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _between_steps():
    """Ctrl-C, SIGTERM and SIGHUP that come during the block are recorded and raised again when it ends, for the
    handlers in place before it: robosuite's controllers are numba code, which turns an exception that a handler
    raises inside it into a SystemError, and an EGL call through ctypes turns it into a ctypes.ArgumentError (a
    traceback instead of an interrupt); one in the middle of making a renderer leaves an object whose clean-up
    fails. Only in the main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    before = {s: signal.signal(s, lambda n, _: received.append(n)) for s in _STOPS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(received):
            signal.raise_signal(s)


def _import_robosuite():
    """robosuite, imported without its start-up warnings (no private macro file, optional robot models)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import robosuite  # slow import: only when an environment is made
    finally:
        logging.disable(previous)
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)  # robosuite sets INFO on import
    return robosuite


def make_robosuite(env_name: str, **kwargs):
    """A robosuite environment whose model is the same in every process: robosuite draws some object sizes
    (Lift's cube, 2.0-2.2 cm) from the environment's generator when it builds the model, so that is seeded."""
    robosuite = _import_robosuite()
    return robosuite.make(
        env_name, robots="Panda", has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,
        control_freq=20, hard_reset=False, horizon=10_000, ignore_done=True, reward_shaping=False, seed=0, **kwargs,
    )


class SimEnv:
    """One task's scene. `reset(seed)` gives the same scene for the same seed.

    `image_size=0` turns rendering off (physics only).
    """

    def __init__(self, task, image_size: int = 128, cameras: tuple[str, ...] | None = None):
        self.task = task
        self.env = make_robosuite(task.env_name, **task.env_kwargs)
        self.model: mujoco.MjModel = self.env.sim.model._model
        self.data: mujoco.MjData = self.env.sim.data._data
        self.robot = self.env.robots[0]
        self.eef_site = self.robot.eef_site_id["right"]
        self.object_bodies = task.object_bodies(self.env)  # [(root body, pose body)] per object, label i+1
        samplers = {s.name: s for s in _samplers(self.env.placement_initializer)}
        for name, placement in task.placement.items():
            sampler = samplers[name]
            sampler.x_range, sampler.y_range, sampler.rotation = list(placement.x), list(placement.y), placement.yaw
        self.robot.initialization_noise = {"magnitude": task.joint_noise, "type": "gaussian"}
        self.robot.init_qpos = self.robot.init_qpos + np.asarray(task.joint_offset)
        task.prepare_model(self.env)
        hide_markers(self.model)
        self.cameras = tuple(task.cameras if cameras is None else cameras)
        self.image_size = image_size
        with _between_steps():  # an interrupt in the middle of making the GL context leaves a half-made renderer
            self.renderer = (Cameras(self.model, image_size, image_size, self.geom_labels())
                             if image_size else None)

    # --- scene ---
    def reset(self, seed: int) -> None:
        self.env.rng = np.random.default_rng(seed)
        for sampler in _samplers(self.env.placement_initializer):
            sampler.rng = self.env.rng
        with _between_steps():
            self.env.reset()
        self.task.on_reset(self, np.random.default_rng([seed, 1]))
        mujoco.mj_forward(self.model, self.data)
        for _ in range(self.task.settle_steps):
            self.step(np.r_[np.zeros(6), -1.0])

    def step(self, action: np.ndarray) -> None:
        with _between_steps():
            self.env.step(np.asarray(action, dtype=np.float64))

    def success(self) -> bool:
        return bool(self.task.success(self))

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.env.close()

    # --- observations ---
    def eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.site_xpos[self.eef_site].copy(), self.data.site_xmat[self.eef_site].reshape(3, 3).copy()

    def proprio(self) -> dict[str, np.ndarray]:
        pos, rot = self.eef_pose()
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, rot.ravel())
        return {
            "joint_pos": self.data.qpos[self.robot._ref_joint_pos_indexes].astype(np.float32),
            "eef_pos": pos.astype(np.float32),
            "eef_quat": quat.astype(np.float32),  # wxyz
            "gripper_qpos": self.data.qpos[self.robot._ref_gripper_joint_pos_indexes["right"]].astype(np.float32),
        }

    def body_pose(self, body: str) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.data.body(body).xmat.reshape(3, 3)
        T[:3, 3] = self.data.body(body).xpos
        return T

    def object_poses(self) -> np.ndarray:
        """(N, 4, 4) world poses of the task's objects (ground truth, for baselines and measuring)."""
        return np.stack([self.body_pose(pose_body) for _, pose_body in self.object_bodies])

    def render(self, camera, segmentation: bool = True) -> dict[str, np.ndarray]:
        if self.renderer is None:
            raise RuntimeError("rendering is off (image_size=0)")
        with _between_steps():
            return self.renderer.render(self.data, camera, segmentation)

    def observe(self, images: bool = True, segmentation: bool = True) -> dict[str, np.ndarray]:
        """Proprioception, object poses and, per camera, `<cam>_rgb|_depth|_seg|_K|_pose`.

        `images=False` skips rendering: K and pose are exact, rgb, depth and seg are blank (zeros) of the right
        size, for encoders that read only the camera geometry (`needs_images()` false). `segmentation=False` leaves
        out `_seg` and renders each camera in one pass instead of two (acting needs no segmentation)."""
        obs = self.proprio()
        obs["object_pose"] = self.object_poses().astype(np.float32)
        if self.renderer is not None:
            for cam in self.cameras:
                if images:
                    view = self.render(cam, segmentation)
                else:
                    K, pose = self.renderer.geometry(self.data, cam)
                    size = (self.image_size, self.image_size)
                    view = {"rgb": np.zeros((*size, 3), np.uint8), "depth": np.zeros(size, np.float32),
                            "seg": np.zeros(size, np.uint8), "K": K, "pose": pose}
                for key, value in view.items():
                    obs[f"{cam}_{key}"] = value
        return obs

    def geom_labels(self) -> np.ndarray:
        """Segmentation label per geom: 1..N for the task's objects, 255 for the robot, 0 otherwise."""
        m = self.model
        labels = np.zeros(m.ngeom, np.uint8)
        roots = {m.body(root).id: i + 1 for i, (root, _) in enumerate(self.object_bodies)}
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            while b > 0:
                if b in roots:
                    labels[g] = roots[b]
                    break
                if m.body(b).name.startswith(ROBOT_PREFIXES):
                    labels[g] = ROBOT_LABEL
                    break
                b = m.body_parentid[b]
        return labels


def hide_markers(model: mujoco.MjModel) -> None:
    """Move robosuite's end-effector target markers (`*_eef_target`) to a geom group that is not drawn."""
    for g in range(model.ngeom):
        if model.body(model.geom_bodyid[g]).name.endswith("_eef_target"):
            model.geom_group[g] = HIDDEN_GROUP


def _samplers(sampler):
    """robosuite's placement sampler and, in a composite one, every sampler inside it."""
    if sampler is None:
        return
    yield sampler
    for sub in getattr(sampler, "samplers", {}).values():
        yield from _samplers(sub)
