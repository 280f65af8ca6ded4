"""The hand-measured policy cells adopted into `dckp table`'s run folder, then the table made by its runner.

results/policy.json (lift: blind, dckp-2d, dckp-3d, gt-kp, cnn, cnnd, resnet-ssm; stack: blind, dckp-3d, gt-kp,
cnn, cnnd, resnet-ssm; 50 episodes each on seeds from 1,000,000) and the blind rows of results/tasks.json were
measured by hand, from artefacts under `runs/` that took hours to make. This one-off import copies them into the
table's task folders (`dckp.table.adopt`; the originals are only read) wherever their stage's own check accepts
them, i.e. they were made with the settings the table asks for now, and then runs `dckp table` for the given tasks
and methods, which skips what was adopted and makes the rest:

    python benchmarks/policy.py --verify 2                    # adopt, re-run 2 seeds of each adopted cell, table
    python benchmarks/policy.py --adopt-only                  # adopt and say what the table would still run
    dckp table --tasks lift stack --out runs/table            # later runs: the adopted stages are skipped

Sources per task: demonstrations `runs/tasks/<task>/demos.h5` (what every measured policy was trained on), views
`data/<task>_views.h5` (with their config, fuse config and mask picture beside), the DON `runs/don_<task>`,
references `runs/policies/<task>/references.safetensors` (chosen with that DON, as `dckp table` chooses them), the
pretrained representations `runs/representations/<task>/<method>` (benchmarks/representations.py), the policies
`runs/policies/<task>/<method>` of results/policy.json and `runs/tasks/<task>/blind` of results/tasks.json (trained
on the same demonstrations; their gt-kp policies are not taken: their references were chosen without a DON, unlike
the table's).

Then every cell of the table's run folder for the given tasks and methods (those with an eval.json) becomes a row of
results/policy.{json,md} too, in its old keys (`success.<task>.<encoder>` = `{rate, ci95, episodes}`,
`details.<task>.<encoder>` = `{don, mean_steps, ms_per_step, train_s, ...}`), merged with the rows there (a row's
other details, e.g. `train_threads`, are kept). results/table1.json holds the same cells with the paper's numbers
beside them; policy.json also keeps the hand-measured rows the table has not made.

    python benchmarks/policy.py --rows-only --tasks lift stack   # only the rows, from runs/table as it is
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dckp.cli.main import main as dckp
from dckp.config import atomic_write_bytes, save_json
from dckp.pipeline import RUN_PRESETS
from dckp.table import task_config
from dckp.table.adopt import adopt
from dckp.table.config import METHODS, TableConfig


def sources(task: str, methods: list[str], runs: Path, data: Path, measured: dict, tasks: dict) -> dict:
    """What `adopt` gets for one task: the paths that exist, and the measured cells' policies and training times."""
    policies = {m: runs / "policies" / task / m for m in measured.get("success", {}).get(task, {}) if m in methods}
    if "blind" in methods and "blind" not in policies and "blind" in tasks.get(task, {}):
        policies["blind"] = runs / "tasks" / task / "blind"
    found = {"demos": runs / "tasks" / task / "demos.h5", "views": data / f"{task}_views.h5",
             "don": runs / f"don_{task}", "references": runs / "policies" / task / "references.safetensors"}
    details = measured.get("details", {}).get(task, {})
    representations = {m: runs / "representations" / task / m for m in methods}
    return {**{k: str(v) for k, v in found.items() if v.exists()},
            "representations": {m: str(p) for m, p in representations.items() if p.exists()},
            "policies": {m: str(p) for m, p in policies.items() if p.exists()},
            "train_s": {m: d["train_s"] for m, d in details.items()  # a resumed training's time is partial: left out
                        if "train_s" in d and not d.get("train_resumed_from")}}


def table_rows(out: Path, tasks: list[str], methods: list[str], results: Path) -> dict:
    """results/policy.{json,md} with a row for each cell of the table folder `out` that has an eval.json, merged
    with the rows there; returns policy.json's contents."""
    path = results / "policy.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows.setdefault("success", {}), rows.setdefault("details", {})
    for task in tasks:
        timings_path = out / task / "stage_seconds.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        for method in methods:
            policy = out / task / f"policy_{method}"
            if not (policy / "eval" / "eval.json").exists():
                continue
            ev = json.loads((policy / "eval" / "eval.json").read_text())
            don = json.loads((policy / "run.json").read_text())["encoder"].get("artefacts", {}).get("don")
            rows["success"].setdefault(task, {})[method] = {"rate": ev["success_rate"], "ci95": ev["ci95"],
                                                            "episodes": ev["episodes"]}
            details = rows["details"].setdefault(task, {})
            details[method] = {**details.get(method, {}), "mean_steps": ev["mean_steps"],
                               "ms_per_step": ev["ms_per_step"],
                               "don": os.path.relpath((policy / don).resolve()) if don else None,
                               **({"train_s": timings[f"policy {method}"]} if f"policy {method}" in timings else {})}
    results.mkdir(parents=True, exist_ok=True)
    save_json(rows, path)
    write_markdown(rows, results)
    return rows


def write_markdown(rows: dict, results: Path) -> None:
    lines = ["# Closed-loop success of policies by encoder", "",
             "cpu presets (DON resnet18 without layer4, D=8, 128 px; 16 keypoints per camera, LSTM 2x128; training "
             "min: wall time of the policy's training; \"from step N\": resumed there, the rest only), "
             "evaluated on seeds from 1,000,000. Rows from `dckp table` "
             "(`python benchmarks/policy.py`), the earlier ones measured by hand; results/table1.md has the same "
             "cells beside the paper's. The ms/step columns come from the evaluation itself and are slowed by "
             "whatever else ran then; benchmarks/keypoint_latency.py measures speed.", "",
             "| task | encoder | DON | success | 95 % Wilson CI | episodes | mean steps | ms/step enc / policy / sim | "
             "training min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, per in rows["success"].items():
        for name, s in per.items():
            d = rows["details"][task][name]
            ms = d["ms_per_step"]
            train = f"{d['train_s'] / 60:.1f}" if d.get("train_s") is not None else "-"
            if d.get("train_resumed_from"):  # an interrupted training: train_s timed only the steps after the resume
                train += f" (from step {d['train_resumed_from']})"
            lines.append(f"| {task} | {name} | {d.get('don') or '-'} | {s['rate']:.2f} | "
                         f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] | {s['episodes']} | {d['mean_steps']:.0f} | "
                         f"{ms['encoder']:.0f} / {ms['policy']:.1f} / {ms['sim']:.0f} | {train} |")
    atomic_write_bytes(results / "policy.md", ("\n".join(lines) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TableConfig().tasks), help="tasks (default: all)")
    parser.add_argument("--methods", nargs="+", default=METHODS, help=f"methods (default: {' '.join(METHODS)})")
    parser.add_argument("--runs", default="runs", help="where the measured artefacts are (default: runs)")
    parser.add_argument("--data", default="data", help="where the measured views files are (default: data)")
    parser.add_argument("--measured", default="results", help="folder of policy.json and tasks.json (default: "
                        "results)")
    parser.add_argument("--out", default="runs/table", help="the table's run folder (default: runs/table)")
    parser.add_argument("--results", default="results", help="where the table writes table1.* (default: results)")
    parser.add_argument("--verify", type=int, default=0,
                        help="re-run this many seeds of each adopted evaluation and compare (default: 0)")
    parser.add_argument("--adopt-only", action="store_true", help="adopt, then stop before running the table")
    parser.add_argument("--rows-only", action="store_true", help="only write results/policy.{json,md} rows from the "
                        "table's run folder (default: adopt, run the table, then the rows)")
    args = parser.parse_args()
    if args.rows_only:
        table_rows(Path(args.out), args.tasks, args.methods, Path(args.results))
        return

    def read(name: str) -> dict:
        path = Path(args.measured, name)
        return json.loads(path.read_text()) if path.exists() else {}

    measured, tasks = read("policy.json"), read("tasks.json")
    run = RUN_PRESETS["cpu"]
    for task in args.tasks:
        src = sources(task, args.methods, Path(args.runs), Path(args.data), measured, tasks)
        result = adopt(Path(args.out) / task, task_config(run, task, args.methods), "cpu", verify=args.verify, **src)
        for stage, what in result.items():
            print(f"{task:20} {stage:28} {what}", flush=True)
    if not args.adopt_only:
        status = dckp(["table", "--preset", "cpu", "--tasks", *args.tasks, "--methods", *args.methods,
                       "--out", args.out, "--results", args.results])
        table_rows(Path(args.out), args.tasks, args.methods, Path(args.results))  # also when some cells failed
        raise SystemExit(status)


if __name__ == "__main__":
    main()
