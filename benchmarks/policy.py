"""The hand-measured policy cells adopted into `dckp table`'s run folder, then the table made by its runner.

results/policy.json (lift: blind, dckp-2d, dckp-3d, gt-kp, cnn, cnnd, resnet-ssm; stack: blind, dckp-3d, gt-kp,
cnn; 50 episodes each on seeds from 1,000,000) and the blind rows of results/tasks.json were measured by hand, from
artefacts under `runs/` that took hours to make. This one-off import copies them into the table's task folders
(`dckp.table.adopt`; the originals are only read) wherever their stage's own check accepts them, i.e. they were
made with the settings the table asks for now, and then runs `dckp table` for the given tasks and methods, which
skips what was adopted and makes the rest:

    python benchmarks/policy.py --verify 2                    # adopt, re-run 2 seeds of each adopted cell, table
    python benchmarks/policy.py --adopt-only                  # adopt and say what the table would still run
    dckp table --tasks lift stack --out runs/table            # later runs: the adopted stages are skipped

Sources per task: demonstrations `runs/tasks/<task>/demos.h5` (what every measured policy was trained on), views
`data/<task>_views.h5` (with their config, fuse config and mask picture beside), the DON `runs/don_<task>`,
references `runs/policies/<task>/references.safetensors` (chosen with that DON, as `dckp table` chooses them), the
pretrained representations `runs/representations/<task>/<method>` (benchmarks/representations.py), the policies
`runs/policies/<task>/<method>` of results/policy.json and `runs/tasks/<task>/blind` of results/tasks.json (trained
on the same demonstrations; their gt-kp policies are not taken: their references were chosen without a DON, unlike
the table's). results/policy.json itself is left as it is; results/table1.json supersedes it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dckp.cli.main import main as dckp
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
            "train_s": {m: d["train_s"] for m, d in details.items() if "train_s" in d}}


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
    args = parser.parse_args()

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
        raise SystemExit(dckp(["table", "--preset", "cpu", "--tasks", *args.tasks, "--methods", *args.methods,
                               "--out", args.out, "--results", args.results]))


if __name__ == "__main__":
    main()
