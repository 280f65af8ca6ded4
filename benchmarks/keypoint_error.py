"""How far DON keypoints land from ground-truth keypoints on demonstrations: the raw softmax mode, the confidence
gate (`dckp-gate`) and the particle filter (`dckp-filter`), side by side on the same frames. Writes
results/keypoint_error.{json,md} (merging with rows already there) and a plot of one keypoint's error through
its longest occlusion, results/keypoint_error_<task>_occlusion.png.

    python benchmarks/keypoint_error.py --demos data/stack.h5 --don runs/don_stack \
        --references runs/policies/stack/references.safetensors

The measurement is `dckp eval-keypoints`' (`dckp.evaluation.keypoint_error`, docs/metrics.md): the references'
pixels, moved with their objects' true poses (`gt-kp`), are the ground truth, frame by frame over the first `--episodes`
demonstrations; the gate and the filter run each demonstration from its start, as in closed loop, with their
default options. Per camera: the share of keypoints inside the image, then over those the median pixel error (and
for the mode the share within 5 % of the image size), for visible keypoints near the camera (closer than `--near`
m), visible ones farther away, and occluded ones (the depth image at the true pixel is more than 1 cm in front of
the point), and the median 3D error in millimetres (the mode and the gate back-projected with the depth image at
their pixel). Each raw, and symmetry-aware: the smallest over the point's images under its object's symmetry group
(a cube's 24 rotations, the square nut's 4, the can about its axis), so that a keypoint on the right object at a
symmetric twin of its point counts as right.

results/keypoint_error.json: `<task>.<don>` the raw mode's rows (as before), and
`by_method.<task>.<mode|gate|filter>.<camera>.<all|visible_near|visible_far|occluded|occluded_after_seen>` ->
`median_px`, `median_mm`, `median_px_sym`, `median_mm_sym`, `keypoints` (`occluded_after_seen`: occluded, and
seen by this camera at an earlier step of the demonstration: where memory can help).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402
from dckp.evaluation.keypoint_error import SPLITS, measure, summarise  # noqa: E402
from dckp.evaluation.keypoint_error_config import METHODS, KeypointErrorConfig  # noqa: E402

RAW_SPLITS = SPLITS[:4]  # the raw mode's rows: all, visible near, visible far, occluded
BY_METHOD = ("keypoints", "median_px", "median_mm", "median_px_sym", "median_mm_sym")


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

    cfg = KeypointErrorConfig(don=args.don, references=args.references, demos=args.demos, episodes=args.episodes,
                              near=args.near)
    measured = measure(cfg)
    scores = summarise(measured, cfg.near)
    task = measured["task"]
    rows = {cam: {"in_image": share, **{s: {k: scores["by_method"]["mode"][cam][s][k]
                                            for k in ("keypoints", "median_px", "pck@5%")} for s in RAW_SPLITS}}
            for cam, share in scores["in_image"].items()}
    by_method = {m: {cam: {s: {k: r[k] for k in BY_METHOD} for s, r in per_cam.items()}
                     for cam, per_cam in scores["by_method"][m].items()} for m in METHODS}

    out = Path(args.out)
    path = out / "keypoint_error.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault(task, {})[args.don] = {"episodes": args.episodes, "near_m": args.near, "cameras": rows}
    results.setdefault("by_method", {})[task] = {"don": args.don, "episodes": args.episodes, "near_m": args.near,
                                                 **by_method}
    save_json(results, path)
    plot = occlusion_plot(measured, task, out / f"keypoint_error_{task}_occlusion.png")
    atomic_write_bytes(out / "keypoint_error.md", ("\n".join(markdown(results)) + "\n").encode())
    print("\n".join(markdown(results)), f"\n{plot}")


def markdown(results: dict) -> list[str]:
    lines = ["# DON keypoints against ground-truth keypoints on demonstrations", "",
             "`python benchmarks/keypoint_error.py --demos ... --don ... --references ...`: pixel error of the "
             "softmax mode against the same reference pixels moved with their objects' true poses, over keypoints "
             "inside the image: all, visible and closer to the camera than `near_m`, visible and farther, occluded. "
             "Raw: symmetry counts as error here (the symmetry-aware medians are in the next table). Medians and "
             "PCK as docs/metrics.md defines them (rows measured before 2026-12 took the lower middle value and "
             "PCK's strict < ).", "",
             "| task | DON | camera | in image | median px (all / vis. near / vis. far / occluded) | "
             "PCK@5% (same) | keypoints (same) |", "|---|---|---|---|---|---|---|"]

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for t, per_don in results.items():
        if t == "by_method":
            continue
        for d, r in per_don.items():
            for cam, row in r["cameras"].items():
                med = " / ".join(fmt(row[k]["median_px"], ".1f") for k in RAW_SPLITS)
                pck = " / ".join(fmt(row[k]["pck@5%"], ".2f") for k in RAW_SPLITS)
                n = " / ".join(str(row[k]["keypoints"]) for k in RAW_SPLITS)
                lines.append(f"| {t} | {d} | {cam} | {row['in_image']:.2f} | {med} | {pck} | {n} |")
    lines += ["", "## Raw mode, confidence gate (`dckp-gate`) and particle filter (`dckp-filter`)", "",
              "The same frames; the gate and the filter run each demonstration from its start with their default "
              "options. Median pixel error and median 3D error (mm) against GT-KP; \"occluded after seen\": occluded "
              "keypoints this camera saw earlier in the demonstration, where memory can help (a point hidden from "
              "the start, e.g. on a cube's far face, can only be guessed by symmetry); symmetry-aware (sym.): the "
              "smallest error over the point's images under its object's symmetry group (- in rows measured before "
              "it existed); the plot `keypoint_error_<task>_occlusion.png` follows one keypoint through its longest "
              "occlusion.", "",
              "| task | camera | method | median px (all / vis. near / vis. far / occluded / occluded after seen) | "
              "median px sym. (same) | median mm (same) | median mm sym. (same) | keypoints (same) |",
              "|---|---|---|---|---|---|---|---|"]
    for t, r in results.get("by_method", {}).items():
        for cam in r["mode"]:
            for m in METHODS:
                row = r[m][cam]
                cols = [" / ".join(fmt(row[s].get(k), spec) for s in SPLITS) for k, spec in (
                    ("median_px", ".1f"), ("median_px_sym", ".1f"), ("median_mm", ".0f"), ("median_mm_sym", ".0f"))]
                n = " / ".join(str(row[s]["keypoints"]) for s in SPLITS)
                lines.append(f"| {t} | {cam} | {m} | {' | '.join(cols)} | {n} |")
    return lines


def occlusion_plot(measured: dict, task: str, path: Path) -> Path:
    """Pixel error of each method over time (`dckp.evaluation.keypoint_error.measure`'s) for the keypoint with
    the longest occlusion that it enters and leaves in view (a visible in-image step just before and just after)."""
    err, inside, seen = measured["errors"], measured["inside"], measured["visible"]
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
