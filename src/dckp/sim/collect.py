"""Collections: expert demonstrations, and pretraining views of static scenes from moving cameras."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from dckp.config import temp_beside
from dckp.data import DatasetWriter
from dckp.data.dataset import encode_depth
from dckp.errors import DckpError, Interrupted
from dckp.outputs import check_space
from dckp.sim import experts as ex
from dckp.sim.config import RENDER, CollectConfig, ViewsConfig
from dckp.sim.env import SimEnv
from dckp.sim.render import free_camera
from dckp.sim.rollout import expert_episode
from dckp.sim.tasks import OVERVIEW, WRIST, get_task

log = logging.getLogger(__name__)

VIEW_CAMERAS = (WRIST, OVERVIEW)
MIN_BYTES_PER_PIXEL = 0.25  # of a camera's compressed rgb, depth and seg at a step (lift at 64 px: about 1.1)


def _stack(frames: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def _file_config(task, cfg) -> dict:
    """The settings stored in a file: what its data depend on (not `workers`: any number gives the same file)."""
    collect = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}
    return {"collect": collect, "keypoints": task.keypoints, "image_size": cfg.image_size, "render": RENDER}


# --- expert episodes, in this process or in worker processes ---------------------------------------------------

_ENV: SimEnv | None = None
_NOISE = (0.0, "all")


def _init_worker(task: str, image_size: int, noise: tuple[float, str]) -> None:
    global _ENV, _NOISE
    _ENV, _NOISE = SimEnv(get_task(task), image_size), noise


def _expert(env: SimEnv, seed: int, noise: tuple[float, str]) -> tuple[dict[str, np.ndarray], np.ndarray, int] | None:
    """A recorded expert episode from `seed` (its frames, actions and steps) with DART `noise` (std, phases), or
    None where it failed."""
    ep = expert_episode(env, seed, record=True, noise=noise[0], noise_phases=noise[1])
    return (_stack(ep.frames), np.stack(ep.actions), ep.steps) if ep.success else None


def _worker_expert(seed: int):
    return _expert(_ENV, seed, _NOISE)


def expert_episodes(task: str, image_size: int, seeds: range, workers: int = 1,
                    noise: tuple[float, str] = (0.0, "all")) -> Iterator[tuple[int, tuple | None]]:
    """`(seed, _expert(...))` for each of `seeds`, in seed order: in this process (`workers=1`) or in `workers`
    spawned processes, each with its own environment, that run at most 2 episodes each ahead of the one consumed
    (an episode's frames are large). An episode depends on its seed alone, so any `workers` gives the same
    episodes. Stopping the iteration early stops the workers."""
    if workers == 1:
        env = SimEnv(get_task(task), image_size)
        try:
            for seed in seeds:
                yield seed, _expert(env, seed, noise)
        finally:
            env.close()
        return
    todo = iter(seeds)
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (task, image_size, noise)) as pool:
        running = collections.deque((s, pool.apply_async(_worker_expert, (s,))) for s in itertools.islice(todo,
                                                                                                      2 * workers))
        while running:
            seed, result = running.popleft()
            episode = result.get()
            running.extend((s, pool.apply_async(_worker_expert, (s,))) for s in itertools.islice(todo, 1))
            yield seed, episode


class FinishedEpisodes:
    """The finished episodes of a collection into `out`, kept beside it (`.NAME.episodes/`, one compressed .npz
    each, renamed into place when complete) until the file is, so that a collection killed part-way resumes from
    its last complete episode: they are written to the new file again as they were, so it is the same bytes as a
    collection run straight through. `key` is what the episodes depend on; another key's episodes are removed."""

    def __init__(self, out: str | os.PathLike, key: dict):
        self.folder = Path(out).with_name(f".{Path(out).name}.episodes")
        key_file, key = self.folder / "key.json", json.dumps(key, sort_keys=True)
        if self.folder.exists() and (not key_file.is_file() or key_file.read_text() != key):
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
        self.kept = len(list(self.folder.glob("*.npz")))

    def __iter__(self) -> Iterator[tuple[str, dict[str, np.ndarray], np.ndarray, dict]]:
        """(name, frames, actions, attrs) of each finished episode, in order."""
        for i in itertools.count():
            path = self.folder / f"{i:06d}.npz"
            if not path.exists():
                return
            with np.load(path) as f:
                attrs = json.loads(str(f["attrs"]))
                frames = {k.removeprefix("obs/"): f[k] for k in f.files if k.startswith("obs/")}
                yield attrs.pop("name"), frames, f["actions"], attrs

    def add(self, index: int, name: str, frames: dict[str, np.ndarray], actions: np.ndarray, **attrs) -> dict:
        """Keep episode `index`; returns its frames as they are kept and written (depth encoded)."""
        frames = {k: encode_depth(v, k) if k.endswith("_depth") and v.dtype != np.uint16 else v
                  for k, v in frames.items()}
        path = self.folder / f"{index:06d}.npz"
        tmp = temp_beside(path)
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, attrs=np.array(json.dumps({"name": name, **attrs})),
                                    actions=np.asarray(actions, np.float32),
                                    **{f"obs/{k}": v for k, v in frames.items()})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.kept = max(self.kept, index + 1)
        return frames

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def collect_demos(cfg: CollectConfig, out: str, preset: str = "cpu", progress: bool = True) -> dict:
    """Successful expert demonstrations of `cfg.task` into `out`, the first `demos` successes from seed `cfg.seed`
    on, run by `cfg.workers` processes; a collection into `out` that was interrupted or killed is resumed from its
    last finished episode (`FinishedEpisodes`). Returns a summary."""
    task = get_task(cfg.task)
    n = cfg.demos or task.demos[preset]
    check_space(out, n * task.horizon * len(task.cameras) * cfg.image_size**2 * MIN_BYTES_PER_PIXEL,
                f"{n} demonstrations", "demos")
    attempts = math.ceil(max(n * cfg.max_attempts_factor, n + 5))
    config = _file_config(task, cfg)
    finished = FinishedEpisodes(out, {**config, "collect": {k: v for k, v in config["collect"].items()
                                                           if k not in ("demos", "max_attempts_factor")}})
    lengths, next_seed = [], cfg.seed
    try:
        with DatasetWriter(out, "demos", task.name, task.objects, config, workspace=task.workspace) as writer:
            for name, frames, actions, attrs in itertools.islice(finished, n):
                writer.add_episode(name, frames, actions, **attrs)
                lengths.append(attrs["num_steps"])
                next_seed = attrs["seed"] + 1
            if lengths:
                log.info("resuming from the %d finished demonstrations in %s", len(lengths), finished.folder)
            seeds = range(next_seed, cfg.seed + attempts)
            with (tqdm(total=n, initial=len(lengths), desc=f"demos {task.name}", disable=not progress) as bar,
                  contextlib.closing(expert_episodes(task.name, cfg.image_size, seeds, cfg.workers,
                                                     (cfg.noise, cfg.noise_phases))) as episodes):
                for seed, episode in episodes if len(lengths) < n else ():
                    next_seed = seed + 1
                    if episode is not None:
                        frames, actions, steps = episode
                        name, attrs = f"demo_{len(lengths)}", {"seed": seed, "success": True, "num_steps": int(steps)}
                        frames = finished.add(len(lengths), name, frames, actions, **attrs)
                        writer.add_episode(name, frames, actions, **attrs)
                        lengths.append(steps)
                        bar.update(1)
                        if len(lengths) == n:
                            break  # closing the episodes stops the workers
                if len(lengths) < n:
                    raise DckpError(f"only {len(lengths)} of {n} demonstrations succeeded in {next_seed - cfg.seed} "
                                    "seeds", field="demos")
            summary = {"demos": n, "seeds_tried": next_seed - cfg.seed, "mean_steps": float(np.mean(lengths)),
                       "image_bytes_per_frame": writer.bytes_images / max(writer.frames, 1)}
    except KeyboardInterrupt:
        if not finished.kept:
            finished.remove()
            raise
        raise Interrupted(f"kept the {finished.kept} finished demonstrations in {finished.folder}, which the same "
                          "command resumes from") from None
    except BaseException:
        finished.remove()
        raise
    finished.remove()
    return summary


def _object_tops(env: SimEnv) -> np.ndarray:
    """(N, 3): each object's centre in x, y and its highest point in z (from its geoms' bounding spheres)."""
    m, d = env.model, env.data
    labels = env.renderer.geom_labels if env.renderer is not None else env.geom_labels()
    tops = []
    for i in range(len(env.object_bodies)):
        geoms = np.flatnonzero(labels == i + 1)
        xy = d.geom_xpos[geoms, :2].mean(0)
        tops.append(np.r_[xy, (d.geom_xpos[geoms, 2] + m.geom_rbound[geoms]).max()])
    return np.array(tops)


def _remove_objects(env: SimEnv) -> np.ndarray:
    """Move every object 20+ m away, out of every camera's view. Returns the saved body positions."""
    m, d = env.model, env.data
    saved = m.body_pos.copy()
    for i, (root, _) in enumerate(env.object_bodies):
        b = m.body(root).id
        far = np.array([20.0 + 5 * i, 0.0, 0.5])
        if m.body_jntnum[b] and m.jnt_type[m.body_jntadr[b]] == mujoco.mjtJoint.mjJNT_FREE:
            adr = m.jnt_qposadr[m.body_jntadr[b]]
            d.qpos[adr: adr + 3] = far
            d.qvel[m.jnt_dofadr[m.body_jntadr[b]]: m.jnt_dofadr[m.body_jntadr[b]] + 6] = 0
        else:
            m.body_pos[b] = far
    mujoco.mj_forward(m, d)
    return saved


def _film(env: SimEnv, cfg: ViewsConfig, tops: np.ndarray, rng: np.random.Generator, approach: bool
          ) -> dict[str, np.ndarray]:
    """Free-camera views of the scene as it is, then the task's cameras while the arm sweeps above it and, with
    `approach`, while the task's expert moves in to its first grasp (stopped as it would close the gripper)."""
    obs = {}
    if env.task.park is not None:
        for _ in range(40):
            pos, rot = env.eef_pose()
            env.step(ex.servo(pos, rot, np.array(env.task.park), rot, ex.OPEN))
    free = []
    for _ in range(cfg.free_views):
        target = tops[rng.integers(len(tops))].copy() if rng.random() < 0.5 else tops.mean(0)
        target[2] -= 0.03
        distance = np.exp(rng.uniform(np.log(cfg.min_distance), np.log(cfg.max_distance)))
        cam = free_camera(target + rng.normal(0, 0.02, 3), distance, rng.uniform(0, 360), rng.uniform(-80, -25))
        free.append(env.render(cam))
    obs.update({f"free_{k}": v for k, v in _stack(free).items()})

    sweep = []
    for _ in range(cfg.sweep_waypoints):
        top = tops[rng.integers(len(tops))]
        goal = np.r_[top[:2] + rng.uniform(-0.06, 0.06, 2), top[2] + rng.uniform(0.1, 0.25)]
        tilt = Rotation.from_rotvec(np.r_[rng.uniform(-0.3, 0.3, 2), 0]).as_matrix()
        rot = ex.rot_z(rng.uniform(-np.pi / 2, np.pi / 2)) @ tilt @ ex.top_down(env)
        for step in range(25):
            pos, cur = env.eef_pose()
            if step % cfg.record_every == 0:
                sweep.append(env.observe())
            env.step(ex.servo(pos, cur, goal, rot, ex.OPEN, speed=0.5))
    if approach:  # the demonstrations' first grasp, stopped before the fingers close: the scene stays still
        expert, t = env.task.expert(env), 0
        while (action := expert.act(env)) is not None and action[-1] == ex.OPEN:
            if t % cfg.record_every == 0:
                sweep.append(env.observe())
            env.step(action)
            t += 1
    obs.update(_stack(sweep))
    return obs


def collect_views(cfg: ViewsConfig, out: str, progress: bool = True) -> dict:
    """Pretraining views of `cfg.scenes` static scenes plus `cfg.arm_only` arm-only sequences into `out`."""
    task = get_task(cfg.task)
    env = SimEnv(task, cfg.image_size, cameras=VIEW_CAMERAS)
    rng = np.random.default_rng(cfg.seed)
    try:
        with DatasetWriter(out, "views", task.name, task.objects, _file_config(task, cfg),
                           workspace=task.workspace) as writer:
            total = cfg.scenes + cfg.arm_only
            with tqdm(total=total, desc=f"views {task.name}", disable=not progress) as bar:
                for i in range(total):
                    seed = cfg.seed + i
                    env.reset(seed)
                    tops = _object_tops(env)
                    arm_only = i >= cfg.scenes
                    saved = _remove_objects(env) if arm_only else None
                    obs = _film(env, cfg, tops, rng, cfg.approach and not arm_only)
                    if arm_only:
                        env.model.body_pos[:] = saved
                        name = f"arm_{i - cfg.scenes}"
                    else:
                        name = f"scene_{i}"
                    writer.add_episode(name, obs, seed=seed, arm_only=arm_only)
                    bar.update(1)
            summary = {"scenes": cfg.scenes, "arm_only": cfg.arm_only, "frames": writer.frames,
                       "image_bytes_per_frame": writer.bytes_images / max(writer.frames, 1)}
    finally:
        env.close()
    return summary
