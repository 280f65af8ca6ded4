"""Simulator throughput and scripted-expert success. Writes results/sim_throughput.{json,md}.

    python benchmarks/sim_throughput.py              # 50 seeds per task (about 15 minutes on 2 cores)
    python benchmarks/sim_throughput.py --seeds 5    # quick look

Measures control steps/s physics-only and with the two RGB-D(+segmentation) cameras at 128 and 256 px,
free-camera views/s, the stored bytes per frame, and expert success over seeds 0..N-1 with mean episode
length (successful episodes).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from dckp.config import atomic_write_bytes, save_json
from dckp.sim.collect import VIEW_CAMERAS, collect_demos
from dckp.sim.config import CollectConfig
from dckp.sim.env import SimEnv
from dckp.sim.render import free_camera
from dckp.sim.rollout import expert_episode
from dckp.sim.tasks import TASKS, get_task


def steps_per_s(image_size: int, steps: int) -> float:
    env = SimEnv(get_task("stack"), image_size, cameras=VIEW_CAMERAS if image_size else ())
    env.reset(0)
    rng = np.random.default_rng(0)
    env.observe()  # warm-up (shader compilation)
    start = time.perf_counter()
    for _ in range(steps):
        env.observe()
        env.step(np.r_[rng.uniform(-0.3, 0.3, 6), -1.0])
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def views_per_s(image_size: int, views: int) -> float:
    env = SimEnv(get_task("stack"), image_size)
    env.reset(0)
    rng = np.random.default_rng(0)
    env.render(free_camera([0, 0, 0.82], 0.8, 0, -45))
    start = time.perf_counter()
    for _ in range(views):
        env.render(free_camera([0, 0, 0.82], rng.uniform(0.3, 1.6), rng.uniform(0, 360), rng.uniform(-80, -25)))
    rate = views / (time.perf_counter() - start)
    env.close()
    return rate


def bytes_per_frame(image_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        summary = collect_demos(CollectConfig(task="stack", demos=1, image_size=image_size),
                                str(Path(tmp) / "d.h5"), progress=False)
    return summary["image_bytes_per_frame"]


def expert_success(name: str, seeds: int) -> tuple[float, float]:
    env = SimEnv(get_task(name), image_size=0)
    episodes = [expert_episode(env, seed) for seed in range(seeds)]
    env.close()
    ok = [e for e in episodes if e.success]
    return len(ok) / seeds, float(np.mean([e.steps for e in ok])) if ok else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="results")
    args = parser.parse_args()

    results = {"machine": f"{platform.processor() or platform.machine()}, CPU only, MUJOCO_GL=egl (Mesa)",
               "seeds": args.seeds, "steps_per_s": {}, "views_per_s": {}, "image_bytes_per_frame": {},
               "expert_success": {}, "expert_mean_steps": {}}
    results["steps_per_s"]["physics"] = steps_per_s(0, args.steps * 5)
    for size in (128, 256):
        results["steps_per_s"][f"rgbd2_{size}"] = steps_per_s(size, args.steps)
        results["views_per_s"][f"free_{size}"] = views_per_s(size, args.steps)
        results["image_bytes_per_frame"][f"rgbd_seg_{size}"] = bytes_per_frame(size)
    print(json.dumps(results, indent=1), flush=True)
    for name in TASKS:
        rate, mean_steps = expert_success(name, args.seeds)
        results["expert_success"][name] = rate
        results["expert_mean_steps"][name] = mean_steps
        print(f"{name}: {rate:.2f} success, {mean_steps:.0f} steps", flush=True)

    out = Path(args.out)
    save_json(results, out / "sim_throughput.json")
    lines = ["# Simulator throughput and expert success", "",
             f"{results['machine']}. `python benchmarks/sim_throughput.py --seeds {args.seeds}`.", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| control steps/s, {k} | {v:.1f} |" for k, v in results["steps_per_s"].items()]
    lines += [f"| free-camera RGB-D+seg views/s, {k} | {v:.1f} |" for k, v in results["views_per_s"].items()]
    lines += [f"| stored image bytes per frame (rgb+depth+seg), {k} | {v:.0f} |"
              for k, v in results["image_bytes_per_frame"].items()]
    lines += ["", f"| task | expert success ({args.seeds} seeds) | mean steps |", "|---|---|---|"]
    lines += [f"| {k} | {results['expert_success'][k]:.2f} | {results['expert_mean_steps'][k]:.0f} |"
              for k in TASKS]
    atomic_write_bytes(out / "sim_throughput.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
