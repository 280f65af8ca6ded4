"""Which DON recipe and which pretraining views hold best: train variants side by side and evaluate each on
held-out views and, with `--demos`, on the frames of demonstrations, at several step counts. Writes
results/don_sweep.{jsonl,md}.

    python benchmarks/don_sweep.py --views data/stack_views.h5 --heldout data/stack_heldout.h5 \
        --variant base --variant lr1e-3:lr=1e-3 --variant d16:descriptor_dim=16 --stages 1000 3000 --jobs 2

A variant is `name[:field=value,field=value]` over the `--preset` DonConfig (values parsed as JSON, else kept
as text); the pseudo-field `views=a.h5+b.h5` trains it on those fused views files instead of `--views`, and
`don=RUN/don` evaluates the DON that `dckp run` or `dckp table` trained in the run folder RUN (its training
seconds from RUN/stage_seconds.json) at its own step count. Each other variant trains in its own process
(`--threads` torch threads) in `--out`/<name>, resuming from one stage to the next (the lr schedule does not
depend on the step budget, so stage k equals a run of that many steps), and after each stage appends one line to
the JSONL: the variant, its step count, training seconds, the held-out metrics per pair
type (fixed pairs) and, with `--demos`, the keypoint error on the first `--episodes` demonstrations
(`dckp eval-keypoints`' measure, the DON's mode, references chosen by this DON as `dckp run` chooses them), per
camera: median px and symmetry-aware px over all keypoints in the image and over the visible near ones.
`--report-only` rebuilds the markdown table from the JSONL (after a run cut short, say).
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
from dckp.don.checkpoint import load_checkpoint_config
from dckp.don.config import DON_PRESETS
from dckp.don.evaluate import PAIR_TYPES, evaluate_model, sample_eval_pairs
from dckp.don.train import load_don, pretrain


def parse_variant(spec: str) -> tuple[str, dict]:
    """`(name, fields)`; `fields["views"]`, when given, is a list of files."""
    name, _, rest = spec.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    if "views" in fields:
        fields["views"] = str(fields["views"]).split("+")
    return name, fields


def demo_error(don: Path, refs: Path, demos: str, episodes: int) -> dict:
    """Per camera, `{split: {median_px, median_px_sym}}` of the DON in `don` on the first `episodes` of `demos`,
    with references it chooses (written to `refs`)."""
    from dckp.evaluation.keypoint_error import keypoint_error
    from dckp.evaluation.keypoint_error_config import KeypointErrorConfig
    from dckp.keypoints.select import select_references

    refs.parent.mkdir(parents=True, exist_ok=True)
    select_references(load_don(don), demos, refs, seed=0)
    result = keypoint_error(KeypointErrorConfig(don=str(don), references=str(refs), demos=demos, episodes=episodes,
                                                methods=["mode"]))
    return {cam: {split: {k: scores[split][k] for k in ("median_px", "median_px_sym")}
                  for split in ("all", "visible_near")}
            for cam, scores in result["by_method"]["mode"].items()}


def trained(job: dict):
    """`(folder, steps, training seconds)` of each DON the variant scores: a run's DON as it is, or the variant's
    own, trained up to each of its stages in turn."""
    if "don" in job["fields"]:  # trained by a run: evaluated only
        out = Path(job["fields"]["don"])
        yield out, load_checkpoint_config(out / "don.safetensors").steps, json.loads(
            (out.parent / "stage_seconds.json").read_text())["pretrain"]
        return
    fields = {k: v for k, v in job["fields"].items() if k != "views"}
    base = dataclasses.replace(DON_PRESETS[job["preset"]], device=job["device"], **fields)
    out = Path(job["out"]) / job["name"]
    start = time.perf_counter()
    for steps in job["stages"]:
        pretrain(job["fields"].get("views", job["views"]), dataclasses.replace(base, steps=steps), out,
                 checkpoint_every=500, progress=False)
        yield out, steps, time.perf_counter() - start


def run_variant(job: dict) -> None:
    torch.set_num_threads(job["threads"])
    for out, steps, seconds in trained(job):
        model = load_don(out).to(job["device"])
        row = {"variant": job["name"], "fields": job["fields"], "steps": steps, "train_s": round(seconds, 1),
               "device": job["device"], "pairs": job["n_pairs"],
               "eval": {path: evaluate_model(model, path, pairs) for path, pairs in job["pairs"].items()}}
        if job["demos"]:
            row["demos"] = {"file": job["demos"], "episodes": job["episodes"],
                            "error": demo_error(out, Path(job["out"]) / job["name"] / f"references_{steps}.safetensors",
                                                job["demos"], job["episodes"])}
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
    lines += ["", "## On the frames of demonstrations", "",
              "The DON's mode against ground-truth keypoints (`dckp eval-keypoints`' measure) on the first "
              "demonstrations of `demos`, references chosen by each DON: median px, raw / symmetry-aware, over the "
              "keypoints inside the image and over the visible ones nearer the camera than 0.2 m.", "",
              "| variant | fields | steps | train s | demos | camera | all px | visible near px |",
              "|---|---|---|---|---|---|---|---|"]
    for row in sorted((r for r in rows if "demos" in r), key=lambda r: (r["variant"], r["steps"])):
        fields = ", ".join(f"{k}={v}" for k, v in row["fields"].items()) or "(the preset)"
        for cam, err in row["demos"]["error"].items():
            cells = [f"{e['median_px']:.1f} / {e['median_px_sym']:.1f}" if e["median_px"] is not None else "-"
                     for e in (err["all"], err["visible_near"])]
            lines.append(f"| {row['variant']} | {fields} | {row['steps']} | {row['train_s']:.0f} | "
                         f"{Path(row['demos']['file']).parent.name} ({row['demos']['episodes']}) | {cam} | "
                         + " | ".join(cells) + " |")
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
    parser.add_argument("--demos", default="", help="demonstrations (simulator) to measure the keypoint error on")
    parser.add_argument("--episodes", type=int, default=10, help="the first N of --demos")
    parser.add_argument("--out", default="runs/don_sweep")
    parser.add_argument("--results", default="results")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    jsonl, md = Path(args.results) / "don_sweep.jsonl", Path(args.results) / "don_sweep.md"
    if not args.report_only:
        pairs = {path: sample_eval_pairs(path, per_type=args.pairs, seed=0) for path in args.heldout}
        jobs = [{"name": name, "fields": fields, "preset": args.preset, "stages": sorted(args.stages),
                 "device": args.device, "threads": args.threads, "views": args.views, "out": args.out,
                 "pairs": pairs, "n_pairs": args.pairs, "jsonl": str(jsonl), "demos": args.demos,
                 "episodes": args.episodes}
                for name, fields in map(parse_variant, args.variant or ["base"])]
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            pool.map(run_variant, jobs, chunksize=1)
    report(jsonl, md)
    print(md.read_text())


if __name__ == "__main__":
    main()
