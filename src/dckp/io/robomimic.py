"""`dckp export --format robomimic`: demonstrations in robomimic's HDF5 layout, which its `SequenceDataset` (and so
BC-RNN, Diffusion Policy and the other baselines that train on robomimic datasets) reads with no conversion.

    data                        attrs: total (samples in the file), env_args (JSON: env_name, type, env_kwargs)
    data/demo_N                 attrs: num_samples; seed and success as dckp stored them
    data/demo_N/obs/<cam>_image (T,H,W,3) uint8, top row first (robosuite's IMAGE_CONVENTION "opencv")
    data/demo_N/obs/<cam>_depth (T,H,W,1) float32: robosuite's normalised z-buffer in [0, 1] (what robosuite's
                                `camera_depths` gives and robomimic's datasets hold; 1 = nothing seen)
    data/demo_N/obs/robot0_eef_pos, robot0_eef_quat (x y z w), robot0_gripper_qpos, robot0_joint_pos (T,*) float32
    data/demo_N/obs/object      (T, 7 N) float32: each object's position and quaternion (x y z w), ground truth
    data/demo_N/next_obs/...    the same keys one step later (the last step repeats the last observation)
    data/demo_N/actions         (T,7) float32, rewards (T,) (1 on the last step of a successful demonstration),
                                dones (T,) (1 on the last step)
    mask/train, mask/valid      filter keys: demonstration names (bytes), a seeded split

Metres from the z-buffer: `near / (1 - d (1 - near / far))`, with the planes stored in `data` attrs `depth_near`
and `depth_far` (for simulator tasks, the task's MuJoCo planes: `znear` and `zfar` times the model's extent).
No `states` (dckp does not store MuJoCo states), so robomimic cannot replay the demonstrations in the simulator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dckp.errors import DckpError
from dckp.io.config import ExportConfig

ROBOSUITE_ENV_TYPE = 1  # robomimic.envs.env_base.EnvType.ROBOSUITE_TYPE
PROPRIO = {"joint_pos": "robot0_joint_pos", "eef_pos": "robot0_eef_pos", "eef_quat": "robot0_eef_quat",
           "gripper_qpos": "robot0_gripper_qpos"}  # dckp's key -> robosuite's observation key


def zbuffer(depth, near: float, far: float):
    """Metres (0 = invalid) -> robosuite's normalised z-buffer in [0, 1] (1 = invalid: nothing seen)."""
    import numpy as np

    depth = np.asarray(depth, np.float64)
    with np.errstate(divide="ignore"):
        d = (1 - near / np.clip(depth, near, far)) / (1 - near / far)
    return np.where(depth > 0, d, 1.0).astype(np.float32)


def metres(d, near: float, far: float):
    """The inverse of `zbuffer` (robosuite's `get_real_depth_map`); 1 (nothing seen) gives `far`."""
    import numpy as np

    return (near / (1 - np.asarray(d, np.float64) * (1 - near / far))).astype(np.float32)


def _env_args(task: str, cameras: list[str], size: tuple[int, int]) -> tuple[dict, tuple[float, float] | None]:
    """robomimic's `env_args` for a simulator task (robosuite's environment and the kwargs of `robosuite.make`
    that dckp collects with) and that task's depth planes; for another task, a placeholder and None."""
    from dckp.sim.tasks import TASKS

    if task not in TASKS:
        return {"env_name": task, "type": ROBOSUITE_ENV_TYPE, "env_kwargs": {}}, None
    from dckp.sim.env import SimEnv

    spec = TASKS[task]
    env = SimEnv(spec, image_size=0)
    extent = env.model.stat.extent
    planes = (float(env.model.vis.map.znear * extent), float(env.model.vis.map.zfar * extent))
    env.close()
    kwargs = {"robots": "Panda", "control_freq": 20, "reward_shaping": False, "has_renderer": False,
              "has_offscreen_renderer": True, "use_object_obs": True, "use_camera_obs": True,
              "camera_names": cameras, "camera_heights": size[0], "camera_widths": size[1], "camera_depths": True,
              **spec.env_kwargs}
    return {"env_name": spec.env_name, "type": ROBOSUITE_ENV_TYPE, "env_kwargs": kwargs}, planes


def _wxyz_to_xyzw(q):
    import numpy as np

    return np.concatenate([q[..., 1:], q[..., :1]], -1)


def export_robomimic(demos: str | os.PathLike, out: str | os.PathLike, cfg: ExportConfig,
                     progress: bool = True) -> dict:
    """Write the demonstrations of `demos` (a `dckp collect` file) to `out` in robomimic's layout (the module's
    docstring), atomically. Returns a summary."""
    import h5py
    import numpy as np
    from scipy.spatial.transform import Rotation
    from tqdm import tqdm

    from dckp.config import temp_beside
    from dckp.data import Dataset

    out = Path(out)
    with Dataset(demos) as ds:
        ds.expect("demos")
        ds.validate()
        episodes = ds.episodes
        cameras = ds.streams(episodes[0])
        size = ds.frames(episodes[0], cameras[0], "rgb", 0, 1).shape[1:3]
        env_args, planes = _env_args(ds.task, cameras, size)
        if cfg.depth:
            planes = tuple(cfg.depth_planes) or planes
            if planes is None:
                raise DckpError(f"task {ds.task!r} is not a simulator task: give the z-buffer's planes with "
                                "--depth-planes NEAR FAR (or --depth false)", field="--depth-planes")
        tmp = temp_beside(out)
        total = 0
        try:
            with h5py.File(tmp, "w") as f:
                data = f.create_group("data")
                for ep in tqdm(episodes, desc="export robomimic", unit="demo", disable=not progress):
                    T = ds.num_frames(ep, cameras[0])
                    obs = {}
                    for cam in cameras:
                        obs[f"{cam}_image"] = ds.frames(ep, cam, "rgb", 0, T)
                        if cfg.depth:
                            obs[f"{cam}_depth"] = zbuffer(ds.frames(ep, cam, "depth", 0, T), *planes)[..., None]
                    for key, name in PROPRIO.items():
                        value = ds.array(ep, key).astype(np.float32)
                        obs[name] = _wxyz_to_xyzw(value) if key == "eef_quat" else value
                    if "object_pose" in ds.keys(ep):
                        poses = ds.array(ep, "object_pose")  # (T, N, 4, 4)
                        quat = Rotation.from_matrix(poses[..., :3, :3].reshape(-1, 3, 3)).as_quat()  # x y z w
                        obs["object"] = np.concatenate([poses[..., :3, 3], quat.reshape(*poses.shape[:2], 4)],
                                                       -1).reshape(T, -1).astype(np.float32)
                    success = bool(ds.episode_attrs(ep).get("success", True))
                    name = f"demo_{int(ep.rsplit('_', 1)[1])}"
                    grp = data.create_group(name)
                    grp.attrs.update(num_samples=T, seed=int(ds.episode_attrs(ep).get("seed", -1)), success=success)
                    groups = {"obs": obs}
                    if cfg.next_obs:
                        groups["next_obs"] = {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()}
                    for group, values in groups.items():
                        g = grp.create_group(group)
                        for key, value in values.items():
                            images = key.endswith(("_image", "_depth"))
                            g.create_dataset(key, data=value, chunks=(1, *value.shape[1:]) if images else None,
                                             compression="gzip" if images else None, shuffle=images)
                    grp.create_dataset("actions", data=ds.actions(ep).astype(np.float32))
                    rewards, dones = np.zeros(T, np.float32), np.zeros(T, np.float32)
                    rewards[-1], dones[-1] = float(success), 1.0
                    grp.create_dataset("rewards", data=rewards)
                    grp.create_dataset("dones", data=dones)
                    total += T
                data.attrs["total"] = total
                data.attrs["env_args"] = json.dumps(env_args)
                data.attrs.update(dckp_task=ds.task, dckp_objects=json.dumps(ds.objects), dckp_source=str(demos))
                if cfg.depth:
                    data.attrs.update(depth_near=planes[0], depth_far=planes[1])
                names = sorted(data, key=lambda n: int(n[5:]))
                order = np.random.default_rng(cfg.seed).permutation(len(names))
                n_valid = int(round(cfg.valid_fraction * len(names)))
                valid = sorted((names[i] for i in order[:n_valid]), key=lambda n: int(n[5:]))
                train = [n for n in names if n not in valid]
                for key, split in (("train", train), ("valid", valid)):
                    f.create_dataset(f"mask/{key}", data=np.array(split, dtype="S"))
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return {"out": str(out), "demos": len(names), "samples": total, "train": len(train), "valid": len(valid),
            "obs": sorted(obs), "env_name": env_args["env_name"]}
