"""How far DON keypoints land from ground-truth keypoints on demonstrations: the raw softmax mode, the confidence
gate (`dckp-gate`) and the particle filter (`dckp-filter`), side by side on the same frames. Writes
results/keypoint_error.{json,md} (merging with rows already there) and a plot of one keypoint's error through
its longest occlusion, results/keypoint_error_<task>_occlusion.png.

    python benchmarks/keypoint_error.py --demos data/stack.h5 --don runs/don_stack \
        --references runs/policies/stack/references.safetensors

The references' pixels, moved with their objects' true poses (`gt-kp`), are the ground truth, frame by frame over
the first `--episodes` demonstrations; the gate and the filter run each demonstration from its start, as in
closed loop, with their default options. Per camera: the share of keypoints inside the image, then over those
the median pixel error (and for the mode the share within 5 % of the image size), for visible keypoints near the
camera (closer than `--near` m), visible ones farther away, and occluded ones (the depth image at the true pixel
is more than 1 cm in front of the point), and the median 3D error in millimetres (the mode and the gate
back-projected with the depth image at their pixel). Symmetric objects (cubes) make part of the error ambiguity
rather than a mistake: a keypoint on the right object but on a symmetric twin of its point counts as an error.

results/keypoint_error.json: `<task>.<don>` the raw mode's rows (as before), and
`by_method.<task>.<mode|gate|filter>.<camera>.<all|visible_near|visible_far|occluded|occluded_after_seen>` ->
`median_px`, `median_mm`, `keypoints` (`occluded_after_seen`: occluded, and seen by this camera at an earlier step
of the demonstration: where memory can help).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402
from dckp.data import Dataset  # noqa: E402
from dckp.encoders.filter import FilteredKeypoints, GatedKeypoints  # noqa: E402
from dckp.encoders.keypoints import GroundTruthKeypoints  # noqa: E402
from dckp.keypoints.extract import depth_at, keypoints_3d  # noqa: E402
from dckp.keypoints.select import load_references  # noqa: E402
from dckp.policy.demos import frames_of  # noqa: E402

METHODS = ("mode", "gate", "filter")
SPLITS = ("all", "visible_near", "visible_far", "occluded")
AFTER_SEEN = "occluded_after_seen"  # occluded, and seen by this camera earlier in the demonstration: memory can help


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", required=True)
    parser.add_argument("--don", required=True, help="the `dckp pretrain` run")
    parser.add_argument("--references", required=True, help="`dckp keypoints` output made with this DON")
    parser.add_argument("--episodes", type=int, default=10, help="the first N demonstrations (default: 10)")
    parser.add_argument("--near", type=float, default=0.2, help="metres (default: 0.2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out", default="results", help="default: results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cameras = sorted(load_references(args.references)[0])
    # per method and camera, per episode: pixel error, mm error (T, K); per camera: in image, depth, visible
    err = {m: {c: {"px": [], "mm": []} for c in cameras} for m in METHODS}
    inside, depth, seen, before = ({c: [] for c in cameras} for _ in range(4))
    with Dataset(args.demos) as ds:
        task = ds.task
        size = ds.frames(ds.episodes[0], cameras[0], "rgb", 0, 1).shape[1]
        artefacts = {"don": args.don, "references": args.references}
        gate, filt = GatedKeypoints(cameras, size, **artefacts), FilteredKeypoints(cameras, size, **artefacts)
        gt = GroundTruthKeypoints(cameras, size, references=args.references)
        for ep in tqdm(ds.episodes[: args.episodes], desc=f"keypoint error {task}"):
            T = len(ds.actions(ep))
            tracks = {m: {c: {"uv": [], "world": []} for c in cameras} for m in METHODS}
            gate.reset()
            filt.reset()
            for s in range(0, T, 32):  # consecutive batches, as encode_demos
                frames = frames_of(ds, ep, cameras, s, min(s + 32, T))
                gated, filtered = gate.step(frames), filt.step(frames)
                for cam in cameras:
                    raw = keypoints_3d(gated[cam]["raw_uv"], frames[f"{cam}_depth"].float(),
                                       frames[f"{cam}_K"].float(), frames[f"{cam}_pose"].float(), "world")
                    for m, uv, world in (("mode", gated[cam]["raw_uv"], raw),
                                         ("gate", gated[cam]["uv"], gated[cam]["world"]),
                                         ("filter", filtered[cam]["uv"], filtered[cam]["world"])):
                        tracks[m][cam]["uv"].append(uv)
                        tracks[m][cam]["world"].append(world)
            frames = frames_of(ds, ep, cameras, 0, T)
            for cam in cameras:
                uv, p, world = gt.points(frames, cam)
                H, W = frames[f"{cam}_depth"].shape[-2:]
                for m in METHODS:
                    found = {k: torch.cat(v) for k, v in tracks[m][cam].items()}
                    err[m][cam]["px"].append((found["uv"] - uv).norm(dim=-1))
                    err[m][cam]["mm"].append(1000 * (found["world"] - world).norm(dim=-1))
                inside[cam].append(((uv >= 0) & (uv < torch.tensor([W, H]))).all(-1) & (p[..., 2] > 0))
                depth[cam].append(p[..., 2])
                seen[cam].append(depth_at(uv, frames[f"{cam}_depth"], window=1) > p[..., 2] - 0.01)
                visible = (inside[cam][-1] & seen[cam][-1]).int()
                before[cam].append(torch.cat([torch.zeros_like(visible[:1]), visible.cummax(0).values[:-1]]) > 0)

    size = max(H, W)
    rows, by_method = {}, {m: {} for m in METHODS}
    for cam in cameras:
        ok, z, vis, seen_before = (torch.cat(x[cam]).flatten() for x in (inside, depth, seen, before))
        selections = {"all": ok, "visible_near": ok & vis & (z < args.near), "visible_far": ok & vis & (z >= args.near),
                      "occluded": ok & ~vis, AFTER_SEEN: ok & ~vis & seen_before}
        for m in METHODS:
            px, mm = (torch.cat(err[m][cam][k]).flatten() for k in ("px", "mm"))
            by_method[m][cam] = {name: {"keypoints": int(sel.sum()),
                                        "median_px": px[sel].median().item() if sel.any() else None,
                                        "median_mm": mm[sel].median().item() if sel.any() else None}
                                 for name, sel in selections.items()}
            if m == "mode":
                row = {"in_image": ok.float().mean().item()}
                for name in SPLITS:
                    sel = selections[name]
                    row[name] = {"keypoints": int(sel.sum()),
                                 "median_px": px[sel].median().item() if sel.any() else None,
                                 "pck@5%": (px[sel] < 0.05 * size).float().mean().item() if sel.any() else None}
                rows[cam] = row

    out = Path(args.out)
    path = out / "keypoint_error.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault(task, {})[args.don] = {"episodes": args.episodes, "near_m": args.near, "cameras": rows}
    results.setdefault("by_method", {})[task] = {"don": args.don, "episodes": args.episodes, "near_m": args.near,
                                                 **by_method}
    save_json(results, path)
    plot = occlusion_plot(err, inside, seen, task, out / f"keypoint_error_{task}_occlusion.png")
    atomic_write_bytes(out / "keypoint_error.md", ("\n".join(markdown(results)) + "\n").encode())
    print("\n".join(markdown(results)), f"\n{plot}")


def markdown(results: dict) -> list[str]:
    lines = ["# DON keypoints against ground-truth keypoints on demonstrations", "",
             "`python benchmarks/keypoint_error.py --demos ... --don ... --references ...`: pixel error of the "
             "softmax mode against the same reference pixels moved with their objects' true poses, over keypoints "
             "inside the image: all, visible and closer to the camera than `near_m`, visible and farther, occluded. "
             "Cube symmetry counts as error.", "",
             "| task | DON | camera | in image | median px (all / vis. near / vis. far / occluded) | "
             "PCK@5% (same) | keypoints (same) |", "|---|---|---|---|---|---|---|"]

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for t, per_don in results.items():
        if t == "by_method":
            continue
        for d, r in per_don.items():
            for cam, row in r["cameras"].items():
                med = " / ".join(fmt(row[k]["median_px"], ".1f") for k in SPLITS)
                pck = " / ".join(fmt(row[k]["pck@5%"], ".2f") for k in SPLITS)
                n = " / ".join(str(row[k]["keypoints"]) for k in SPLITS)
                lines.append(f"| {t} | {d} | {cam} | {row['in_image']:.2f} | {med} | {pck} | {n} |")
    lines += ["", "## Raw mode, confidence gate (`dckp-gate`) and particle filter (`dckp-filter`)", "",
              "The same frames; the gate and the filter run each demonstration from its start with their default "
              "options. Median pixel error and median 3D error (mm) against GT-KP; \"occluded after seen\": occluded "
              "keypoints this camera saw earlier in the demonstration, where memory can help (a point hidden from "
              "the start, e.g. on a cube's far face, can only be guessed by symmetry); the plot "
              "`keypoint_error_<task>_occlusion.png` follows one keypoint through its longest occlusion.", "",
              "| task | camera | method | median px (all / vis. near / vis. far / occluded / occluded after seen) | "
              "median mm (same) | keypoints (same) |", "|---|---|---|---|---|---|"]
    for t, r in results.get("by_method", {}).items():
        for cam in r["mode"]:
            for m in METHODS:
                row = r[m][cam]
                splits = [*SPLITS, AFTER_SEEN]
                px = " / ".join(fmt(row[k]["median_px"], ".1f") for k in splits)
                mm = " / ".join(fmt(row[k]["median_mm"], ".0f") for k in splits)
                n = " / ".join(str(row[k]["keypoints"]) for k in splits)
                lines.append(f"| {t} | {cam} | {m} | {px} | {mm} | {n} |")
    return lines


def occlusion_plot(err: dict, inside: dict, seen: dict, task: str, path: Path) -> Path:
    """Pixel error of each method over time for the keypoint with the longest occlusion that it enters and leaves
    in view (a visible in-image step just before and just after)."""
    best = (0, None)
    for cam in inside:
        for e, (ok, vis) in enumerate(zip(inside[cam], seen[cam], strict=True)):
            state = torch.where(ok & vis, 1, torch.where(ok, 2, 0)).T.tolist()  # (K, T): 1 visible, 2 occluded
            for k, row in enumerate(state):
                t = 1
                while t < len(row):
                    end = t
                    while end < len(row) and row[end] == 2:
                        end += 1
                    if end > t and row[t - 1] == 1 and end < len(row) and row[end] == 1 and end - t > best[0]:
                        best = (end - t, (cam, e, k))
                    t = end + 1
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if best[1] is None:
        ax.set_title(f"{task}: no keypoint is occluded in these demonstrations")
    else:
        cam, e, k = best[1]
        occluded = (inside[cam][e] & ~seen[cam][e])[:, k]
        for t in torch.nonzero(occluded).flatten().tolist():
            ax.axvspan(t - 0.5, t + 0.5, color="0.85", lw=0)
        for m in METHODS:
            ax.plot(err[m][cam]["px"][e][:, k].numpy(), label=m)
        ax.set_title(f"{task}, {cam}, demonstration {e}, keypoint {k}: error against GT-KP (grey: occluded)",
                     fontsize=9)
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("pixel error")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
