"""Where pick_place_clutter policies fail: closed-loop rollouts on validation seeds, each sorted into success, a can
never lifted (with where the hand was when the gripper first closed) and a can lifted but not let go in the bin.

    python benchmarks/ppc_failures.py runs/learner/pick_place_clutter/gt-kp_rnn-gmm [more] --labels motion [more]

Seeds from 2,020,000 (validation, apart from those a checkpoint is chosen on). Writes
`results/ppc_failures.json` (`<label>` = `{seeds, success, never_lifted, lifted_not_placed, episodes}`, each
episode `{seed, success, lifted, first_close_cm, final_hand_can_cm, final_gripper, yaw_ambiguity}`) and
`results/ppc_failures.md`.
One process, one episode at a time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.evaluation.rollout import rollout
from dckp.evaluation.validation import VAL_SEED_START
from dckp.policy.folder import load_run, load_visuomotor_policy
from dckp.sim.env import SimEnv
from dckp.sim.tasks import get_task
from dckp.sim.tasks.pick_place_clutter import _PP_OBJECTS, GRASP_ABOVE_CENTRE, _footprint, closing_yaw

SEED_START = VAL_SEED_START + 20_000
LIFTED = 0.05  # metres above its start: the can was lifted


def yaw_ambiguity(env, seed: int, draws: int = 20) -> float:
    """The share of `draws` in which turning the carton, the loaf and the box each about its own centre by a random
    yaw moves the expert's closing direction by more than 20 degrees (modulo 180): how sensitive that choice (an
    argmax over 36 directions) is to the clutter's orientation, which gt-kp observes (its references put 5 to 12
    points on each of the three), near a switch from one direction to another in the demonstrations."""
    rng = np.random.default_rng(seed)
    can = env.data.body("Can_main").xpos[:2]
    feet = [_footprint(env, f"{o}_main") - can for o in _PP_OBJECTS[:3]]
    base, moved = closing_yaw(np.concatenate(feet)), 0
    for _ in range(draws):
        turned = []
        for f in feet:
            a, c = rng.uniform(0, 2 * np.pi), f.mean(0)
            turned.append((f - c) @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + c)
        d = abs(closing_yaw(np.concatenate(turned)) - base) % np.pi
        moved += min(d, np.pi - d) > np.radians(20)
    return moved / draws


def episodes(folder: str, seeds: range) -> list[dict]:
    policy, run = load_visuomotor_policy(folder, "cpu"), load_run(folder)
    env = SimEnv(get_task("pick_place_clutter"), image_size=run["image_size"], cameras=tuple(run["cameras"]))
    step, out = env.step, []
    try:
        for seed in seeds:
            log: list[tuple] = []

            def logged(action, log=log):
                can, hand = env.data.body("Can_main").xpos.copy(), env.eef_pose()[0]
                log.append((*(hand - can), action[-1], can[2]))
                step(action)

            env.reset(seed)
            ambiguity = yaw_ambiguity(env, seed)
            env.step = logged
            r = rollout(env, policy, seed)
            env.step = step
            a = np.array(log)
            n_reset = len(a) - r["steps"]  # the reset's own settling steps come first
            a = a[n_reset:]
            closing = np.flatnonzero(a[:, 3] > 0)
            offset = a[closing[0], :3] - [0, 0, GRASP_ABOVE_CENTRE] if len(closing) else None
            can_z = np.r_[a[:, 4], env.data.body("Can_main").xpos[2]]
            out.append({"seed": seed, "success": r["success"], "lifted": bool(can_z.max() - can_z[0] > LIFTED),
                        "first_close_cm": None if offset is None else np.round(100 * offset, 1).tolist(),
                        "final_hand_can_cm": round(100 * float(np.linalg.norm(a[-1, :3])), 1),
                        "final_gripper": float(a[-1, 3]), "yaw_ambiguity": ambiguity})
            print(json.dumps(out[-1]), flush=True)
    finally:
        env.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="pick_place_clutter policy folders")
    p.add_argument("--labels", nargs="+", default=[], help="a name per folder in the results (default: its name)")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--results", default="results")
    args = p.parse_args()
    torch.set_num_threads(1)
    path = Path(args.results) / "ppc_failures.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.labels and len(args.labels) != len(args.folders):
        p.error(f"--labels: {len(args.labels)} given for {len(args.folders)} folders; give one per folder")
    for folder, label in zip(args.folders, args.labels or [Path(f).name for f in args.folders], strict=True):
        eps = episodes(folder, range(SEED_START, SEED_START + args.episodes))
        results[label] = {
            "seeds": [SEED_START, SEED_START + args.episodes], "success": sum(e["success"] for e in eps),
            "never_lifted": sum(not e["lifted"] for e in eps),
            "lifted_not_placed": sum(e["lifted"] and not e["success"] for e in eps), "episodes": eps}
        save_json(results, path)
    lines = ["# Where pick_place_clutter policies fail", "",
             f"`python benchmarks/ppc_failures.py <policy folders>`: rollouts on validation seeds from {SEED_START:,}. "
             "*Never lifted*: the can never rose 5 cm; *first close*: where the hand was (cm from the expert's grasp "
             "point: can centre + 1 cm up) when the gripper first closed; *lifted, not placed*: carried but not let go "
             "in the bin by the horizon; *ambiguous*: episodes where turning the clutter about its centres moves the "
             "expert's closing direction by > 20 degrees in at least half of 20 draws: near a switch of that "
             "direction (gt-kp does observe the clutter's orientation, with 5 to 12 reference points on each "
             "object).", "",
             "| policy | episodes | success | never lifted | lifted, not placed | median first close of those never "
             "lifted (x, y, z cm) | success where ambiguous | elsewhere |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        closes = [e["first_close_cm"] for e in r["episodes"] if not e["lifted"] and e["first_close_cm"]]
        med = ", ".join(f"{v:+.1f}" for v in np.median(closes, axis=0)) if closes else "-"
        amb = [e["success"] for e in r["episodes"] if e["yaw_ambiguity"] >= 0.5]
        rest = [e["success"] for e in r["episodes"] if e["yaw_ambiguity"] < 0.5]
        lines.append(f"| {name} | {len(r['episodes'])} | {r['success']} | {r['never_lifted']} | "
                     f"{r['lifted_not_placed']} | {med} | {sum(amb)}/{len(amb)} | {sum(rest)}/{len(rest)} |")
    atomic_write_bytes(Path(args.results) / "ppc_failures.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
