"""Closed-loop success of keypoint policies. Writes results/policy.{json,md} (merging with tasks already there).

    dckp pretrain --views data/stack_views.h5 --out runs/don_stack     # the task's own DON, as `dckp run` trains
    python benchmarks/policy.py --task stack --don runs/don_stack --demos data/stack.h5 --episodes 50

For each encoder (dckp-3d, dckp-2d, gt-kp, and blind: proprioception alone, the control): the references are
chosen once from the demonstrations (`dckp keypoints`, shared by all encoders, so gt-kp moves the very same
pixels), the policy is trained on the cached encodings (`dckp train-policy`, cpu preset: 1000 steps
single-object, 1500 multi-object) and evaluated closed-loop on `--episodes` seeds from 1,000,000 (disjoint from
the demonstrations' seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dckp.cli.main import main as dckp
from dckp.config import atomic_write_bytes, save_json
from dckp.evaluation import evaluate_policy

ENCODERS = ("dckp-3d", "dckp-2d", "gt-kp", "blind")


def write_markdown(results: dict, out: Path) -> None:
    lines = ["# Closed-loop success of keypoint policies", "",
             "cpu presets (DON resnet18 without layer4, D=8, 128 px; 16 keypoints per camera, LSTM 2x128), "
             "evaluated on seeds from 1,000,000. `python benchmarks/policy.py --task TASK ...`. The ms/step columns "
             "come from the evaluation itself and are slowed by whatever else ran then; "
             "benchmarks/keypoint_latency.py measures speed.", "",
             "| task | encoder | DON | success | 95 % Wilson CI | episodes | mean steps | ms/step enc / policy / sim |",
             "|---|---|---|---|---|---|---|---|"]
    for task, per in results["success"].items():
        for name, s in per.items():
            d = results["details"][task][name]
            ms = d["ms_per_step"]
            lines.append(f"| {task} | {name} | {d.get('don') or '-'} | {s['rate']:.2f} | "
                         f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] | {s['episodes']} | {d['mean_steps']:.0f} | "
                         f"{ms['encoder']:.0f} / {ms['policy']:.1f} / {ms['sim']:.0f} |")
    atomic_write_bytes(out / "policy.md", ("\n".join(lines) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--demos", required=True)
    parser.add_argument("--don", required=True, help="the `dckp pretrain` run")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    parser.add_argument("--runs", default="runs/policies")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()

    runs = Path(args.runs) / args.task
    refs = runs / "references.safetensors"
    if not refs.exists():
        assert dckp(["keypoints", "--run", args.don, "--demos", args.demos, "--out", str(refs)]) == 0
    out = Path(args.out)
    path = out / "policy.json"
    results = json.loads(path.read_text()) if path.exists() else {"success": {}, "details": {}}
    for name in args.encoders:
        policy = runs / name
        flags = ["--don", args.don] if name.startswith("dckp") else []
        assert dckp(["train-policy", "--demos", args.demos, "--encoder", name, "--references", str(refs),
                     "--out", str(policy), *flags]) == 0
        r = evaluate_policy(policy, episodes=args.episodes, workers=args.workers, videos=2)
        results["success"].setdefault(args.task, {})[name] = {"rate": r["success_rate"], "ci95": r["ci95"],
                                                              "episodes": r["episodes"]}
        results["details"].setdefault(args.task, {})[name] = {"mean_steps": r["mean_steps"],
                                                              "ms_per_step": r["ms_per_step"],
                                                              "don": args.don if name.startswith("dckp") else None}
        save_json(results, path)
        print(args.task, name, results["success"][args.task][name], flush=True)

    write_markdown(results, out)


if __name__ == "__main__":
    main()
