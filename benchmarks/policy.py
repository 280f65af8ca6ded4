"""Closed-loop success of policies with every encoder. Writes results/policy.{json,md} (merging with what is there).

    dckp pretrain --views data/stack_views.h5 --out runs/don_stack     # the task's own DON, as `dckp run` trains
    python benchmarks/policy.py --task stack --don runs/don_stack --demos data/stack.h5 --episodes 50
    python benchmarks/policy.py --task stack --don runs/don_stack --demos data/stack.h5 --encoders cnn cnnd

For each encoder (default: every registered one): the references are chosen once from the demonstrations
(`dckp keypoints`, shared by all keypoint encoders, so gt-kp moves the very same pixels), the policy is trained
(cpu preset: 1000 steps single-object, 1500 multi-object; `resnet-ssm` on windows of 10 steps, as robomimic's
BC-RNN, with the steps in `OVERRIDES`) and evaluated closed-loop on `--episodes` seeds from 1,000,000 (disjoint
from the demonstrations' seeds). A trained policy and a finished evaluation are reused, so an interrupted run
continues; `details.<task>.<encoder>.train_s` is the wall time of the policy's training with `train_threads` torch
threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.data import Dataset
from dckp.don.train import load_don
from dckp.encoders import encoder_class, registry
from dckp.encoders.config import EncoderConfig
from dckp.evaluation import evaluate_policy
from dckp.keypoints.select import select_references
from dckp.policy.config import POLICY_PRESETS, default_steps
from dckp.policy.demos import train_on_demos

# robomimic trains its ResNet visual core on windows of 10 steps; the steps keep one run on 2 CPU cores within an hour
OVERRIDES = {"resnet-ssm": {"seq_len": 10}}



def write_markdown(results: dict, out: Path) -> None:
    lines = ["# Closed-loop success of policies by encoder", "",
             "cpu presets (DON resnet18 without layer4, D=8, 128 px; 16 keypoints per camera, LSTM 2x128; training "
             "min: wall time of the policy's training), "
             "evaluated on seeds from 1,000,000. `python benchmarks/policy.py --task TASK ...`. The ms/step columns "
             "come from the evaluation itself and are slowed by whatever else ran then; "
             "benchmarks/keypoint_latency.py measures speed.", "",
             "| task | encoder | DON | success | 95 % Wilson CI | episodes | mean steps | ms/step enc / policy / sim | "
             "training min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, per in results["success"].items():
        for name, s in per.items():
            d = results["details"][task][name]
            ms = d["ms_per_step"]
            train = f"{d['train_s'] / 60:.1f}" if "train_s" in d else "-"
            lines.append(f"| {task} | {name} | {d.get('don') or '-'} | {s['rate']:.2f} | "
                         f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] | {s['episodes']} | {d['mean_steps']:.0f} | "
                         f"{ms['encoder']:.0f} / {ms['policy']:.1f} / {ms['sim']:.0f} | {train} |")
    atomic_write_bytes(out / "policy.md", ("\n".join(lines) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--demos", required=True)
    parser.add_argument("--don", required=True, help="the `dckp pretrain` run")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encoders", nargs="+", default=None,
                        help="default: every registered encoder whose artefacts are given")
    parser.add_argument("--representations", default="",
                        help="folder of `dckp pretrain-representation` runs named after their method (bvae/, ...)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of policy training (default: 2)")
    parser.add_argument("--runs", default="runs/policies")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = Path(args.runs) / args.task
    refs = runs / "references.safetensors"
    if not refs.exists():
        select_references(load_don(args.don), args.demos, refs)
    with Dataset(args.demos) as ds:
        cameras, task = len(ds.streams(ds.episodes[0])), ds.task
    out = Path(args.out)
    path = out / "policy.json"
    results = json.loads(path.read_text()) if path.exists() else {"success": {}, "details": {}}
    names = args.encoders or [n for n, c in sorted(registry().items())
                              if args.representations or "representation" not in c.artefacts]
    for name in names:
        artefacts = encoder_class(name).artefacts
        enc = EncoderConfig(encoder=name, don=args.don if "don" in artefacts else "",
                            references=str(refs) if "references" in artefacts else "",
                            representation=str(Path(args.representations, name)) if "representation" in artefacts
                            else "")
        cfg = dataclasses.replace(POLICY_PRESETS["cpu"], steps=default_steps(cameras, task), **OVERRIDES.get(name, {}))
        policy = runs / name
        details = results["details"].setdefault(args.task, {})
        if not (policy / "policy.safetensors").exists() or "train_s" not in details.get(name, {}):
            start = time.time()
            summary = train_on_demos(args.demos, enc.spec(), cfg, policy)
            details[name] = {"train_s": round(time.time() - start, 1), "train_threads": args.threads,
                             "train_resumed_from": summary["resumed_from"]}  # > 0: train_s is the rest only
            save_json(results, path)
        ev = policy / "eval" / "eval.json"
        r = json.loads(ev.read_text()) if ev.exists() else {}
        if r.get("episodes") != args.episodes:
            r = evaluate_policy(policy, episodes=args.episodes, workers=args.workers, videos=2)
        results["success"].setdefault(args.task, {})[name] = {"rate": r["success_rate"], "ci95": r["ci95"],
                                                              "episodes": r["episodes"]}
        details[name] = {**details[name], "mean_steps": r["mean_steps"], "ms_per_step": r["ms_per_step"],
                         "don": args.don if "don" in artefacts else None}
        save_json(results, path)
        print(args.task, name, results["success"][args.task][name], flush=True)

    write_markdown(results, out)


if __name__ == "__main__":
    main()
