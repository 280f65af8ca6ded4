"""Simulator throughput, evaluation episodes per hour and scripted-expert success. Writes
results/sim_throughput.{json,md}.

    python benchmarks/sim_throughput.py              # 50 seeds per task (about 15 minutes on 2 cores)
    python benchmarks/sim_throughput.py --seeds 5    # quick look

- `steps_per_s`: control steps/s (observe, then step) physics-only and with the two cameras (wrist and overview)
  at 128 and 256 px as closed-loop evaluation observes them: RGB and depth from one render pass per camera
  (`observe(segmentation=False)`). `steps_per_s_with_seg`: the same as demonstrations record, with segmentation
  (two passes per camera). `steps_per_s_before`: the figures before issue 14 (two passes, every geom drawn, Mesa's
  rasteriser threads): commit 5b79e89's own benchmark, run on this machine, quiet, just before this one (the
  figures results/sim_throughput.json held then, 156.7 / 20.6 / 17.2, were taken on a busier machine).
- `views_per_s`: free-camera RGB-D+segmentation views/s; `image_bytes_per_frame`: stored bytes per frame.
- `evaluation`: per task, one closed-loop episode's cost measured through `dckp.evaluation.rollout.rollout` with
  the task's cameras at 128 px and an untrained dckp-3d policy (the `cpu` DON, 16 keypoints per camera, the LSTM;
  the weights do not change the cost) on one torch thread, over `--eval-steps` steps: ms per step for the
  simulator (render + physics), the encoder and the head, and ms per reset. Evaluation runs one worker process
  per core, so episodes per hour on 2 cores = 2 x 3600 s / (reset + steps x ms per step), at the expert's mean
  episode length (every episode a success) and at the task's horizon (every episode a failure).
- `expert_success`, `expert_mean_steps`: the scripted expert over seeds 0..N-1 (mean length of the successes).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from dckp.config import atomic_write_bytes, save_json
from dckp.don.checkpoint import save_checkpoint
from dckp.don.config import DON_PRESETS
from dckp.don.model import DenseObjectNet
from dckp.encoders import build_encoder
from dckp.evaluation.rollout import rollout
from dckp.policy.config import POLICY_PRESETS
from dckp.policy.model import Policy, VisuomotorPolicy
from dckp.sim.collect import VIEW_CAMERAS, collect_demos
from dckp.sim.config import CollectConfig
from dckp.sim.env import SimEnv
from dckp.sim.render import free_camera
from dckp.sim.rollout import expert_episode
from dckp.sim.tasks import TASKS, get_task

BEFORE = {"source": "commit 5b79e89's benchmarks/sim_throughput.py --seeds 50, rerun 2026-11-26 on this machine, quiet",
          "physics": 274.4, "rgbd2_128": 28.2, "rgbd2_256": 22.9}
EVAL_SIZE = 128
KEYPOINTS = 16  # per camera, as dckp run selects them


def steps_per_s(image_size: int, steps: int, segmentation: bool = False) -> float:
    env = SimEnv(get_task("stack"), image_size, cameras=VIEW_CAMERAS if image_size else ())
    env.reset(0)
    rng = np.random.default_rng(0)
    env.observe(segmentation=segmentation)  # warm-up (shader compilation)
    start = time.perf_counter()
    for _ in range(steps):
        env.observe(segmentation=segmentation)
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


def untrained_dckp3d_policy(cameras, folder: Path):
    """A dckp-3d policy with random weights (DON `cpu` preset, KEYPOINTS random references per camera)."""
    cfg = DON_PRESETS["cpu"]
    torch.manual_seed(0)
    save_checkpoint(folder / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 0)
    refs = {}
    for cam in cameras:
        refs.update({f"{cam}.descriptors": torch.randn(KEYPOINTS, cfg.descriptor_dim),
                     f"{cam}.uv": torch.zeros(KEYPOINTS, 2), f"{cam}.object": torch.zeros(KEYPOINTS, dtype=torch.int64),
                     f"{cam}.local": torch.zeros(KEYPOINTS, 3)})
    (folder / "refs.safetensors").write_bytes(save(refs, metadata={"dckp": "{}"}))
    artefacts = {"don": str(folder / "don"), "references": str(folder / "refs.safetensors")}
    encoder = build_encoder({"name": "dckp-3d", "artefacts": artefacts}, cameras, EVAL_SIZE).eval()
    policy = VisuomotorPolicy(encoder, Policy(encoder.output_dim() + 9, cfg=POLICY_PRESETS["cpu"]).eval())
    policy.check()
    return policy


def evaluation_cost(name: str, steps: int, mean_steps: float) -> dict:
    """ms per step (sim, encoder, head) and per reset of closed-loop episodes; episodes/h on 2 cores."""
    task = get_task(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = SimEnv(task, EVAL_SIZE)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            policy = untrained_dckp3d_policy(task.cameras, Path(tmp))
            rollout(env, policy, 0, max_steps=2)  # warm-up
            runs = [rollout(env, policy, seed, max_steps=steps // 2) for seed in (1, 2)]
    finally:
        env.close()
        torch.set_num_threads(threads)
    n = sum(r["steps"] for r in runs)
    ms = {part: 1000 * sum(r[f"time_{part}_s"] for r in runs) / n for part in ("sim", "encoder", "policy")}
    step_s, reset_s = sum(ms.values()) / 1000, sum(r["time_reset_s"] for r in runs) / len(runs)

    def per_hour(length):
        return 2 * 3600 / (reset_s + length * step_s)

    return {"cameras": list(task.cameras), "ms_per_step": ms, "ms_reset": 1000 * reset_s, "horizon": task.horizon,
            "episodes_per_hour_2_cores": {"expert_length": per_hour(mean_steps), "horizon": per_hour(task.horizon)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50, help="expert seeds per task (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=200,
                        help="control steps per steps/s figure (default: %(default)s)")
    parser.add_argument("--eval-steps", type=int, default=200,
                        help="closed-loop steps per task for the evaluation cost (default: %(default)s)")
    parser.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    args = parser.parse_args()

    results = {"machine": f"{platform.processor() or platform.machine()}, CPU only, MUJOCO_GL=egl (Mesa)",
               "seeds": args.seeds, "steps_per_s": {}, "steps_per_s_with_seg": {}, "steps_per_s_before": BEFORE,
               "views_per_s": {}, "image_bytes_per_frame": {}, "expert_success": {}, "expert_mean_steps": {},
               "evaluation": {}}
    results["steps_per_s"]["physics"] = steps_per_s(0, args.steps * 5)
    for size in (128, 256):
        results["steps_per_s"][f"rgbd2_{size}"] = steps_per_s(size, args.steps)
        results["steps_per_s_with_seg"][f"rgbd2_{size}"] = steps_per_s(size, args.steps, segmentation=True)
        results["views_per_s"][f"free_{size}"] = views_per_s(size, args.steps)
        results["image_bytes_per_frame"][f"rgbd_seg_{size}"] = bytes_per_frame(size)
    print(json.dumps(results, indent=1), flush=True)
    for name in TASKS:
        rate, mean_steps = expert_success(name, args.seeds)
        results["expert_success"][name] = rate
        results["expert_mean_steps"][name] = mean_steps
        results["evaluation"][name] = evaluation_cost(name, args.eval_steps, mean_steps)
        print(f"{name}: {rate:.2f} success, {mean_steps:.0f} steps; evaluation {results['evaluation'][name]}",
              flush=True)

    out = Path(args.out)
    save_json(results, out / "sim_throughput.json")
    atomic_write_bytes(out / "sim_throughput.md", ("\n".join(markdown(results, args)) + "\n").encode())


def markdown(results: dict, args) -> list[str]:
    steps, seg, before = results["steps_per_s"], results["steps_per_s_with_seg"], results["steps_per_s_before"]
    lines = ["# Simulator throughput, evaluation episodes per hour and expert success", "",
             f"{results['machine']}. `python benchmarks/sim_throughput.py --seeds {args.seeds}`.", "",
             "Control steps/s (observe, then step), stack with the wrist and overview cameras. Evaluation observes "
             "RGB and depth in one render pass per camera; demonstrations also record segmentation (two passes). "
             f"Before: {before['source']} (two passes, every geom drawn, Mesa's rasteriser threads).", "",
             "| measure | before | now, as evaluation | now, with segmentation |", "|---|---|---|---|",
             f"| physics only | {before['physics']:.1f} | {steps['physics']:.1f} | |"]
    lines += [f"| two RGB-D cameras, {size} px | {before[f'rgbd2_{size}']:.1f} | {steps[f'rgbd2_{size}']:.1f} | "
              f"{seg[f'rgbd2_{size}']:.1f} |" for size in (128, 256)]
    lines += ["", "| measure | value |", "|---|---|"]
    lines += [f"| free-camera RGB-D+seg views/s, {k} | {v:.1f} |" for k, v in results["views_per_s"].items()]
    lines += [f"| stored image bytes per frame (rgb+depth+seg), {k} | {v:.0f} |"
              for k, v in results["image_bytes_per_frame"].items()]
    lines += ["", f"Closed-loop evaluation at {EVAL_SIZE} px with a dckp-3d policy (untrained: the weights do not "
              f"change the cost) on one torch thread, {args.eval_steps} steps per task; episodes per hour on 2 cores "
              "(one worker per core) at the expert's mean length and at the horizon:", "",
              "| task | cameras | sim ms/step | encoder ms/step | head ms/step | reset ms | episodes/h, expert length "
              "| episodes/h, horizon |", "|---|---|---|---|---|---|---|---|"]
    for name, e in results["evaluation"].items():
        ms, per_hour = e["ms_per_step"], e["episodes_per_hour_2_cores"]
        lines.append(f"| {name} | {len(e['cameras'])} | {ms['sim']:.1f} | {ms['encoder']:.1f} | {ms['policy']:.1f} "
                     f"| {e['ms_reset']:.0f} | {per_hour['expert_length']:.0f} "
                     f"({results['expert_mean_steps'][name]:.0f} steps) | {per_hour['horizon']:.0f} "
                     f"({e['horizon']} steps) |")
    lines += ["", f"| task | expert success ({args.seeds} seeds) | mean steps |", "|---|---|---|"]
    lines += [f"| {k} | {results['expert_success'][k]:.2f} | {results['expert_mean_steps'][k]:.0f} |" for k in TASKS]
    return lines


if __name__ == "__main__":
    main()
