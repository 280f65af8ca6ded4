"""Keypoint error on the demonstrations' frames: how far a DON's keypoints land from ground-truth keypoints where
the policy looks (the wrist camera close to the objects, the gripper in the way, objects moving), raw and
symmetry-aware. `dckp eval-keypoints`, `dckp run`'s report and `benchmarks/keypoint_error.py` use it; the measures
are `dckp.metrics`' (docs/metrics.md).

The ground truth is `gt-kp`'s: the references' pixels, fixed on the objects they lie on and moved with the objects'
true poses, frame by frame over the first `episodes` demonstrations; so it needs simulator data. Per camera and
method (`mode`: the DON heatmap's highest pixel, as `dckp-3d`; `gate`: `dckp-gate`; `filter`: `dckp-filter`, both
with their default options and run over each demonstration from its start, as in closed loop) and per split of
the keypoints inside the image (`all`; visible and nearer the camera than `near` m, `visible_near`, or farther,
`visible_far`; `occluded`: the depth image at the true pixel is more than 1 cm in front of the point;
`occluded_after_seen`: occluded, and seen by this camera at an earlier step: where memory can help): the number of
keypoints and the median pixel and 3D error (the mode back-projected with the depth image at its pixel), raw and
symmetry-aware (the smallest over the point's images under its object's symmetry group, `Task.symmetry`), and the
raw PCK@5 %.
"""

from __future__ import annotations

import dataclasses

import torch

from dckp.errors import DckpError
from dckp.evaluation.keypoint_error_config import KeypointErrorConfig

SPLITS = ("all", "visible_near", "visible_far", "occluded", "occluded_after_seen")
ERRORS = ("px", "mm", "px_sym", "mm_sym")
BATCH = 32  # frames per encoder step, as encode_demos
OCCLUDED_BY = 0.01  # metres: the depth image this much in front of the true point hides it


def check_demos(ds, episodes: int) -> list[str]:
    """The first `episodes` demonstrations of the open dataset `ds`, after checking that it is what the ground truth
    needs: simulator demonstrations with object poses and actions. DckpError otherwise."""
    from dckp.sim.tasks import TASKS

    if ds.task not in TASKS or not ds.episodes or "object_pose" not in ds.keys(ds.episodes[0]):
        raise DckpError(f"keypoint error needs ground truth (object poses), which only simulator data has; this is "
                        f"an imported recording (task {ds.task!r})", path=ds.path)
    ds.expect("demos")
    chosen = ds.episodes[:episodes]
    for ep in chosen:
        ds.actions(ep)
    return chosen


def check_references(ds, refs: dict, meta: dict, references: str) -> None:
    """DckpError unless the references are of the demonstrations' task and lifted onto its objects."""
    if meta.get("task") != ds.task:
        raise DckpError(f"references of task {meta.get('task')!r}, the demonstrations are {ds.task!r}",
                        path=references)
    for cam, r in refs.items():
        if (r["object"] < 0).any():
            raise DckpError(f"{cam}: references without ground truth (made on a recording)", path=references)


def symmetric_twins(refs: dict, objects: list[str], task) -> dict[str, torch.Tensor]:
    """Per camera, `(K, G, 3)`: each reference's point (in its object's frame) under every rotation of its object's
    symmetry group, the point itself first (groups smaller than the largest are padded with it)."""
    from dckp.sim.tasks.base import symmetry_rotations

    rotations = [torch.from_numpy(symmetry_rotations(task.symmetry.get(name))).float() for name in objects]
    G = max(len(r) for r in rotations)
    out = {}
    for cam, r in refs.items():
        twins = []
        for obj, local in zip(r["object"].tolist(), r["local"].float(), strict=True):
            points = rotations[obj] @ local  # (g, 3)
            twins.append(torch.cat([points, points[:1].expand(G - len(points), 3)]))
        out[cam] = torch.stack(twins)
    return out


@torch.no_grad()
def measure(cfg: KeypointErrorConfig) -> dict:
    """The per-frame errors behind `summarise`: `task`, `size` (image px), `episodes` (used), `errors.<method>.
    <camera>.<px|mm|px_sym|mm_sym>` and `inside`, `depth`, `visible`, `seen_before` per camera, each a list over
    episodes of `(T, K)` tensors."""
    from dckp.data import Dataset
    from dckp.encoders.filter import FilteredKeypoints, GatedKeypoints
    from dckp.encoders.keypoints import GroundTruthKeypoints
    from dckp.keypoints.extract import depth_at, keypoints_3d
    from dckp.keypoints.select import load_references
    from dckp.metrics import error_mm, pixel_error, symmetric_error
    from dckp.policy.demos import frames_of
    from dckp.sim.tasks import get_task

    with Dataset(cfg.demos) as ds:
        episodes = check_demos(ds, cfg.episodes)
        refs, meta = load_references(cfg.references)
        check_references(ds, refs, meta, cfg.references)
        cameras = sorted(refs)
        size = ds.frames(episodes[0], cameras[0], "rgb", 0, 1).shape[1]
        artefacts = {"don": cfg.don, "references": cfg.references}
        gate = GatedKeypoints(cameras, size, **artefacts)  # the mode is its raw keypoint
        filt = FilteredKeypoints(cameras, size, **artefacts) if "filter" in cfg.methods else None
        gt = GroundTruthKeypoints(cameras, size, references=cfg.references)
        twins = symmetric_twins(gt.refs, ds.objects, get_task(ds.task))
        errors = {m: {c: {k: [] for k in ERRORS} for c in cameras} for m in cfg.methods}
        state = {k: {c: [] for c in cameras} for k in ("inside", "depth", "visible", "seen_before")}
        for ep in episodes:
            T = len(ds.actions(ep))
            found = {m: {c: {"uv": [], "world": []} for c in cameras} for m in cfg.methods}
            gate.reset()
            if filt is not None:
                filt.reset()
            for s in range(0, T, BATCH):  # consecutive batches, as encode_demos
                frames = frames_of(ds, ep, cameras, s, min(s + BATCH, T), inputs=("rgb", "depth"))
                tracks = {"gate": gate.step(frames), **({"filter": filt.step(frames)} if filt is not None else {})}
                for cam in cameras:
                    raw = tracks["gate"][cam]["raw_uv"]
                    mode = {"uv": raw, "world": keypoints_3d(raw, frames[f"{cam}_depth"].float(),
                                                             frames[f"{cam}_K"].float(),
                                                             frames[f"{cam}_pose"].float(), "world")}
                    for m in cfg.methods:
                        t = mode if m == "mode" else tracks[m][cam]
                        found[m][cam]["uv"].append(t["uv"])
                        found[m][cam]["world"].append(t["world"])
            frames = frames_of(ds, ep, cameras, 0, T, inputs=("depth", "object_pose"))
            for cam in cameras:
                uv, p, world = gt.points(frames, cam)
                uv_twins, p_twins, world_twins = gt.points(frames, cam, local=twins[cam])
                uv_twins[p_twins[..., 2] <= 0] = float("nan")  # behind the camera: no pixel
                H, W = frames[f"{cam}_depth"].shape[-2:]
                for m in cfg.methods:
                    f = {k: torch.cat(v) for k, v in found[m][cam].items()}
                    e = errors[m][cam]
                    e["px"].append(pixel_error(f["uv"], uv))
                    e["mm"].append(error_mm(f["world"], world))
                    e["px_sym"].append(symmetric_error(f["uv"], uv_twins))
                    e["mm_sym"].append(symmetric_error(f["world"], world_twins, error_mm))
                inside = ((uv >= 0) & (uv < torch.tensor([W, H]))).all(-1) & (p[..., 2] > 0)
                visible = depth_at(uv, frames[f"{cam}_depth"], window=1) > p[..., 2] - OCCLUDED_BY
                seen = (inside & visible).int().cummax(0).values
                state["inside"][cam].append(inside)
                state["depth"][cam].append(p[..., 2])
                state["visible"][cam].append(visible)
                state["seen_before"][cam].append(torch.cat([torch.zeros_like(seen[:1]), seen[:-1]]) > 0)
        task = ds.task
    return {"task": task, "size": size, "episodes": len(episodes), "errors": errors, **state}


def summarise(measured: dict, near: float) -> dict:
    """`in_image.<camera>` (the share of keypoints inside the image) and `by_method.<method>.<camera>.<split>` =
    `{keypoints, median_px, median_mm, median_px_sym, median_mm_sym, pck@5%}` (None where a split is empty)."""
    from dckp.metrics import median, pck

    in_image, by_method = {}, {m: {} for m in measured["errors"]}
    for cam in measured["inside"]:
        ok, z, vis, before = (torch.cat(measured[k][cam]).flatten()
                              for k in ("inside", "depth", "visible", "seen_before"))
        splits = {"all": ok, "visible_near": ok & vis & (z < near), "visible_far": ok & vis & (z >= near),
                  "occluded": ok & ~vis, "occluded_after_seen": ok & ~vis & before}
        in_image[cam] = ok.double().mean().item()
        for m, per_cam in measured["errors"].items():
            e = {k: torch.cat(v).flatten() for k, v in per_cam[cam].items()}
            by_method[m][cam] = {
                name: {"keypoints": int(sel.sum()), **{f"median_{k}": median(e[k][sel]) for k in ERRORS},
                       "pck@5%": pck(e["px"][sel], measured["size"], (0.05,))["pck@5%"]}
                for name, sel in splits.items()}
    return {"in_image": in_image, "by_method": by_method}


def keypoint_error(cfg: KeypointErrorConfig) -> dict:
    """`dckp eval-keypoints`: the config, the metrics' version, `task`, `episodes` (used), `image_size` and
    `summarise`'s scores."""
    from dckp.metrics import VERSION

    measured = measure(cfg)
    return {"config": dataclasses.asdict(cfg), "metrics": VERSION, "task": measured["task"],
            "episodes": measured["episodes"], "image_size": measured["size"], **summarise(measured, cfg.near)}


def lines(result: dict) -> list[str]:
    """A plain-text table of `keypoint_error`'s result: per camera and method, median px and mm (symmetry-aware in
    brackets) for all / visible near / visible far / occluded keypoints."""
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    shown = ("all", "visible_near", "visible_far", "occluded")
    out = [f"{result['task']}, {result['episodes']} demonstrations, {result['image_size']} px: median px (symmetry-"
           f"aware) and mm (symmetry-aware), {' / '.join(shown)}"]
    for m, per_cam in result["by_method"].items():
        for cam, r in per_cam.items():
            px = " / ".join(f"{fmt(r[s]['median_px'], '.1f')} ({fmt(r[s]['median_px_sym'], '.1f')})" for s in shown)
            mm = " / ".join(f"{fmt(r[s]['median_mm'], '.0f')} ({fmt(r[s]['median_mm_sym'], '.0f')})" for s in shown)
            out.append(f"{cam} {m}: in image {result['in_image'][cam]:.2f}; px {px}; mm {mm}")
    return out
