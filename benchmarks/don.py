"""Dense Object Net: training speed, forward latency and correspondence accuracy. Writes results/don.{json,md}.

    python benchmarks/don.py --dckp runs/don_cpu --prior-work runs/don_prior

Speed: training pairs/s (steps of the `cpu` preset's pairs per step on random data: forward of both images,
loss, backward, Adam) and forward latency (batch 1, median of 10) per backbone, with and without layer4
(`-l3`), at 128 and 256 px, on this CPU with `--threads` torch threads.
Accuracy (dckp.don.evaluate): each model on the same fixed held-out pairs of every task's held-out file:
`dckp` (the full method), `random_init` (the same network untrained) and `prior_work` (trained with
`--prior-work true`: fixed-distance free cameras, one foreground mask, no arm-only data).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.don.checkpoint import load_checkpoint_config
from dckp.don.config import DON_PRESETS
from dckp.don.evaluate import PAIR_TYPES, evaluate_model, sample_eval_pairs
from dckp.don.loss import make_optimizer, train_step
from dckp.don.model import DenseObjectNet
from dckp.don.train import load_don

KEYS = ("pck@5%", "median_px", "wrong_object_rate")


def speed(backbone: str, layers: int, size: int, steps: int = 5) -> tuple[float, float]:
    cfg = dataclasses.replace(DON_PRESETS["cpu"], backbone=backbone, layers=layers, image_size=size)
    torch.manual_seed(0)
    model = DenseObjectNet(cfg)
    optimizer, _ = make_optimizer(model, cfg)
    B, m, n = cfg.batch_pairs, cfg.n_matches, cfg.n_non_matches
    g = torch.Generator().manual_seed(0)
    uv = lambda *shape: torch.rand(*shape, 2, generator=g) * (size - 1)  # noqa: E731
    batch = {"image_a": torch.rand(B, 3, size, size, generator=g), "image_b": torch.rand(B, 3, size, size, generator=g),
             "uv_a": uv(B, m), "uv_b": uv(B, m), "match_valid": torch.ones(B, m, dtype=torch.bool),
             "nm_object": uv(B, m, n), "nm_object_valid": torch.ones(B, m, n, dtype=torch.bool),
             "nm_background": uv(B, m, n), "nm_background_valid": torch.ones(B, m, n, dtype=torch.bool)}
    model.train()
    train_step(model, optimizer, batch, cfg)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, batch, cfg)
    pairs_per_s = B * steps / (time.perf_counter() - start)
    model.eval()
    times = []
    with torch.no_grad():
        model(batch["image_a"][:1])
        for _ in range(10):
            t = time.perf_counter()
            model(batch["image_a"][:1])
            times.append(time.perf_counter() - t)
    return pairs_per_s, 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dckp", default="runs/don_cpu")
    parser.add_argument("--prior-work", default="runs/don_prior")
    parser.add_argument("--heldout", nargs="+", default=["data/stack_heldout.h5", "data/pick_place_clutter_heldout.h5"])
    parser.add_argument("--pairs", type=int, default=40, help="pairs per pair type")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {"threads": args.threads, "train_pairs_per_s": {}, "forward_ms": {}, "eval": {}, "eval_full": {}}
    for backbone in args.backbones:
        for layers in (4, 3):
            for size in (128, 256):
                pps, ms = speed(backbone, layers, size)
                key = f"{backbone}{'' if layers == 4 else '-l3'}@{size}"
                results["train_pairs_per_s"][key] = pps
                results["forward_ms"][key] = ms
                print(f"{key}: {pps:.2f} pairs/s, forward {ms:.0f} ms", flush=True)

    dckp = load_don(args.dckp)
    torch.manual_seed(0)
    random_init = DenseObjectNet(load_checkpoint_config(Path(args.dckp) / "don.safetensors"))
    models = {"dckp": dckp, "random_init": random_init, "prior_work": load_don(args.prior_work)}
    for path in args.heldout:
        from dckp.data import Dataset

        with Dataset(path) as ds:
            task = ds.task
        pairs = sample_eval_pairs(path, per_type=args.pairs)
        results["eval_full"][task] = {name: evaluate_model(m, path, pairs) for name, m in models.items()}
        results["eval"][task] = {name: {t: {k: r[t][k] for k in KEYS} for t in PAIR_TYPES if t in r}
                                 for name, r in results["eval_full"][task].items()}
        print(task, results["eval"][task], flush=True)

    out = Path(args.out)
    save_json(results, out / "don.json")
    lines = ["# Dense Object Net", "", f"`python benchmarks/don.py` on this CPU, {args.threads} torch thread(s). "
             "Training: steps of the `cpu` preset's pairs per step, on random data. `-l3`: without layer4 "
             "(`layers` 3, the `cpu` preset's).", "",
             "| backbone@px | training pairs/s | forward ms (batch 1) |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {results['forward_ms'][k]:.0f} |" for k, v in results["train_pairs_per_s"].items()]
    lines += ["", f"Correspondence on held-out scenes ({args.pairs} pairs per type, up to 100 points each; "
              "image 128 px, so 5 % = 6.4 px). wrong obj = best match on another object, the arm or the "
              "background; arm = on the arm (docs/metrics.md).",
              "",
              "| task | model | pair type | PCK@1% | PCK@5% | PCK@10% | median px | closer frac | wrong obj | arm |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for task, per_model in results["eval_full"].items():
        for name, per_type in per_model.items():
            for t, r in per_type.items():
                lines.append(f"| {task} | {name} | {t} | {r['pck@1%']:.3f} | {r['pck@5%']:.3f} | {r['pck@10%']:.3f} | "
                             f"{r['median_px']:.1f} | {r['fraction_closer']:.3f} | {r['wrong_object_rate']:.3f} | "
                             f"{r['arm_rate']:.3f} |")
    atomic_write_bytes(out / "don.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
