"""How each task's scripted expert ends its phases: on reaching the target, or on the step limit with the hand short
of it. A phase that ends on its limit after the hand has stalled switches at a moment no observation marks (the
hand sits still, then lets go), which a policy cannot learn; pick_place_clutter's expert did that in every
demonstration until its goal was moved within reach (a92c820). No timing: it may run beside other work.

    python benchmarks/experts.py                      # every task, seeds 0..19
    python benchmarks/experts.py --tasks nut_assembly --seeds 50

Writes results/experts.{json,md}: per task `{episodes, success, mean_steps, step_limit_endings: {phase: episodes
whose phase with a target ended on its step limit}, stalled_steps: {phase: mean steps an episode in which the hand
moved < 1 mm while commanded > 0.1 of the controller's range}}`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from dckp.config import atomic_write_bytes, save_json
from dckp.sim.env import SimEnv
from dckp.sim.tasks import TASKS, get_task

STALL_M, COMMANDED = 0.001, 0.1


def expert_phases(name: str, seeds: int) -> dict:
    task = get_task(name)
    env = SimEnv(task, image_size=0)
    limits, stalled, successes, steps = Counter(), Counter(), 0, []
    try:
        for seed in range(seeds):
            env.reset(seed)
            expert, t = task.expert(env), 0
            while t < task.horizon and (action := expert.act(env)) is not None:
                before = env.eef_pose()[0].copy()
                env.step(action)
                t += 1
                moved = np.linalg.norm(env.eef_pose()[0] - before)
                if moved < STALL_M and np.linalg.norm(action[:3]) > COMMANDED and not expert.done:
                    stalled[expert.phases[expert.index].name] += 1
            limits.update({phase for phase, _ in expert.short_of_target()})
            successes += env.success()
            steps.append(t)
    finally:
        env.close()
    return {"episodes": seeds, "success": successes / seeds, "mean_steps": float(np.mean(steps)),
            "step_limit_endings": dict(limits), "stalled_steps": {k: v / seeds for k, v in stalled.items()}}


def markdown(results: dict, seeds: int) -> str:
    lines = ["# How the scripted experts end their phases", "",
             f"`python benchmarks/experts.py --seeds {seeds}`: per task, over seeds 0..{seeds - 1}, the episodes in "
             "which a phase with a target ended on its step limit instead of reaching it, and the steps an episode "
             f"in which the hand moved < {STALL_M * 1000:.0f} mm while commanded > {COMMANDED} of the controller's "
             "range (stalled), by phase.", "",
             "| task | success | mean steps | phases ended on their step limit (episodes) | stalled steps an episode |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        limits = ", ".join(f"{k} {v}" for k, v in r["step_limit_endings"].items()) or "none"
        stalled = ", ".join(f"{k} {v:.1f}" for k, v in r["stalled_steps"].items()) or "none"
        lines.append(f"| {name} | {r['success']:.2f} | {r['mean_steps']:.0f} | {limits} | {stalled} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, default=20, help="expert episodes per task, seeds 0..N-1")
    p.add_argument("--results", default="results")
    args = p.parse_args()
    results = {}
    for name in args.tasks:
        results[name] = expert_phases(name, args.seeds)
        print(name, results[name], flush=True)
    out = Path(args.results)
    save_json(results, out / "experts.json")
    atomic_write_bytes(out / "experts.md", markdown(results, args.seeds).encode())


if __name__ == "__main__":
    main()
