"""`dckp view`: a rerun recording (`.rrd`) of a views or demonstrations file, or of one rollout of a policy, to
scrub through in 3D.

Entities (one subtree per episode, the timeline `frame` = frame index within the episode; `world` is Z up):

    world/<episode>/<camera>            Transform3D: the camera-to-world pose of each frame (OpenCV axes)
    world/<episode>/<camera>/image      Pinhole (K, camera_xyz RDF = OpenCV) with `rgb` (Image) and, where the
                                        file has fused masks, `mask` (SegmentationImage)
    world/<episode>/<camera>/points     the depth as a point cloud (camera frame), coloured by the RGB
    world/<episode>/<camera>/objects    the masked points, coloured by object (where the file has masks)
    world/<episode>/keypoints           3D keypoints in the world, per frame; `keypoints/tracks`: each keypoint's
                                        path over the whole episode (static)
    world/<episode>/gripper             the end effector's position, and its path (`gripper/track`)

Which keypoints: a policy folder's encoder (`--policy`, or FILE is a policy folder) when it makes keypoints; else
the DON's 3D keypoints of `--references` (`--don` and `--references`; found per frame, or with `--encoder
dckp-filter` or `dckp-gate` tracked over the episode); else ground-truth keypoints of `--references` (the reference
points moved with the objects' true poses); else, in a simulator file, the objects' true positions
(`object_pose`); in a recording without object poses, none. DON keypoints are coloured by confidence (red 0 to
green 1, as in the rollout videos), ground truth by camera or object.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dckp.config import option, temp_beside
from dckp.errors import DckpError

TIMELINE = "frame"
KEYPOINT_RADIUS = 0.008  # metres
EVAL_SEED_START = 1_000_000  # as dckp.evaluation.rollout.EVAL_SEED_START (not imported: it loads the simulator)


@dataclass
class ViewConfig:
    """What `dckp view` records (docs/view-export.md)."""

    episodes: list[str] = option([], "episodes to record, each under world/<episode>; none given: the first")
    don: str = option("", "a DON run folder: with --references, its 3D keypoints")
    references: str = option("", "a references file (`dckp keypoints`): DON keypoints with --don, ground-truth "
                                 "keypoints without")
    encoder: str = option("dckp-3d", "the DON keypoints that --don and --references give: per frame, or tracked "
                                     "over the episode", choices=("dckp-3d", "dckp-filter", "dckp-gate"))
    policy: str = option("", "a policy folder whose encoder makes the keypoints")
    seed: int = option(EVAL_SEED_START, "the rollout's seed, when FILE is a policy folder")
    max_steps: int = option(0, "most control steps of that rollout (0: the task's horizon)")
    point_stride: int = option(2, "every n-th pixel in each direction becomes a point of the cloud")
    chunk: int = option(32, "frames per batch of keypoint extraction")

    def __post_init__(self):
        for name in ("point_stride", "chunk"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("max_steps", "seed"):
            if getattr(self, name) < 0:
                raise DckpError(f"must be >= 0, got {getattr(self, name)}", field=name)
        if self.encoder not in ("dckp-3d", "dckp-filter", "dckp-gate"):
            raise DckpError(f"must be dckp-3d, dckp-filter or dckp-gate, got {self.encoder!r}", field="encoder")
        if self.don and not self.references:
            raise DckpError("--don needs --references (the keypoints to find)", field="references")


def has_display() -> bool:
    """Whether a window can open here (an X11 or Wayland display)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def default_out(path: str | os.PathLike, seed: int) -> Path:
    """Where `view` writes by default: beside a file as `<stem>.rrd`, or `<policy>/rollout_<seed>.rrd`."""
    path = Path(path)
    return path / f"rollout_{seed}.rrd" if path.is_dir() else path.with_suffix(".rrd")


def view(path: str | os.PathLike, cfg: ViewConfig, out: str | os.PathLike | None = None,
         spawn: bool | None = None, progress: bool = True, rollout: dict | None = None) -> Path:
    """Write the recording of `path` (a demos or views file, or a policy folder with `rollout`, its episode from
    `dckp.evaluation.rollout.record_rollout`) to `out` (default: `default_out`), atomically. Opens it in the rerun
    viewer when `spawn` (default: when a display exists). Returns the file's path."""
    import rerun as rr

    path = Path(path)
    if not path.exists():
        raise DckpError("file not found", path=str(path))
    if path.is_dir() and rollout is None:
        raise DckpError("a policy folder is viewed through one of its rollouts: run `dckp view` on it", path=str(path))
    out = Path(out) if out is not None else default_out(path, cfg.seed)
    episodes = [rollout] if rollout else _file_episodes(path, cfg)
    keypointer = _keypointer(cfg, path if rollout else None)

    rec = rr.new_recording("dckp", recording_id=f"dckp view {path.name}")
    tmp = temp_beside(out)
    try:
        rec.save(tmp)
        rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        for ep in episodes:
            _log_episode(rec, f"world/{ep['name']}", ep, keypointer, cfg, progress)
        rec.disconnect()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if spawn if spawn is not None else has_display():
        subprocess.Popen([sys.executable, "-m", "rerun", str(out)], start_new_session=True)
    return out


# --- reading -----------------------------------------------------------------------------------------------------

def _file_episodes(path: Path, cfg: ViewConfig) -> list[dict]:
    """Every requested episode of a dckp file, whole, as `{name, cameras: {cam: {rgb, depth, K, pose[, mask]}},
    objects (names), object_pose?, eef_pos?}`."""
    from dckp.data import Dataset

    with Dataset(path) as ds:
        names = [ds.pick_episode(e) for e in cfg.episodes] if cfg.episodes else [ds.pick_episode(None)]
        episodes = []
        for name in names:
            keys, cameras = ds.keys(name), {}
            for cam in ds.streams(name):
                n = ds.num_frames(name, cam)
                cameras[cam] = {k: ds.frames(name, cam, k, 0, n) for k in ("rgb", "depth", "K", "pose")}
                if f"{cam}_mask" in keys:
                    cameras[cam]["mask"] = ds.frames(name, cam, "mask", 0, n)
            ep = {"name": name, "cameras": cameras, "objects": list(ds.objects)}
            for key in ("object_pose", "eef_pos"):
                if key in keys:
                    ep[key] = ds.array(name, key)
            episodes.append(ep)
    return episodes


# --- keypoints ---------------------------------------------------------------------------------------------------

def _keypointer(cfg: ViewConfig, policy_dir: Path | None):
    """The encoder whose keypoints are drawn (see the module's docstring), or None for the objects' positions."""
    from dckp.encoders import build_encoder

    policy = cfg.policy or (str(policy_dir) if policy_dir is not None else "")
    if policy:
        from dckp.policy.folder import load_visuomotor_policy

        encoder = load_visuomotor_policy(policy).encoder
        return encoder if encoder.keypoints else None
    if not cfg.references:
        return None
    from dckp.keypoints.select import load_references

    refs, _ = load_references(cfg.references)
    spec = ({"name": cfg.encoder, "artefacts": {"don": cfg.don, "references": cfg.references}} if cfg.don else
            {"name": "gt-kp", "artefacts": {"references": cfg.references}})
    return lambda cameras, size: build_encoder(spec, [c for c in cameras if c in refs], size)


def episode_keypoints(ep: dict, keypointer, chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """World keypoints of an episode: `points (T, K, 3)` (NaN where a keypoint has no valid depth), `colours (T,
    K, 3)` uint8 and `labels (K,)`; None when there are none to draw. Keypoints of several cameras are
    concatenated in the encoder's camera order; only cameras with as many frames as the first are used."""
    import torch

    from dckp.encoders.keypoints import GroundTruthKeypoints
    from dckp.keypoints.extract import depth_at, keypoints_3d
    from dckp.viz.images import colour_scale, confidence_colour

    cams = ep["cameras"]
    T = len(next(iter(cams.values()))["rgb"])
    if keypointer is None:
        if "object_pose" not in ep:
            return None
        points = ep["object_pose"][:, :, :3, 3].astype(np.float32)
        colours = np.broadcast_to(np.stack([_palette(i) for i in range(points.shape[1])]), points.shape)
        names = ep.get("objects") or []
        labels = [names[i] if i < len(names) else f"object {i + 1}" for i in range(points.shape[1])]
        return points, colours.astype(np.uint8), np.array(labels)
    same = [c for c in cams if len(cams[c]["rgb"]) == T]
    encoder = keypointer if isinstance(keypointer, torch.nn.Module) else keypointer(
        same, next(iter(cams.values()))["rgb"].shape[1])
    missing = [c for c in encoder.cameras if c not in same]
    if missing:
        raise DckpError(f"the keypoints need camera(s) {missing}, which episode {ep['name']} lacks (has "
                        f"{sorted(cams)})", field="episodes")
    if not encoder.cameras:
        return None
    tracked = callable(getattr(encoder, "track", None))  # keeps state over the episode's consecutive frames
    encoder.reset()
    points, colours = {c: [] for c in encoder.cameras}, {c: [] for c in encoder.cameras}
    for s in range(0, T, chunk):
        frames = {f"{c}_{k}": torch.from_numpy(np.ascontiguousarray(cams[c][k][s:s + chunk]))
                  for c in encoder.cameras for k in ("rgb", "depth", "K", "pose")}
        if "object_pose" in ep:
            frames["object_pose"] = torch.from_numpy(np.ascontiguousarray(ep["object_pose"][s:s + chunk]))
        with torch.no_grad():
            found = (None if isinstance(encoder, GroundTruthKeypoints) else
                     encoder.track(frames) if tracked else encoder.image_keypoints(frames))
            for i, cam in enumerate(encoder.cameras):
                depth = frames[f"{cam}_depth"].float()
                if isinstance(encoder, GroundTruthKeypoints):  # the true point, seen or hidden; a colour per camera
                    world = encoder.points(frames, cam)[2].float()
                    colour = np.tile(_palette(i), (*world.shape[:2], 1))
                    peak = None
                elif tracked:  # dckp-filter, dckp-gate: the tracked world points
                    world, peak = found[cam]["world"].float(), found[cam]["confidence"].float()
                else:
                    uv, peak = (x.float() for x in found[cam])
                    world = keypoints_3d(uv, depth, frames[f"{cam}_K"].float(), frames[f"{cam}_pose"].float(),
                                         frame="world")
                    world[depth_at(uv, depth) <= 0] = float("nan")  # no depth near the keypoint: not drawn
                if peak is not None:
                    conf = colour_scale(peak.numpy(), depth.shape[-1] * depth.shape[-2])
                    colour = np.stack([[confidence_colour(x) for x in row] for row in conf])
                points[cam].append(world.numpy())
                colours[cam].append(colour)
    labels = [f"{cam} {k}" for cam in encoder.cameras for k in range(points[cam][0].shape[1])]
    return (np.concatenate([np.concatenate(points[c]) for c in encoder.cameras], 1),
            np.concatenate([np.concatenate(colours[c]) for c in encoder.cameras], 1).astype(np.uint8),
            np.array(labels))


# --- logging -----------------------------------------------------------------------------------------------------

def _palette(i: int) -> np.ndarray:
    import matplotlib

    return (np.array(matplotlib.colormaps["tab10"](i % 10)[:3]) * 255).astype(np.uint8)


def _log_episode(rec, root: str, ep: dict, keypointer, cfg: ViewConfig, progress: bool) -> None:
    import rerun as rr
    import torch
    from tqdm import tqdm

    from dckp.geometry.camera import backproject

    s = cfg.point_stride
    ids = max([int(c["mask"].max()) for c in ep["cameras"].values() if "mask" in c], default=0)
    if ids:  # fused masks number the objects they found (unlabelled); an arm-only episode's 1 is the arm
        name = "arm" if ep["name"].startswith("arm_") else "object {}"
        rec.log(root, rr.AnnotationContext([(0, "background", (0, 0, 0, 0))] + [
            (i, name.format(i), tuple(int(c) for c in _palette(i - 1))) for i in range(1, ids + 1)]), static=True)
    total = sum(len(c["rgb"]) for c in ep["cameras"].values())
    bar = tqdm(total=total, desc=f"view {ep['name']}", unit="frame", disable=not progress)
    for cam, d in ep["cameras"].items():
        entity = f"{root}/{cam}"
        H, W = d["rgb"].shape[1:3]
        for t in range(len(d["rgb"])):
            rec.set_time_sequence(TIMELINE, t)
            pose = d["pose"][t].astype(np.float32)
            rec.log(entity, rr.Transform3D(translation=pose[:3, 3], mat3x3=pose[:3, :3]))
            rec.log(f"{entity}/image", rr.Pinhole(image_from_camera=d["K"][t], resolution=[W, H],
                                                  camera_xyz=rr.ViewCoordinates.RDF, image_plane_distance=0.05))
            rec.log(f"{entity}/image/rgb", rr.Image(d["rgb"][t]))
            depth = d["depth"][t][::s, ::s]
            K = d["K"][t].astype(np.float64) * [[1 / s], [1 / s], [1]]  # the strided image's intrinsics
            points = backproject(torch.from_numpy(depth.astype(np.float64)), torch.from_numpy(K)).numpy()
            valid = depth > 0
            rec.log(f"{entity}/points", rr.Points3D(points[valid], colors=d["rgb"][t][::s, ::s][valid],
                                                    radii=rr.Radius.ui_points(1.5)))
            if "mask" in d:
                rec.log(f"{entity}/image/mask", rr.SegmentationImage(d["mask"][t]))
                on = valid & (d["mask"][t][::s, ::s] > 0)
                rec.log(f"{entity}/objects", rr.Points3D(points[on], class_ids=d["mask"][t][::s, ::s][on],
                                                         radii=rr.Radius.ui_points(2.5)))
            bar.update()
    bar.close()
    if "eef_pos" in ep:
        eef = ep["eef_pos"].astype(np.float32)
        rec.log(f"{root}/gripper/track", rr.LineStrips3D([eef], colors=[(200, 200, 200)]), static=True)
        for t, p in enumerate(eef):
            rec.set_time_sequence(TIMELINE, t)
            rec.log(f"{root}/gripper", rr.Points3D([p], radii=KEYPOINT_RADIUS, colors=[(255, 255, 255)]))
    kp = episode_keypoints(ep, keypointer, cfg.chunk)
    if kp is None:
        return
    points, colours, labels = kp
    tracks = [points[:, k][np.isfinite(points[:, k]).all(-1)] for k in range(points.shape[1])]
    rec.log(f"{root}/keypoints/tracks", rr.LineStrips3D(tracks, colors=[_palette(k) for k in range(len(tracks))],
                                                         labels=list(labels)), static=True)
    for t in range(len(points)):
        rec.set_time_sequence(TIMELINE, t)
        ok = np.isfinite(points[t]).all(-1)
        rec.log(f"{root}/keypoints", rr.Points3D(points[t][ok], colors=colours[t][ok], radii=KEYPOINT_RADIUS,
                                                 labels=list(labels[ok])))


def open_hint(out: Path) -> str:
    """How to open a recording written without a display."""
    viewer = shutil.which("rerun") or f"{sys.executable} -m rerun"
    return f"no display: open it with `{viewer} {out}` (rerun-sdk 0.22.1 on any machine with a screen)"
