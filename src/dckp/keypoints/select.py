"""Choose reference keypoints on one frame of the training demonstrations and save them.

Per camera, the reference frame is the first frame of a demonstration (a static scene before the robot touches
anything), or a chosen frame of a views file (an imported recording: `dckp import`). Its object masks come
without labels from depth alone: the frame's points in the file's workspace box (its `workspace` attribute, or
the user's), minus the table, clustered (`segment_objects`, as in `dckp fuse` but from a single view).
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

from dckp.config import atomic_write_bytes
from dckp.data import Dataset
from dckp.data.dataset import check_workspace
from dckp.errors import DckpError
from dckp.geometry.camera import backproject, transform
from dckp.geometry.masks import MASK_PRESETS, segment_objects
from dckp.keypoints.references import references_at, sample_references
from dckp.sim.tasks import workspace_of


def single_view_masks(depth: np.ndarray, K: np.ndarray, pose: np.ndarray, workspace) -> np.ndarray:
    """Instance ids (H,W) uint8 of one RGB-D frame: its points in the workspace box, table removed, clustered."""
    lo, hi = workspace
    cfg = dataclasses.replace(MASK_PRESETS["cpu"], workspace_min=list(lo), workspace_max=list(hi))
    d = torch.from_numpy(np.asarray(depth, np.float64))
    points = transform(torch.from_numpy(np.asarray(pose, np.float64)), backproject(d, torch.from_numpy(
        np.asarray(K, np.float64))))[d > 0].numpy()
    mask = np.zeros(d.shape, np.uint8)
    mask[(d > 0).numpy()] = segment_objects(points, cfg).clip(0, 254).astype(np.uint8)
    return mask


@torch.no_grad()
def select_references(model, demos: str | os.PathLike, out: str | os.PathLike, per_camera: int = 16,
                      pixels: dict[str, np.ndarray] | None = None, episode: str | None = None, seed: int = 0,
                      frame: int = 0, workspace=None) -> dict:
    """Choose and save references on frame `frame` of episode `episode` (default: the first frame of the first
    episode) of a demos or views file; for a camera that sees no object there (no table in view, say), on that
    frame of the next episode that shows one (arm-only episodes are skipped). `pixels` maps cameras to
    hand-picked (n,2) pixel coordinates instead. `workspace` `(lo, hi)` overrides the file's box.
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
            for ep in scenes if pixels is None else [first]:
                if not 0 <= frame < ds.num_frames(ep, cam):
                    raise DckpError(f"no frame {frame} in {ep} (it has {ds.num_frames(ep, cam)})", path=str(demos),
                                    field=f"data/{ep}/obs/{cam}_rgb")
                fr = ds.frame(ep, cam, frame)
                image = torch.from_numpy(fr["rgb"]).permute(2, 0, 1)[None].float() / 255
                desc = model(image.to(device))[0].cpu() if model is not None else \
                    image.new_zeros((0, *image.shape[-2:]))
                if pixels is not None:
                    if cam not in pixels:
                        raise DckpError(f"no hand-picked pixels for camera {cam!r}", field="pixels")
                    uv = torch.as_tensor(pixels[cam], dtype=torch.float32)
                    refs = references_at(desc, uv)
                    break
                try:
                    masks = torch.from_numpy(single_view_masks(fr["depth"], fr["K"], fr["pose"], workspace))
                except DckpError:  # no table in view: the camera sees too little of the scene
                    masks = torch.zeros(fr["depth"].shape, dtype=torch.uint8)
                if (masks > 0).any():
                    refs, uv, _ = sample_references(desc, masks, per_camera, generator)
                    break
            else:
                raise DckpError(f"no object found by the {cam} camera in frame {frame} of any episode from {first}",
                                path=str(demos))
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
