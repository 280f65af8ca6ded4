"""Demonstrations per hour in 1 and 2 worker processes (`dckp collect --workers`), and whether both write the same
file. Writes results/demos.{json,md}.

    python benchmarks/demos.py                           # pick_place_clutter, 6 demonstrations (about 4 minutes)
    python benchmarks/demos.py --task lift --demos 10

- `seconds`: wall time of `collect_demos` at 128 px (the `cpu` preset), worker start-up included; `demos_per_hour`
  follows from it. Take it on a quiet machine: a second heavy job on the 2 cores slows both several times.
- `seeds_tried`: the seeds up to the last success kept (failures included); with N workers up to 2 N more
  episodes have started when the last success arrives, and are stopped.
- `same_file`: the SHA-256 of every file agrees (an episode depends on its seed alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import platform
import tempfile
import time
from pathlib import Path

from dckp.config import atomic_write_bytes, save_json
from dckp.sim.collect import collect_demos
from dckp.sim.config import COLLECT_PRESETS
from dckp.sim.tasks import TASKS


def collect(task: str, demos: int, workers: int, folder: Path) -> dict:
    cfg = dataclasses.replace(COLLECT_PRESETS["cpu"], task=task, demos=demos, workers=workers)
    path = folder / f"demos_{workers}.h5"
    start = time.perf_counter()
    summary = collect_demos(cfg, str(path), progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "demos_per_hour": round(demos * 3600 / seconds, 1),
            "seeds_tried": summary["seeds_tried"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pick_place_clutter", choices=sorted(TASKS),
                        help="task (default: %(default)s)")
    parser.add_argument("--demos", type=int, default=6, help="demonstrations per run (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare (default: 1 2)")
    parser.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = {str(w): collect(args.task, args.demos, w, Path(tmp)) for w in args.workers}
    results = {"machine": f"{platform.processor() or platform.machine()}, CPU only, MUJOCO_GL=egl (Mesa)",
               "task": args.task, "demos": args.demos, "image_size": COLLECT_PRESETS["cpu"].image_size,
               "workers": runs, "same_file": len({r["sha256"] for r in runs.values()}) == 1}
    lines = ["# Demonstrations in worker processes", "",
             f"{results['machine']}. `python benchmarks/demos.py --task {args.task} --demos {args.demos}`: "
             f"{args.demos} {args.task} demonstrations at {results['image_size']} px.", "",
             "| workers | seconds | demonstrations/h | seeds tried |", "|---|---|---|---|"]
    lines += [f"| {w} | {r['seconds']:.1f} | {r['demos_per_hour']:.0f} | {r['seeds_tried']} |" for w, r in runs.items()]
    lines += ["", f"Every worker count wrote the same file (SHA-256): {'yes' if results['same_file'] else 'NO'}."]
    out = Path(args.out)
    save_json(results, out / "demos.json")
    atomic_write_bytes(out / "demos.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
