"""Self-supervised geometry: fusion time, mask quality against ground truth, correspondence throughput.

    python benchmarks/geometry.py                 # every task, 4 scenes each, 128 px (about 10 minutes)

Writes results/geometry.{json,md}. Masks come from `fuse_file` (TSDF fusion of the free-camera frames, table
removal, DBSCAN); the simulator's segmentation is used here only to score them. IoU is per ground-truth
object after Hungarian matching in each frame, averaged over the frames where the object is visible.
`objects_missed` counts ground-truth objects that no fused object matches (IoU >= 0.5) in any frame of their
scene; `frame_misses` counts (frame, visible object) pairs without a match, and `spurious` fused objects that
match nothing in a frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.data import Dataset
from dckp.geometry.correspondence import find_matches
from dckp.geometry.fuse import fuse_file
from dckp.geometry.masks import MASK_PRESETS, mask_iou_matched
from dckp.sim.collect import collect_views
from dckp.sim.config import ViewsConfig
from dckp.sim.tasks import TASKS


def score(path: Path) -> dict:
    per_camera, missed, frame_misses, spurious = {}, 0, 0, 0
    with Dataset(path) as ds:
        for ep in ds.episodes:
            if ep.startswith("arm_"):
                continue
            matched_somewhere, seen = set(), set()
            for s in ds.streams(ep):
                for t in range(ds.num_frames(ep, s)):
                    r = mask_iou_matched(ds.f[f"data/{ep}/obs/{s}_mask"][t], ds.frame(ep, s, t)["seg"])
                    per_camera.setdefault(s, []).extend(r["iou"].values())
                    seen |= set(r["iou"])
                    matched_somewhere |= {k for k, v in r["iou"].items() if v > 0}
                    frame_misses += r["missed"]
                    spurious += r["spurious"]
            missed += len(seen - matched_somewhere)
    return {"per_camera": {k: float(np.mean(v)) for k, v in per_camera.items()},
            "mean": float(np.mean(sum(per_camera.values(), []))), "missed": missed,
            "frame_misses": frame_misses, "spurious": spurious}


def matches_per_s(path: Path, pairs: int = 50) -> float:
    with Dataset(path) as ds:
        ep = ds.episodes[0]
        frames = [ds.frame(ep, "free", t) for t in range(ds.num_frames(ep, "free"))]
    rng = np.random.default_rng(0)
    total, start = 0, time.perf_counter()
    for _ in range(pairs):
        a, b = (frames[i] for i in rng.choice(len(frames), 2, replace=False))
        uv_a, _ = find_matches(*(torch.from_numpy(a[k]).double() for k in ("depth", "K", "pose")),
                               *(torch.from_numpy(b[k]).double() for k in ("depth", "K", "pose")))
        total += len(uv_a)
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="results")
    args = parser.parse_args()

    results = {"scenes_per_task": args.scenes, "image_size": args.image_size, "mask_iou": {},
               "mask_iou_per_camera": {}, "objects_missed": {}, "frame_misses": {}, "spurious": {},
               "fusion_s_per_scene": {}, "fusion_frames_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, task in TASKS.items():
            path = Path(tmp) / f"{name}.h5"
            views = ViewsConfig(task=name, scenes=args.scenes, arm_only=0, image_size=args.image_size)
            collect_views(views, str(path), progress=False)
            lo, hi = task.workspace
            cfg = dataclasses.replace(MASK_PRESETS["cpu"], workspace_min=list(lo), workspace_max=list(hi))
            start = time.perf_counter()
            fuse_file(path, cfg, progress=False)
            seconds = (time.perf_counter() - start) / args.scenes
            s = score(path)
            results["mask_iou"][name] = s["mean"]
            results["mask_iou_per_camera"][name] = s["per_camera"]
            results["objects_missed"][name] = s["missed"]
            results["frame_misses"][name] = s["frame_misses"]
            results["spurious"][name] = s["spurious"]
            results["fusion_s_per_scene"][name] = seconds
            results["fusion_frames_per_s"][name] = views.free_views / seconds
            print(name, s, f"{seconds:.1f} s per scene", flush=True)
            if name == "stack":
                results["matches_per_s"] = matches_per_s(path)

    out = Path(args.out)
    save_json(results, out / "geometry.json")
    cams = sorted({c for v in results["mask_iou_per_camera"].values() for c in v})
    lines = ["# Self-supervised geometry", "",
             f"`python benchmarks/geometry.py --scenes {args.scenes}`: {args.scenes} scenes per task at "
             f"{args.image_size} px, CPU. Fusion time covers fusing the free views, clustering and rendering masks "
             "into every frame of the scene.", "",
             "| task | mean IoU | " + " | ".join(f"IoU {c}" for c in cams)
             + " | objects missed | frame misses | spurious | fusion s/scene |",
             "|---|---|" + "---|" * len(cams) + "---|---|---|---|"]
    for name in TASKS:
        per = results["mask_iou_per_camera"][name]
        lines.append(f"| {name} | {results['mask_iou'][name]:.3f} | "
                     + " | ".join(f"{per.get(c, float('nan')):.3f}" for c in cams)
                     + f" | {results['objects_missed'][name]} | {results['frame_misses'][name]} | "
                     f"{results['spurious'][name]} | {results['fusion_s_per_scene'][name]:.1f} |")
    lines += ["", f"Correspondence throughput (all valid pixels of a 128 px frame against another, CPU, float64): "
              f"{results['matches_per_s']:.0f} matches/s."]
    atomic_write_bytes(out / "geometry.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
