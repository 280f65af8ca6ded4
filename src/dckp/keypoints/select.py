"""Choose reference keypoints on one frame of the training demonstrations and save them.

Per camera, the reference frame is the first frame of a demonstration (a static scene before the robot touches
anything), or a chosen frame of a views file (an imported recording: `dckp import`). Its object masks come
without labels from depth alone: the frame's points in the file's workspace box (its `workspace` attribute, or
the user's), minus the table, clustered (`segment_objects`, as in `dckp fuse` but from a single view, with
clusters down to `VIEW_MIN_POINTS`), minus any cluster within `HAND_CLEARANCE` of the hand (the gripper's
fingers in the wrist camera; the hand's position is the robot's own state, `eef_pos`, where the file has it).
Of the first `CANDIDATES` scenes, each camera takes the first that shows it as many objects as most of them do: in
one scene an object hides behind another or is too small to cluster, in another one falls apart into pieces.
References are sampled with an equal number per object, or taken at hand-picked pixels.

For the ground-truth-keypoint baseline each reference pixel is also lifted to the object it lies on (using the
simulator's segmentation and object poses: ground truth, for that baseline only) and stored in that object's
frame, so it can be moved with the object's true pose later. Files without that ground truth (recordings) store
object -1 and a zero local point.

The file `references.safetensors` holds, per camera `<cam>`: `<cam>.descriptors (K,D)`, `<cam>.uv (K,2)`,
`<cam>.object (K,)` (index into the file's objects, -1 if none) and `<cam>.local (K,3)` (metres, in that
object's frame); its metadata holds the source and the settings as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save
from scipy.spatial import cKDTree

from dckp.config import atomic_write_bytes
from dckp.data import Dataset
from dckp.data.dataset import check_workspace
from dckp.errors import DckpError
from dckp.geometry.camera import backproject, transform
from dckp.geometry.masks import MASK_PRESETS, segment_objects
from dckp.keypoints.references import references_at, sample_references
from dckp.sim.tasks import workspace_of

CANDIDATES = 10  # scenes compared per camera for the reference frame
VIEW_MIN_POINTS = 10  # a single 128 px view sees a drink can with 30-60 pixels, a fused cloud with hundreds
MERGE_GAP = 0.025  # metres; a cluster this close to a larger one is a piece of it, cut off where a face is seen edge-on
HAND_CLEARANCE = 0.05  # metres; the open fingers' nearest points are 4 cm from the hand's position


def single_view_masks(depth: np.ndarray, K: np.ndarray, pose: np.ndarray, workspace,
                      hand: np.ndarray | None = None) -> np.ndarray:
    """Instance ids (H,W) uint8 of one RGB-D frame: its points in the workspace box, table removed, clustered;
    a cluster within `MERGE_GAP` of a larger one joins it, clusters with a point within `HAND_CLEARANCE` of
    `hand` (3,) (world, metres) are dropped, the rest are numbered 1..K in their order."""
    lo, hi = workspace
    cfg = dataclasses.replace(MASK_PRESETS["cpu"], workspace_min=list(lo), workspace_max=list(hi),
                              min_cluster_points=VIEW_MIN_POINTS)
    d = torch.from_numpy(np.asarray(depth, np.float64))
    points = transform(torch.from_numpy(np.asarray(pose, np.float64)), backproject(d, torch.from_numpy(
        np.asarray(K, np.float64))))[d > 0].numpy()
    labels = segment_objects(points, cfg)
    sizes = np.bincount(labels)
    for k in np.argsort(sizes[1:], kind="stable") + 1:  # smallest first: a strip of a face seen edge-on
        larger = (labels > 0) & (labels != k) & (sizes[labels] >= sizes[k])
        if larger.any():
            dist, nearest = cKDTree(points[larger]).query(points[labels == k])
            if dist.min() < MERGE_GAP:
                labels[labels == k] = labels[larger][nearest[dist.argmin()]]
                sizes = np.bincount(labels, minlength=len(sizes))
    if hand is not None:
        labels[np.isin(labels, labels[np.linalg.norm(points - np.asarray(hand), axis=1) < HAND_CLEARANCE])] = 0
    renumber = np.zeros(labels.max() + 1, np.int64)
    kept = np.unique(labels[labels > 0])
    renumber[kept] = np.arange(1, len(kept) + 1)
    labels = renumber[labels]
    mask = np.zeros(d.shape, np.uint8)
    mask[(d > 0).numpy()] = labels.clip(0, 254).astype(np.uint8)
    return mask


@torch.no_grad()
def select_references(model, demos: str | os.PathLike, out: str | os.PathLike, per_camera: int = 16,
                      pixels: dict[str, np.ndarray] | None = None, episode: str | None = None, seed: int = 0,
                      frame: int = 0, workspace=None) -> dict:
    """Choose and save references on frame `frame` (default: the first) of a demos or views file: per camera,
    of the first scene from episode `episode` (default: the first) with the object count typical of the first
    `CANDIDATES` (arm-only episodes are skipped, and so are scenes where the camera sees no object, no table in
    view, say). `pixels` maps cameras to hand-picked (n,2) pixel coordinates of episode `episode` instead.
    `workspace` `(lo, hi)` overrides the file's box.
    `model` is the DON, run on the device it is on (the descriptors come back to the CPU); None stores no
    descriptors, for ground-truth keypoints without a DON (the pixels depend on the object masks only)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device if model is not None else None
    tensors, summary = {}, {}
    with Dataset(demos) as ds:
        first = ds.pick_episode(episode)
        if pixels is None:
            workspace = check_workspace(workspace, field="workspace") if workspace is not None else workspace_of(ds)
            if workspace is None:
                raise DckpError("no workspace box in the file (not a simulator task, no `workspace` attribute); give "
                                "--workspace-min and --workspace-max", path=str(demos))
        scenes = [e for e in ds.episodes[ds.episodes.index(first):] if e == first or not e.startswith("arm_")]
        for cam in ds.streams(first):
            if pixels is not None:
                if cam not in pixels:
                    raise DckpError(f"no hand-picked pixels for camera {cam!r}", field="pixels")
                ep, fr = first, _frame(ds, first, cam, frame, demos)
                uv = torch.as_tensor(pixels[cam], dtype=torch.float32)
                refs = references_at(_descriptors(model, fr, device), uv)
            else:
                ep, fr, masks = _typical_scene(ds, scenes, cam, frame, workspace, demos)
                refs, uv, _ = sample_references(_descriptors(model, fr, device), masks, per_camera, generator)
            if "seg" in fr and "object_pose" in ds.keys(ep):
                poses = ds.array(ep, "object_pose")  # per frame; a views file's static scene has its sweep's
                obj, local = _lift(uv.numpy(), fr, poses[min(frame, len(poses) - 1)])
            else:  # a recording: no ground truth to lift the references with
                obj, local = np.full(len(uv), -1, np.int64), np.zeros((len(uv), 3), np.float32)
            tensors.update({f"{cam}.descriptors": refs.contiguous(), f"{cam}.uv": uv.float().contiguous(),
                            f"{cam}.object": torch.from_numpy(obj), f"{cam}.local": torch.from_numpy(local)})
            summary[cam] = {"references": len(uv), "episode": ep, "objects_hit": sorted(set(obj.tolist()))}
        meta = {"demos": str(demos), "episodes": {cam: v["episode"] for cam, v in summary.items()}, "task": ds.task,
                "objects": ds.objects, "cameras": ds.streams(first), "frame": frame}
    atomic_write_bytes(out, save(tensors, metadata={"dckp": json.dumps(meta)}))
    return summary


def _frame(ds: Dataset, ep: str, cam: str, frame: int, demos) -> dict:
    if not 0 <= frame < ds.num_frames(ep, cam):
        raise DckpError(f"no frame {frame} in {ep} (it has {ds.num_frames(ep, cam)})", path=str(demos),
                        field=f"data/{ep}/obs/{cam}_rgb")
    return ds.frame(ep, cam, frame)


def _descriptors(model, fr: dict, device) -> torch.Tensor:
    """The DON's (D,H,W) descriptors of the frame on the CPU; (0,H,W) without a DON."""
    image = torch.from_numpy(fr["rgb"]).permute(2, 0, 1)[None].float() / 255
    return model(image.to(device))[0].cpu() if model is not None else image.new_zeros((0, *image.shape[-2:]))


def _typical_scene(ds: Dataset, scenes: list[str], cam: str, frame: int, workspace, demos):
    """(episode, frame, masks) of the first of `scenes` whose frame `frame` shows `cam` the object count that
    most of the first `CANDIDATES` scenes where it sees any agree on (the larger count on ties): fewer, and an
    object is hidden or too small to cluster; more, and one fell apart into pieces."""
    seen = []
    for ep in scenes:
        fr = _frame(ds, ep, cam, frame, demos)
        hand = ds.array(ep, "eef_pos")[frame] if "eef_pos" in ds.keys(ep) else None
        try:
            masks = torch.from_numpy(single_view_masks(fr["depth"], fr["K"], fr["pose"], workspace, hand))
        except DckpError:  # no table in view: the camera sees too little of the scene
            continue
        if masks.max() > 0:
            seen.append((ep, fr, masks))
        if len(seen) == CANDIDATES:
            break
    if not seen:
        raise DckpError(f"no object found by the {cam} camera in frame {frame} of any episode from {scenes[0]}",
                        path=str(demos))
    counts = [int(masks.max()) for _, _, masks in seen]
    typical = max(set(counts), key=lambda c: (counts.count(c), c))
    return seen[counts.index(typical)]


def _lift(uv: np.ndarray, fr: dict, object_poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The object each pixel lies on (ground-truth segmentation; nearest object centre if it misses one) and
    the pixel's 3D point in that object's frame."""
    u, v = np.clip(np.round(uv).astype(int), 0, np.array(fr["depth"].shape[::-1]) - 1).T
    z = fr["depth"][v, u]
    cam = np.stack([(uv[:, 0] - fr["K"][0, 2]) * z / fr["K"][0, 0], (uv[:, 1] - fr["K"][1, 2]) * z / fr["K"][1, 1], z])
    world = (fr["pose"][:3, :3] @ cam + fr["pose"][:3, 3:4]).T
    seg = fr["seg"][v, u].astype(int) - 1
    nearest = np.linalg.norm(world[:, None] - object_poses[None, :, :3, 3], axis=-1).argmin(1)
    obj = np.where((seg >= 0) & (seg < len(object_poses)), seg, nearest)
    local = np.einsum("kji,kj->ki", object_poses[obj, :3, :3], world - object_poses[obj, :3, 3])
    return obj.astype(np.int64), local.astype(np.float32)


def load_references(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """{camera: {descriptors, uv, object, local}} and the metadata of a references file."""
    path = Path(path)
    if not path.is_file():
        raise DckpError("file not found", path=str(path))
    data = path.read_bytes()
    try:
        tensors = load(data)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["dckp"])
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds on corrupt files
        raise DckpError(f"not a references file ({type(e).__name__})", path=str(path)) from None
    refs = {}
    for key, value in tensors.items():
        cam, name = key.rsplit(".", 1)
        refs.setdefault(cam, {})[name] = value
    return refs, meta
