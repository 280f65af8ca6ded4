"""How far DON keypoints land from ground-truth keypoints on demonstrations. Writes results/keypoint_error.{json,md}
(merging with rows already there).

    python benchmarks/keypoint_error.py --demos data/stack.h5 --don runs/don_stack \
        --references runs/policies/stack/references.safetensors

The references' pixels, moved with their objects' true poses (`gt-kp`), are the ground truth for the DON's
softmax modes (`dckp-2d`/`dckp-3d`), frame by frame over the first `--episodes` demonstrations. Per camera: the
share of keypoints inside the image, then over those the median pixel error and the share within 5 % of the
image size, for visible keypoints near the camera (closer than `--near` m), visible ones farther away, and
occluded ones (the depth image at the true pixel is more than 1 cm in front of the point). Symmetric objects
(cubes) make part of the error ambiguity rather than a mistake: a keypoint on the right object but on a
symmetric twin of its point counts as an error here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.data import Dataset
from dckp.encoders.keypoints import DonKeypoints, GroundTruthKeypoints
from dckp.keypoints.extract import depth_at
from dckp.keypoints.select import load_references
from dckp.policy.demos import frames_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True)
    parser.add_argument("--don", required=True, help="the `dckp pretrain` run")
    parser.add_argument("--references", required=True, help="`dckp keypoints` output made with this DON")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--near", type=float, default=0.2, help="metres")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cameras = sorted(load_references(args.references)[0])
    err, inside, depth, seen = ({c: [] for c in cameras} for _ in range(4))
    with Dataset(args.demos) as ds:
        task = ds.task
        size = ds.frames(ds.episodes[0], cameras[0], "rgb", 0, 1).shape[1]
        don = DonKeypoints(cameras, size, don=args.don, references=args.references)
        gt = GroundTruthKeypoints(cameras, size, references=args.references)
        for ep in ds.episodes[: args.episodes]:
            frames = frames_of(ds, ep, cameras, 0, len(ds.actions(ep)))
            found = don.image_keypoints(frames)
            for cam in cameras:
                uv, p, _ = gt.points(frames, cam)
                H, W = frames[f"{cam}_depth"].shape[-2:]
                err[cam].append((found[cam][0] - uv).norm(dim=-1).flatten())
                in_image = ((uv >= 0) & (uv < torch.tensor([W, H]))).all(-1) & (p[..., 2] > 0)
                inside[cam].append(in_image.flatten())
                depth[cam].append(p[..., 2].flatten())
                at = depth_at(uv, frames[f"{cam}_depth"], window=1)
                seen[cam].append((at > p[..., 2] - 0.01).flatten())

    size = max(H, W)
    rows = {}
    for cam in cameras:
        e, ok, z, vis = (torch.cat(x[cam]) for x in (err, inside, depth, seen))
        row = {"in_image": ok.float().mean().item()}
        for name, sel in (("all", ok), ("visible_near", ok & vis & (z < args.near)),
                          ("visible_far", ok & vis & (z >= args.near)), ("occluded", ok & ~vis)):
            row[name] = {"keypoints": int(sel.sum()), "median_px": e[sel].median().item() if sel.any() else None,
                         "pck@5%": (e[sel] < 0.05 * size).float().mean().item() if sel.any() else None}
        rows[cam] = row

    out = Path(args.out)
    path = out / "keypoint_error.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault(task, {})[args.don] = {"episodes": args.episodes, "near_m": args.near, "cameras": rows}
    save_json(results, path)
    lines = ["# DON keypoints against ground-truth keypoints on demonstrations", "",
             "`python benchmarks/keypoint_error.py --demos ... --don ... --references ...`: pixel error of the "
             "softmax mode against the same reference pixels moved with their objects' true poses, over keypoints "
             "inside the image: all, visible and closer to the camera than `near_m`, visible and farther, occluded. "
             "Cube symmetry counts as error.", "",
             "| task | DON | camera | in image | median px (all / vis. near / vis. far / occluded) | "
             "PCK@5% (same) | keypoints (same) |", "|---|---|---|---|---|---|---|"]
    splits = ("all", "visible_near", "visible_far", "occluded")

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for t, per_don in results.items():
        for d, r in per_don.items():
            for cam, row in r["cameras"].items():
                med = " / ".join(fmt(row[k]["median_px"], ".1f") for k in splits)
                pck = " / ".join(fmt(row[k]["pck@5%"], ".2f") for k in splits)
                n = " / ".join(str(row[k]["keypoints"]) for k in splits)
                lines.append(f"| {t} | {d} | {cam} | {row['in_image']:.2f} | {med} | {pck} | {n} |")
    atomic_write_bytes(out / "keypoint_error.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines[-len(cameras):]))


if __name__ == "__main__":
    main()
