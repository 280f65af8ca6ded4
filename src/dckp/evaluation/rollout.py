"""Closed-loop evaluation of a trained policy folder: seeded rollouts in parallel worker processes, success rate
with a Wilson 95 % interval, per-part timings and videos with the encoder's keypoints drawn on each camera.

A policy folder (written by `dckp train-policy`) is loaded whole, encoder included, by
`dckp.policy.load_visuomotor_policy`; an episode calls its `reset()` and then `act(observation)` at each step.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dckp.config import save_json
from dckp.errors import DckpError
from dckp.policy.folder import evaluated_on, load_run, load_visuomotor_policy
from dckp.policy.model import observation_frames
from dckp.sim.env import SimEnv
from dckp.sim.tasks import get_task
from dckp.viz.images import colour_scale, draw_keypoints, grid, save_video

VIDEO_SIZE = 256  # camera images are upscaled (nearest) by an integer factor to about this height in videos
HOLD_FRAMES = 10  # frames of the final image with a green (success) / red (failure) border at a video's end
EVAL_SEED_START = 1_000_000  # demonstrations use seeds from 0, pretraining views 100000 and 200000
THIRD_PERSON = "frontview"  # robosuite's camera facing the robot: recorded in videos only, never seen by the policy
EPISODES_FILE = "episodes.json"  # beside eval.json: every episode recorded, so that an evaluation grows
EPISODE_RECORD = "episode_{seed}.json"  # one finished episode, until `write_evaluation` folds it into episodes.json
EPISODE_KEYS = ("seed", "success", "steps", "actions_sha256", "time_encoder_s", "time_policy_s", "time_sim_s",
                "time_reset_s", "video")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96); `(0, 1)` when `n == 0`."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise DckpError(f"successes must be in [0, {n}], got {successes}", field="successes")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --- drawing ----------------------------------------------------------------------------------------------------

def composite(obs: dict, cameras, keypoints: dict | None = None, size: int = VIDEO_SIZE) -> np.ndarray:
    """All cameras' RGB side by side (upscaled to about `size` px high), with keypoints drawn where given:
    `keypoints = {cam: (uv (1, K, 2), peak probability (1, K))}` as from an encoder's `image_keypoints(frames)`,
    coloured by `colour_scale`."""
    images = []
    for cam in cameras:
        rgb = np.asarray(obs[f"{cam}_rgb"])
        scale = max(1, round(size / rgb.shape[0]))
        if keypoints and cam in keypoints:
            uv, peak = keypoints[cam]
            confidence = colour_scale(_numpy(peak)[0], rgb.shape[0] * rgb.shape[1])
            images.append(draw_keypoints(rgb, _numpy(uv)[0], confidence, scale))
        else:
            images.append(np.repeat(np.repeat(rgb, scale, 0), scale, 1))
    return grid([images], pad=2)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)


def with_border(image: np.ndarray, success: bool, width: int | None = None) -> np.ndarray:
    """A copy of `image` with a green (success) or red (failure) border."""
    out = image.copy()
    w = width if width is not None else max(3, min(image.shape[:2]) // 40)
    colour = np.array([0, 200, 0] if success else [220, 0, 0], np.uint8)
    out[:w], out[-w:], out[:, :w], out[:, -w:] = colour, colour, colour, colour
    return out


def rollout(env, policy, seed: int, record: bool = False, max_steps: int | None = None,
            views: tuple[str, ...] = ()) -> dict:
    """One closed-loop episode of a `VisuomotorPolicy` from `env.reset(seed)`, up to the task's horizon (or
    `max_steps` instead).

    Stops at the first step after which `env.success()` holds (a success). Returns `success`, `steps` (actions
    taken), `time_encoder_s` (the encoder), `time_policy_s` (proprioception and the head), `time_sim_s`
    (observe, i.e. rendering, + step + success test), `time_reset_s`, `actions_sha256` (the first 16 hex digits of
    the hash of every action taken, as float64, to compare episodes bit for bit) and, if `record`, `frames`: one
    composite image (all cameras side by side, keypoints drawn if the encoder produces them, then the named cameras
    `views` rendered for the video alone, e.g. a third-person view) per observation, i.e. before each action and
    once after the last (steps + 1 images). Drawing is not timed.
    """
    horizon = env.task.horizon if max_steps is None else int(max_steps)
    if horizon < 1:
        raise DckpError(f"max_steps must be >= 1, got {horizon}", field="max_steps")
    cameras = list(env.cameras)
    encoder = policy.encoder
    draw_kp = record and encoder.keypoints
    t_sim = 0.0
    frames_out: list[np.ndarray] = []

    def record_frame(obs):
        if record:
            with torch.no_grad():
                kps = encoder.image_keypoints(observation_frames(obs, cameras)) if draw_kp else None
            extra = {f"{v}_rgb": env.render(v, segmentation=False)["rgb"] for v in views}
            frames_out.append(composite({**obs, **extra}, [*cameras, *views], kps))

    t0 = time.perf_counter()
    env.reset(seed)
    policy.reset()
    t_reset = time.perf_counter() - t0
    steps, success, digest = 0, False, hashlib.sha256()
    while steps < horizon:
        t0 = time.perf_counter()
        obs = env.observe(images=record or encoder.needs_images(), segmentation=False)
        t1 = time.perf_counter()
        action = policy.act(obs)
        digest.update(np.ascontiguousarray(action, np.float64).tobytes())
        record_frame(obs)
        t2 = time.perf_counter()
        env.step(action)
        steps += 1
        success = bool(env.success())
        t_sim += (t1 - t0) + (time.perf_counter() - t2)
        if success:
            break
    if record:
        record_frame(env.observe(segmentation=False))
    out = {"success": success, "steps": steps, "actions_sha256": digest.hexdigest()[:16],
           "time_encoder_s": policy.timing["encoder_s"],
           "time_policy_s": policy.timing["policy_s"], "time_sim_s": t_sim, "time_reset_s": t_reset}
    if record:
        out["frames"] = frames_out
    return out


# --- workers ---------------------------------------------------------------------------------------------------

class _Evaluator:
    """One process's environment, encoder and policy, built once from a policy folder."""

    def __init__(self, policy_dir: str, out_dir: str, max_steps: int | None, device: str = "cpu", node: str = "",
                 task: str = ""):
        run = load_run(policy_dir)
        self.policy = load_visuomotor_policy(policy_dir, device)
        self.env = SimEnv(get_task(task or run["task"]), image_size=run["image_size"], cameras=tuple(run["cameras"]))
        self.out_dir, self.max_steps = out_dir, max_steps
        key = _run_key(policy_dir, max_steps, device, task)
        self.run_with = {**_episodes_record(key, {}, [], episodes=False), "node": node or platform.node()}

    def episode(self, job: tuple[int, bool]) -> dict:
        """One episode; its record is saved at once (`EPISODE_RECORD` in `out_dir`), so that an evaluation stopped
        part-way keeps the episodes it finished."""
        seed, record = job
        start = time.perf_counter()
        result = rollout(self.env, self.policy, seed, record=record, max_steps=self.max_steps,
                         views=(THIRD_PERSON,))
        frames = result.pop("frames", None)
        if frames:
            final = with_border(frames[-1], result["success"])
            path = save_video(frames[:-1] + [final] * HOLD_FRAMES, Path(self.out_dir) / f"rollout_{seed}.mp4")
            result["video"] = path.name
        result["seed"] = seed
        save_json({**self.run_with, "seconds": round(time.perf_counter() - start, 2),
                   "episode": {k: v for k, v in result.items() if k in EPISODE_KEYS}},
                  Path(self.out_dir) / EPISODE_RECORD.format(seed=seed))
        return result

    def close(self) -> None:
        self.env.close()


_WORKER: _Evaluator | None = None


def _init_worker(policy_dir: str, out_dir: str, max_steps: int | None, device: str, task: str) -> None:
    global _WORKER
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    _WORKER = _Evaluator(policy_dir, out_dir, max_steps, device, task=task)


def _run_episode(job: tuple[int, bool]) -> dict:
    return _WORKER.episode(job)


# --- evaluation ------------------------------------------------------------------------------------------------

def evaluate_policy(policy_dir: str | os.PathLike, episodes: int = 50, seed_start: int = EVAL_SEED_START,
                    workers: int = 2, videos: int = 3, out_dir: str | os.PathLike | None = None,
                    progress: bool = True, max_steps: int | None = None, device: str = "cpu", task: str = "") -> dict:
    """Roll out the policy in `policy_dir` from seeds `seed_start .. seed_start + episodes - 1`.

    Episodes run in `workers` spawned processes (each builds its environment, encoder and policy once and uses
    one torch thread); `workers=1` runs in this process (also with one torch thread, restored afterwards). The
    first `videos` seeds are recorded to `out_dir/rollout_<seed>.mp4` (every camera, then the third-person view
    `THIRD_PERSON`; eval.json's `videos` names them relative to `out_dir`). `out_dir` defaults to
    `policy_dir/eval`. `max_steps` replaces the task's horizon (for tests and quick looks). The policy (its encoder
    too) runs on `device`, the simulator on the CPU. Seeds already recorded in `out_dir` for this policy, horizon
    and device (`recorded_episodes`) are not run again: an evaluation grows. The task is run.json's, checked
    against the demonstrations the policy was trained on, or `task`, given on purpose (`evaluated_on`). Writes and
    returns `out_dir/eval.json`.
    """
    policy_dir = Path(policy_dir)
    for name, value, low in (("episodes", episodes, 1), ("workers", workers, 1), ("videos", videos, 0),
                             ("seed_start", seed_start, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DckpError(f"{name} must be an integer >= {low}, got {value!r}", field=name)
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise DckpError(f"max_steps must be an integer >= 1, got {max_steps!r}", field="max_steps")
    name = evaluated_on(policy_dir, task)  # fail here, with the file's name, before starting any worker
    task = "" if name == load_run(policy_dir)["task"] else name  # "": run.json's
    load_visuomotor_policy(policy_dir)
    out = Path(out_dir) if out_dir is not None else policy_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(seed_start, seed_start + episodes))
    jobs = missing_jobs(out, policy_dir, seeds, videos, max_steps, device, task)
    args = (str(policy_dir), str(out), max_steps, device, task)

    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc=f"evaluate {name}", unit="episode", disable=not progress or not jobs)
    try:
        if len(jobs) <= 1 or workers == 1:
            results = run_episodes(policy_dir, jobs, out, max_steps, bar, device, task=task) if jobs else []
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=args) as pool:
                for result in pool.imap_unordered(_run_episode, jobs):
                    results.append(result)
                    bar.set_postfix(success=sum(r["success"] for r in results), refresh=False)
                    bar.update(1)
    finally:
        bar.close()
    return write_evaluation(results, policy_dir, out, seeds, max_steps, device, task=task)


def run_episodes(policy_dir: str | os.PathLike, jobs: list[tuple[int, bool]], out_dir: str | os.PathLike,
                 max_steps: int | None = None, bar: tqdm | None = None, device: str = "cpu",
                 node: str = "", task: str = "") -> list[dict]:
    """The episodes `jobs` (`(seed, record a video)` pairs) of the policy in `policy_dir`, in this process with one
    torch thread (restored afterwards); videos and each episode's record (`EPISODE_RECORD`, naming `node`, by
    default this host) go to `out_dir`. An episode's result depends on its seed alone, not on which episodes ran
    before it in the same process, so any split of the seeds gives the same results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    evaluator, results = None, []
    try:
        evaluator = _Evaluator(str(policy_dir), str(out_dir), max_steps, device, node, task)
        for job in jobs:
            results.append(evaluator.episode(job))
            if bar is not None:
                bar.set_postfix(success=sum(r["success"] for r in results), refresh=False)
                bar.update(1)
    finally:
        if evaluator is not None:
            evaluator.close()
        torch.set_num_threads(threads)
    return results


def _policy_sha256(policy_dir: str | os.PathLike) -> str:
    return hashlib.sha256((Path(policy_dir) / "policy.safetensors").read_bytes()).hexdigest()[:16]


def _horizon(policy_dir: str | os.PathLike, max_steps: int | None, task: str = "") -> int:
    return get_task(task or load_run(policy_dir)["task"]).horizon if max_steps is None else max_steps


def episode_records(out_dir: str | os.PathLike, policy_dir: str | os.PathLike) -> dict | None:
    """Every episode recorded in `out_dir` and what they were run with: `{policy_sha256, horizon, device,
    episodes: [per-episode results, by seed], chunks}`, from `episodes.json`, else from an `eval.json` written
    before episodes.json existed (its episodes have no timings of their own: each gets the record's mean ms per
    step times its steps, so the sums stay; it counts as this policy's when not older than policy.safetensors, and
    as run on the CPU). None when there is none."""
    out, policy = Path(out_dir), Path(policy_dir) / "policy.safetensors"
    if (out / EPISODES_FILE).exists():
        try:
            return json.loads((out / EPISODES_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):  # unreadable: its episodes run again
            return None
    path = out / "eval.json"
    if not path.exists() or not policy.exists() or path.stat().st_mtime < policy.stat().st_mtime:
        return None
    ev = json.loads(path.read_text())
    if "per_episode" not in ev or "horizon" not in ev:
        return None
    ms, reset = ev.get("ms_per_step", {}), ev.get("ms_reset", 0.0)
    videos = {int(v.removeprefix("rollout_").removesuffix(".mp4")): v for v in ev.get("videos", [])
              if v.startswith("rollout_") and v.removeprefix("rollout_").removesuffix(".mp4").isdigit()}
    episodes = [{**e, **{f"time_{k}_s": ms.get(k, 0.0) * e["steps"] / 1000 for k in ("encoder", "policy", "sim")},
                 "time_reset_s": reset / 1000, **({"video": videos[e["seed"]]} if e["seed"] in videos else {})}
                for e in ev["per_episode"]]
    return {"policy_sha256": _policy_sha256(policy_dir), "horizon": ev["horizon"], "device": ev.get("device", "cpu"),
            "episodes": episodes, "chunks": ev.get("chunks", [])}


def keep_episodes(out_dir: str | os.PathLike, policy_dir: str | os.PathLike) -> None:
    """Write `episodes.json` from an older `eval.json` in `out_dir` (`episode_records`) where there is none, so that
    its episodes outlive the eval.json (which a pipeline removes before an evaluation asking for more seeds)."""
    if not (Path(out_dir) / EPISODES_FILE).exists() and (records := episode_records(out_dir, policy_dir)):
        save_json(records, Path(out_dir) / EPISODES_FILE)


def _loose_records(out_dir: str | os.PathLike) -> dict[Path, dict]:
    """The episode records (`EPISODE_RECORD`) in `out_dir` not yet folded into episodes.json, by file; an unreadable
    one (a run killed while writing it cannot leave one: writes are atomic) is skipped, its episode runs again."""
    found = {}
    for path in sorted(Path(out_dir).glob(EPISODE_RECORD.format(seed="*"))):
        try:
            found[path] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return found


def _same_run(record: dict, key: tuple) -> bool:
    return (record.get("policy_sha256"), record.get("horizon"), record.get("device"), record.get("task", "")) == key


def _run_key(policy_dir: str | os.PathLike, max_steps: int | None, device: str, task: str = "") -> tuple:
    """What an episode's result depends on besides its seed: the policy's sha256, the horizon, the device and the
    task where it is not run.json's ("" where it is)."""
    return _policy_sha256(policy_dir), _horizon(policy_dir, max_steps, task), device, task


def _episodes_record(key: tuple, by_seed: dict[int, dict], chunks: list[dict], episodes: bool = True) -> dict:
    """episodes.json's contents: the run `key` (its task only where it is not run.json's), the episodes by seed (in
    seed order) and the chunks; without `episodes`, the key alone."""
    record = {"policy_sha256": key[0], "horizon": key[1], "device": key[2], **({"task": key[3]} if key[3] else {})}
    return {**record, "episodes": [by_seed[s] for s in sorted(by_seed)], "chunks": chunks} if episodes else record


def _merged(out_dir: str | os.PathLike, policy_dir: str | os.PathLike, key: tuple, loose: dict[Path, dict]
            ) -> dict | None:
    """`recorded_episodes` for the run `key`, given `out_dir`'s `_loose_records`."""
    records = episode_records(out_dir, policy_dir)
    records = records if records and _same_run(records, key) else None
    episodes = [r["episode"] for r in loose.values() if _same_run(r, key)]
    if not episodes:
        return records
    by_seed = {e["seed"]: e for e in (records["episodes"] if records else [])} | {e["seed"]: e for e in episodes}
    return _episodes_record(key, by_seed, records["chunks"] if records else [])


def recorded_episodes(out_dir: str | os.PathLike, policy_dir: str | os.PathLike, max_steps: int | None = None,
                      device: str = "cpu", task: str = "") -> dict | None:
    """`episode_records` of `out_dir` and its episode records not yet folded in (`EPISODE_RECORD`, those of a
    stopped evaluation), of the ones run with this policy (the same policy.safetensors), horizon and device; None
    when there are none (an episode's result depends on its seed alone, so these are what running it again gives).
    """
    if not (Path(policy_dir) / "policy.safetensors").exists():
        return None
    return _merged(out_dir, policy_dir, _run_key(policy_dir, max_steps, device, task), _loose_records(out_dir))


def missing_jobs(out_dir: str | os.PathLike, policy_dir: str | os.PathLike, seeds: list[int], videos: int,
                 max_steps: int | None = None, device: str = "cpu", task: str = "") -> list[tuple[int, bool]]:
    """The `(seed, record a video)` jobs of `seeds` (the first `videos` recorded) not yet recorded in `out_dir`, or
    recorded without the video now wanted."""
    records = recorded_episodes(out_dir, policy_dir, max_steps, device, task)
    have = {e["seed"]: e for e in records["episodes"]} if records else {}
    jobs = [(seed, i < videos) for i, seed in enumerate(seeds)]
    return [(s, v) for s, v in jobs if s not in have or (v and "video" not in have[s])]


def write_evaluation(results: list[dict], policy_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     seeds: list[int], max_steps: int | None = None, device: str = "cpu",
                     chunks: list[dict] | None = None, task: str = "") -> dict:
    """`out_dir/eval.json` over `seeds`, from the per-episode results of `run_episodes` (any order) and the episodes
    already recorded there (`recorded_episodes`); `out_dir/episodes.json` keeps every episode recorded, also those
    beyond `seeds`, and `chunks` (which node ran which seeds and its seconds, added to those recorded; an episode
    of a stopped evaluation, from its own record, counts as a chunk of one seed). The episode records are folded
    into episodes.json and removed. Returns eval.json's contents."""
    run = load_run(policy_dir)
    out = Path(out_dir)
    key, loose = _run_key(policy_dir, max_steps, device, task), _loose_records(out)
    old = _merged(out, policy_dir, key, loose)
    by_seed = {e["seed"]: e for e in (old["episodes"] if old else [])}
    by_seed.update({r["seed"]: {k: v for k, v in r.items() if k in EPISODE_KEYS} for r in results})
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        raise DckpError(f"{len(missing)} of the {len(seeds)} seeds have no episode (first {missing[0]})",
                        path=str(out), field="seeds")
    fresh = {r["seed"] for r in results}
    stopped = [{"seeds": [r["episode"]["seed"]] * 2, "node": r["node"], "seconds": r["seconds"]}
               for r in loose.values() if _same_run(r, key) and r["episode"]["seed"] not in fresh]
    all_chunks = (old["chunks"] if old else []) + list(chunks or []) + stopped
    save_json(_episodes_record(key, by_seed, all_chunks), out / EPISODES_FILE)
    for path in loose:
        path.unlink()
    episodes = [by_seed[s] for s in seeds]
    report = summarise(episodes, task or run["task"])
    report.update(policy=str(policy_dir), encoder=run["encoder"], cameras=run["cameras"],
                  image_size=run["image_size"], horizon=key[1], device=device,
                  videos=[e["video"] for e in episodes if "video" in e])
    if all_chunks:
        report["chunks"] = [c for c in all_chunks if c["seeds"][0] in set(seeds)]
    save_json(report, out / "eval.json")
    return report


def summarise(results: list[dict], task: str) -> dict:
    """eval.json's numbers from per-episode rollout results (each with seed, success, steps and timings)."""
    n = len(results)
    successes = sum(bool(r["success"]) for r in results)
    low, high = wilson_interval(successes, n)
    total_steps = sum(r["steps"] for r in results)
    ok_steps = [r["steps"] for r in results if r["success"]]

    def ms(key):
        return 1000 * sum(r[key] for r in results) / max(total_steps, 1)

    return {
        "task": task,
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "ci95": [low, high],
        "mean_steps": total_steps / n if n else 0.0,
        "mean_steps_success": float(np.mean(ok_steps)) if ok_steps else None,
        "ms_per_step": {"encoder": ms("time_encoder_s"), "policy": ms("time_policy_s"), "sim": ms("time_sim_s")},
        "ms_reset": 1000 * sum(r.get("time_reset_s", 0.0) for r in results) / max(n, 1),
        "seeds": [r["seed"] for r in results],
        "per_episode": [{"seed": r["seed"], "success": bool(r["success"]), "steps": r["steps"],
                         "actions_sha256": r.get("actions_sha256")} for r in results],
    }


class _Recorder:
    """A policy that hands every observation it acts on to `seen`."""

    def __init__(self, policy, seen: list):
        self.policy, self.encoder, self.seen = policy, policy.encoder, seen

    @property
    def timing(self):
        return self.policy.timing

    def reset(self) -> None:
        self.policy.reset()

    def act(self, observation):
        self.seen.append(observation)
        return self.policy.act(observation)


def record_rollout(policy_dir, seed: int, max_steps: int = 0) -> dict:
    """One closed-loop episode of a policy folder from `seed` with every observation it acted on, as an episode
    of `dckp.viz.view`: `{"name", "cameras": {cam: {rgb, depth, K, pose}}, "object_pose", "eef_pos", "objects"}`."""
    run = load_run(policy_dir)
    task = get_task(evaluated_on(policy_dir))
    policy = load_visuomotor_policy(policy_dir)
    env = SimEnv(task, image_size=run["image_size"], cameras=tuple(run["cameras"]))
    seen: list[dict] = []
    try:
        result = rollout(env, _Recorder(policy, seen), seed, record=True, max_steps=max_steps or None)
    finally:
        env.close()
    stack = {key: np.stack([o[key] for o in seen]) for key in seen[0]}
    cameras = {cam: {k: stack[f"{cam}_{k}"] for k in ("rgb", "depth", "K", "pose")} for cam in run["cameras"]}
    outcome = "success" if result["success"] else "failure"
    return {"name": f"seed_{seed}_{outcome}", "cameras": cameras, "object_pose": stack["object_pose"],
            "eef_pos": stack["eef_pos"], "objects": list(task.objects)}
