"""`dckp fuse`: object masks for every frame of a views file, from depth and camera poses alone.

Per scene, the free-camera frames (the static scene, with the arm at rest) are fused into a TSDF volume over
the workspace box; its surface points are split into table and objects (`segment_objects`) and every frame of
every stream gets an instance-id mask by the depth test (`render_instance_masks`), so the moving arm in the
wrist and overview frames stays background where it covers an object. Arm-only episodes are fused over the
box extended upwards and backwards to hold the resting arm; everything above the table there is the arm
(label 1), and only their free-camera frames (where the arm is still) get masks.

The file gains `obs/<stream>_mask` (T,H,W) uint8 per episode and `fused/points|colors|labels` per episode; the
file is rewritten through a temp copy and renamed, so an interrupted run leaves it as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from dckp.config import temp_beside
from dckp.data import Dataset
from dckp.errors import DckpError
from dckp.geometry.masks import MaskConfig, render_instance_masks, segment_objects
from dckp.geometry.tsdf import extract_surface_points, integrate, make_volume

FUSED_STREAM = "free"
ARM_BOX_GROWTH = ((-0.4, -0.2, 0.0), (0.0, 0.2, 0.6))  # metres added to the workspace for arm-only episodes


def fuse_episode(ds: Dataset, episode: str, cfg: MaskConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused surface points (P,3), colours (P,3) uint8 and object labels (P,) of one episode."""
    arm_only = episode.startswith("arm_")
    lo, hi = np.array(cfg.workspace_min, float), np.array(cfg.workspace_max, float)
    if arm_only:
        lo, hi = lo + ARM_BOX_GROWTH[0], hi + ARM_BOX_GROWTH[1]
        cfg = dataclasses.replace(cfg, workspace_min=lo.tolist(), workspace_max=hi.tolist())
    volume = make_volume(lo, hi, cfg.voxel_size, cfg.trunc)
    for t in range(ds.num_frames(episode, FUSED_STREAM)):
        fr = ds.frame(episode, FUSED_STREAM, t)
        integrate(volume, fr["depth"], fr["rgb"], fr["K"], fr["pose"])
    points, colors = (x.numpy() for x in extract_surface_points(volume))
    if len(points) == 0:
        raise DckpError("no surface inside the workspace box (depth all 0, or the box misses the scene: see "
                        "--workspace-min/--workspace-max)", path=ds.path, field=f"data/{episode}/obs/free_depth")
    try:
        labels = segment_objects(points, cfg)
    except DckpError as e:  # name the file and episode
        raise DckpError(str(e), path=ds.path, field=f"data/{episode}") from None
    if arm_only:
        labels = (labels > 0).astype(np.int64)
    return points.astype(np.float32), colors, labels


def fuse_file(path: str | os.PathLike, cfg: MaskConfig, progress: bool = True) -> dict:
    """Add masks and fused point clouds to a views file (atomically). Returns a summary per episode.
    The file is checked first: a views file whose every frame reads and has depth."""
    path = Path(path)
    with Dataset(path) as ds:
        ds.expect("views")
        ds.validate()
    tmp = temp_beside(path)
    summary = {}
    try:
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)
        with Dataset(tmp, name=path) as ds:
            fused = {}
            for ep in tqdm(ds.episodes, desc=f"fuse {path.name}", disable=not progress):
                points, colors, labels = fuse_episode(ds, ep, cfg)
                streams = [FUSED_STREAM] if ep.startswith("arm_") else ds.streams(ep)
                masks = {}
                for s in streams:
                    masks[s] = np.stack([
                        render_instance_masks(points, labels, fr["depth"], fr["K"], fr["pose"], cfg)
                        for fr in (ds.frame(ep, s, t) for t in range(ds.num_frames(ep, s)))])
                fused[ep] = (points, colors, labels, masks)
                summary[ep] = {"points": len(points), "objects": int(labels.max(initial=0))}
        with h5py.File(tmp, "a") as f:
            f.attrs["fuse_config"] = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
            for ep, (points, colors, labels, masks) in fused.items():
                grp = f[f"data/{ep}"]
                if "fused" in grp:
                    del grp["fused"]
                g = grp.create_group("fused")
                g["points"], g["colors"], g["labels"] = points, colors, labels.astype(np.uint8)
                for s, m in masks.items():
                    key = f"obs/{s}_mask"
                    if key in grp:
                        del grp[key]
                    grp.create_dataset(key, data=m, chunks=(1,) + m.shape[1:], compression="gzip",
                                       compression_opts=4)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return summary
