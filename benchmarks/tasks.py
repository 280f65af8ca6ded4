"""Do the tasks test vision? A `blind` policy (proprioception alone) against ground-truth keypoints on every task.

    python benchmarks/tasks.py                                  # every task, 50 episodes each; resumes
    python benchmarks/tasks.py --tasks lift --episodes 100      # one task

Per task: the scripted expert's success over seeds 0..49 (physics only) and how often every object is in view
of the task's cameras at the start (>= 20 pixels of it in at least one camera, 128 px); the task's `cpu`
demonstrations (`dckp collect`, seeds from 0); references chosen on the first demonstration's first frame as
`dckp keypoints` chooses them (the pixels depend on the object masks only, so no DON is needed for gt-kp); then
`blind` and `gt-kp` policies trained alike (cpu preset: `dckp.policy.config.default_steps`) and evaluated
closed loop on the same seeds from 1,000,000. Every artefact under `--runs` is reused when it exists, and the
results file is rewritten after each cell, so an interrupted run continues where it stopped.

Writes `<out>.json` (`<task>` -> `blind`, `gt-kp`, `expert_success`: each `{rate, ci95, episodes}`, and
`randomisation`: the task's ranges) and `<out>.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.encoders.config import EncoderConfig
from dckp.evaluation import evaluate_policy, wilson_interval
from dckp.keypoints.select import select_references
from dckp.learn import train_on_demos
from dckp.policy.config import POLICY_PRESETS, default_steps
from dckp.sim.collect import collect_demos
from dckp.sim.config import COLLECT_PRESETS
from dckp.sim.env import SimEnv
from dckp.sim.rollout import expert_episode
from dckp.sim.tasks import TASKS, get_task
from dckp.sim.tasks.base import describe_randomisation

ENCODERS = ("blind", "gt-kp")
EXPERT_SEEDS = 50
VISIBLE_PIXELS = 20


def rate(successes: int, n: int) -> dict:
    return {"rate": successes / n, "ci95": list(wilson_interval(successes, n)), "episodes": n}


def expert_and_visibility(task) -> tuple[dict, float]:
    """Expert success over seeds 0..49, and the share of those seeds whose first frame shows every object."""
    env = SimEnv(task, 128)
    try:
        visible, successes = 0, 0
        for seed in range(EXPERT_SEEDS):
            env.reset(seed)
            obs = env.observe()
            counts = np.array([[(obs[f"{cam}_seg"] == i + 1).sum() for i in range(len(task.objects))]
                               for cam in env.cameras])
            visible += bool((counts.max(0) >= VISIBLE_PIXELS).all())
            successes += expert_episode(env, seed).success
    finally:
        env.close()
    return rate(successes, EXPERT_SEEDS), visible / EXPERT_SEEDS


def run_task(name: str, runs: Path, episodes: int, workers: int) -> tuple[dict, float]:
    task = get_task(name)
    folder = runs / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"randomisation": task.randomisation, "episodes": episodes}
    saved = folder / "tasks.config.json"
    if saved.exists() and json.loads(saved.read_text())["randomisation"] != task.randomisation:
        raise SystemExit(f"{folder}: made with other randomisation ranges; use another --runs folder")
    save_json(config, saved)

    expert_file = folder / "expert.json"
    if not expert_file.exists():
        expert, visible = expert_and_visibility(task)
        save_json({"expert_success": expert, "visible_at_start": visible}, expert_file)
    expert = json.loads(expert_file.read_text())
    result = {"expert_success": expert["expert_success"], "randomisation": task.randomisation}

    demos = folder / "demos.h5"
    if not demos.exists():
        cfg = dataclasses.replace(COLLECT_PRESETS["cpu"], task=name)
        collect_demos(cfg, str(demos))
    refs = folder / "references.safetensors"
    if not refs.exists():
        select_references(None, demos, refs)  # no DON: the pixels depend on the object masks only
    for encoder in ENCODERS:
        policy = folder / encoder
        cfg = dataclasses.replace(POLICY_PRESETS["cpu"], steps=default_steps(len(task.cameras), name))
        spec = EncoderConfig(encoder=encoder, references=str(refs) if encoder == "gt-kp" else "").spec()
        if not (policy / "policy.safetensors").exists():
            train_on_demos(demos, spec, cfg, policy)
        ev = policy / "eval" / "eval.json"
        r = json.loads(ev.read_text()) if ev.exists() else {}
        if r.get("episodes") != episodes:
            r = evaluate_policy(policy, episodes=episodes, workers=workers, videos=2)
        result[encoder] = rate(r["successes"], r["episodes"])
    return result, expert["visible_at_start"]


def markdown(results: dict, visible: dict, title: str) -> str:
    lines = [f"# {title}", "",
             "`python benchmarks/tasks.py` (cpu preset policies, the same evaluation seeds from 1,000,000 for both "
             "encoders; expert over seeds 0..49; in view: share of those seeds whose first frame shows every object "
             f"with >= {VISIBLE_PIXELS} px in some camera at 128 px). 95 % Wilson intervals.", "",
             "| task | blind | gt-kp | gt-kp - blind | expert | in view at start | randomisation (placement x, y in m "
             "from the sampler's reference point, yaw in rad) |", "|---|---|---|---|---|---|---|"]

    def cell(r):
        return f"{r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] ({r['episodes']})"

    for task, r in results.items():
        gap = (f"{r['gt-kp']['rate'] - r['blind']['rate']:+.2f}" if "gt-kp" in r and "blind" in r else "-")
        lines.append(f"| {task} | {cell(r['blind']) if 'blind' in r else '-'} | "
                     f"{cell(r['gt-kp']) if 'gt-kp' in r else '-'} | {gap} | {cell(r['expert_success'])} | "
                     f"{visible.get(task, float('nan')):.2f} | {describe_randomisation(r['randomisation'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                        help="tasks to measure (default: all)")
    parser.add_argument("--episodes", type=int, default=50, help="closed-loop episodes per policy (default: 50)")
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes (default: 2)")
    parser.add_argument("--runs", default="runs/tasks", help="artefacts, reused when present (default: runs/tasks)")
    parser.add_argument("--out", default="results/tasks", help="results stem: .json and .md (default: results/tasks)")
    parser.add_argument("--title", default="Do the tasks test vision? blind against ground-truth keypoints",
                        help="the markdown's heading")
    args = parser.parse_args()
    torch.set_num_threads(1)

    path = Path(args.out + ".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    visible = {}
    for name in args.tasks:
        results[name], visible[name] = run_task(name, Path(args.runs), args.episodes, args.workers)
        save_json(results, path)
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "randomisation"}), flush=True)
    for name in results:  # tasks measured by earlier invocations
        expert = Path(args.runs) / name / "expert.json"
        if name not in visible and expert.exists():
            visible[name] = json.loads(expert.read_text())["visible_at_start"]
    atomic_write_bytes(args.out + ".md", markdown(results, visible, args.title).encode())


if __name__ == "__main__":
    main()
