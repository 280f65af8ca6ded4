"""Which DON training recipe learns most per step: train config variants side by side and evaluate each on
held-out views at several step counts. Writes results/don_sweep.{jsonl,md}.

    python benchmarks/don_sweep.py --views data/stack_views.h5 --heldout data/stack_heldout.h5 \
        --variant base --variant lr1e-3:lr=1e-3 --variant d16:descriptor_dim=16 --stages 1000 3000 --jobs 2

A variant is `name[:field=value,field=value]` over the `--preset` DonConfig (values parsed as JSON, else kept
as text). Each variant trains in its own process (`--threads` torch threads) in `--out`/<name>, resuming from
one stage to the next (the lr schedule does not depend on the step budget, so stage k equals a run of that
many steps), and after each stage appends one line to the JSONL: the variant, its step count, training
seconds and the held-out metrics per pair type (dckp.don.evaluate, fixed pairs). `--report-only` rebuilds the
markdown table from the JSONL (after a run cut short, say).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from dckp.config import atomic_write_bytes
from dckp.don.config import DON_PRESETS
from dckp.don.evaluate import PAIR_TYPES, evaluate_model, sample_eval_pairs
from dckp.don.train import load_don, pretrain


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return name, fields


def run_variant(job: dict) -> None:
    torch.set_num_threads(job["threads"])
    base = dataclasses.replace(DON_PRESETS[job["preset"]], device=job["device"], **job["fields"])
    out = Path(job["out"]) / job["name"]
    start = time.perf_counter()
    for steps in job["stages"]:
        pretrain(job["views"], dataclasses.replace(base, steps=steps), out, checkpoint_every=500, progress=False)
        seconds = time.perf_counter() - start
        model = load_don(out).to(job["device"])
        row = {"variant": job["name"], "fields": job["fields"], "steps": steps, "train_s": round(seconds, 1),
               "device": job["device"], "pairs": job["n_pairs"],
               "eval": {path: evaluate_model(model, path, pairs) for path, pairs in job["pairs"].items()}}
        with open(job["jsonl"], "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{job['name']} @ {steps}: {json.dumps(summary(row))}", flush=True)


def summary(row: dict) -> dict:
    return {Path(path).stem: {kind: round(m["pck@5%"], 3) for kind, m in res.items()}
            for path, res in row["eval"].items()}


def report(jsonl: Path, md: Path) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    lines = ["# DON recipe sweep", "", "`python benchmarks/don_sweep.py` (see its docstring). PCK@5 % / wrong-object "
             "rate on held-out views, per pair type (`pairs` held-out pairs per type, 100 points each). Fields: the "
             "differences from the `cpu` preset. Training seconds are wall time with the other variants sharing the "
             "machine.", "",
             "| variant | fields | steps | device | train s | held-out | pairs | " + " | ".join(PAIR_TYPES) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(PAIR_TYPES)]
    for row in sorted(rows, key=lambda r: (r["variant"], r["steps"])):
        for path, res in row["eval"].items():
            cells = [f"{res[k]['pck@5%']:.3f} / {res[k]['wrong_object_rate']:.2f}" if k in res else "-"
                     for k in PAIR_TYPES]
            fields = ", ".join(f"{k}={v}" for k, v in row["fields"].items()) or "(the preset)"
            lines.append(f"| {row['variant']} | {fields} | {row['steps']} | {row['device']} | {row['train_s']:.0f} | "
                         f"{Path(path).stem} | {row['pairs']} | " + " | ".join(cells) + " |")
    atomic_write_bytes(md, ("\n".join(lines) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", nargs="+", default=["data/stack_views.h5"])
    parser.add_argument("--heldout", nargs="+", default=["data/stack_heldout.h5"])
    parser.add_argument("--variant", action="append", default=[], help="name[:field=value,...] (repeatable)")
    parser.add_argument("--preset", default="cpu", choices=sorted(DON_PRESETS))
    parser.add_argument("--stages", nargs="+", type=int, default=[1000, 3000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--pairs", type=int, default=20, help="held-out pairs per pair type")
    parser.add_argument("--out", default="runs/don_sweep")
    parser.add_argument("--results", default="results")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    jsonl, md = Path(args.results) / "don_sweep.jsonl", Path(args.results) / "don_sweep.md"
    if not args.report_only:
        pairs = {path: sample_eval_pairs(path, per_type=args.pairs, seed=0) for path in args.heldout}
        jobs = [{"name": name, "fields": fields, "preset": args.preset, "stages": sorted(args.stages),
                 "device": args.device, "threads": args.threads, "views": args.views, "out": args.out,
                 "pairs": pairs, "n_pairs": args.pairs, "jsonl": str(jsonl)}
                for name, fields in map(parse_variant, args.variant or ["base"])]
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            pool.map(run_variant, jobs, chunksize=1)
    report(jsonl, md)
    print(md.read_text())


if __name__ == "__main__":
    main()
