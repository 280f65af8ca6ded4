"""Training steps/s and control-step cost of each policy head on frozen features, on the CPU and (when there is
one) a GPU: the cost side of the learner's recipe. Features are random (the values do not change the cost) with
nut_assembly's gt-kp width (2 cameras x 16 keypoints x 3 + 9 proprioception = 105); each head is trained with its
preset's batch (`lstm`: the `cpu` preset's, the others `converged`'s) on windows its own length.

    python benchmarks/heads_speed.py --threads 2                 # results/heads_speed.{json,md}
    python benchmarks/heads_speed.py --device cuda --out $OUT     # on a lent GPU: one prepared run, about a minute

Writes `heads_speed.json`: `<device>.<head>` = `{train_steps_per_s, act_ms_median, act_ms_max, batch, window}`;
with `--sample-steps K ...` also `<device>.diffusion-ddim<K>`, the diffusion head planning in K DDIM steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.policy.config import POLICY_PRESETS
from dckp.policy.heads.base import head_class
from dckp.policy.model import Policy

FEATURES = 105


def config(head: str):
    for name in ("cpu", "converged"):
        if POLICY_PRESETS[name].head == head:
            return POLICY_PRESETS[name]
    return dataclasses.replace(POLICY_PRESETS["converged"], head=head, head_options={})


def measure(head: str, device: str, steps: int, acts: int, options: dict | None = None) -> dict:
    cfg = config(head)
    if options:
        cfg = dataclasses.replace(cfg, head_options={**cfg.head_options, **options})
    length, before, after = head_class(head).window(cfg.options())
    window = length or 180  # lstm's whole demonstrations: nut_assembly's expert takes about 180 steps
    torch.manual_seed(0)
    policy = Policy(FEATURES, 7, cfg).to(device)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    batch = {"obs": torch.randn(cfg.batch_size, window, FEATURES, device=device),
             "action": torch.rand(cfg.batch_size, window, 7, device=device) * 2 - 1,
             "mask": torch.ones(cfg.batch_size, window, dtype=torch.bool, device=device)}

    def step():
        loss = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        policy.head.after_step()

    for _ in range(3):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device != "cpu":
        torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - start)
    policy.eval()
    policy.reset()
    obs, ms = torch.randn(1, FEATURES, device=device), []
    for _ in range(acts):
        t = time.perf_counter()
        policy.act(obs).cpu()
        ms.append(1000 * (time.perf_counter() - t))
    return {"train_steps_per_s": round(rate, 2), "act_ms_median": round(float(np.median(ms)), 2),
            "act_ms_max": round(float(np.max(ms)), 1), "batch": cfg.batch_size, "window": window}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per head")
    p.add_argument("--acts", type=int, default=32, help="timed control steps per head (4 diffusion plans)")
    p.add_argument("--heads", nargs="+", default=["lstm", "rnn-gmm", "diffusion"])
    p.add_argument("--sample-steps", type=int, nargs="*", default=[], help="also the diffusion head with these "
                   "DDIM steps per plan (rows `diffusion-ddim<K>`)")
    p.add_argument("--out", default="results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / "heads_speed.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    name = torch.cuda.get_device_name() if args.device != "cpu" else f"{platform.machine()} CPU, {args.threads} threads"
    rows = {h: measure(h, args.device, args.steps, args.acts) for h in args.heads}
    rows.update({f"diffusion-ddim{k}": measure("diffusion", args.device, args.steps, args.acts, {"sample_steps": k})
                 for k in args.sample_steps})
    results[args.device] = {"machine": name, **rows}
    save_json(results, path)
    lines = ["# Policy heads: training and control cost", "",
             f"Frozen features of width {FEATURES} (nut_assembly's gt-kp), each head at its preset's batch and window. "
             "`python benchmarks/heads_speed.py` (and `--device cuda` on a GPU).", "",
             "| device | head | batch x window | training steps/s | act median ms | act max ms |",
             "|---|---|---|---|---|---|"]
    for rows in results.values():
        for head, r in rows.items():
            if head != "machine":
                lines.append(f"| {rows['machine']} | {head} | {r['batch']} x {r['window']} | "
                             f"{r['train_steps_per_s']} | {r['act_ms_median']} | {r['act_ms_max']} |")
    atomic_write_bytes(out / "heads_speed.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
