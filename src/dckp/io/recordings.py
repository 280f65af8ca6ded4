"""`dckp import`: RGB-D recordings (TUM RGB-D, or a plain folder; docs/own-data.md) into a views file that `dckp
fuse`, `dckp pretrain` and `dckp keypoints` read as they read the simulator's.

Each sequence (a moving camera filming a static scene) becomes one episode whose frames form the `free` stream,
the stream `dckp fuse` fuses: `scene_N`, or `arm_N` for arm-only sequences. Poses are camera-to-world with OpenCV
axes (docs/conventions.md); poses given with OpenGL axes are turned. The file stores the workspace box (given, or
estimated: the table plane by RANSAC and the extent of the points above it) and the number of objects, so no
stage after it needs the simulator. Bad input stops with one line naming the file and the frame, before any image
is loaded where it can be found earlier (in the listings, the poses and the image headers).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation
from sklearn.cluster import DBSCAN
from tqdm import tqdm

from dckp.checks import check_pose
from dckp.data import DatasetWriter
from dckp.errors import DckpError
from dckp.io.config import ImportConfig

FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL camera axes (y up, z backward) <-> OpenCV (y down, z forward)
DEPTH_RANGE = (0.1, 5.0)  # metres: a sequence's median depth outside it means a wrong depth scale
FRAME_DEPTH_RANGE = (0.005, 20.0)  # metres: one frame's median depth outside it is a bad frame (a camera 1.3 cm
# from the arm is a good one)
SCALE_FRAMES = 5  # frames, evenly spaced, whose depth gives the sequence's median
COLOUR_SUFFIXES = (".png", ".jpg", ".jpeg")
VOXEL = 0.005  # metres: the grid the workspace estimate thins the points above the table to


@dataclass
class Sequence:
    """One recording, checked: `rgb`, `depth` file paths per frame, `K (3, 3)` for `size` (W, H; None when given
    by flag), camera-to-world `poses (T, 4, 4)` (from `pose_file`) and `depth_scale` (units per metre)."""

    path: Path
    rgb: list[Path]
    depth: list[Path]
    K: np.ndarray
    size: tuple[int, int] | None
    poses: np.ndarray
    pose_file: Path
    depth_scale: float


def _err(message: str, path, frame: int | None = None, line: int | None = None) -> DckpError:
    where = f"frame {frame}" if frame is not None else f"line {line}" if line is not None else None
    return DckpError(message, path=str(path), field=where)


# --- intrinsics and poses ---

def read_intrinsics(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """`K (3, 3)` and `(width, height)` from a JSON file `{fx, fy, cx, cy, width, height}`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _err("file not found: give the camera intrinsics (docs/own-data.md), or --intrinsics fx fy cx cy",
                   path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _err(f"invalid JSON ({e})".replace("\n", " "), path) from None
    keys = ("fx", "fy", "cx", "cy", "width", "height")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), int | float) or isinstance(data.get(k), bool)
                                         or not np.isfinite(data[k]) for k in keys):
        raise _err(f"expected numbers {', '.join(keys)}", path)
    if min(data["fx"], data["fy"]) <= 0 or min(data["width"], data["height"]) < 1:
        raise _err("fx, fy, width and height must be > 0", path)
    return intrinsics_matrix(data["fx"], data["fy"], data["cx"], data["cy"]), (int(data["width"]), int(data["height"]))


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)


def check_rigid(pose: np.ndarray, path, frame: int) -> None:
    """DckpError naming the file and frame unless `pose (4, 4)` is a finite rigid transform (`check_pose`)."""
    try:
        check_pose(pose, "pose")
    except DckpError as e:
        raise _err(e.message, path, frame) from None


def read_pose_matrices(path: Path) -> np.ndarray:
    """`(N, 4, 4)` from `poses.npy`, or from `poses.txt`: 16 numbers per matrix, row by row (one matrix per line,
    or four lines of four), `#` comments."""
    try:
        if path.suffix == ".npy":
            poses = np.load(path, allow_pickle=False)
        else:
            poses = _pose_lines(path)
    except FileNotFoundError:
        raise _err("file not found", path) from None
    except ValueError as e:
        raise _err(f"not an array of numbers ({e})".replace("\n", " "), path) from None
    poses = np.asarray(poses, dtype=np.float64)
    if path.suffix == ".npy" and poses.ndim == 3 and poses.shape[1:] == (3, 4):
        raise _err(f"poses of shape {poses.shape}: give (T, 4, 4) matrices (append the row 0 0 0 1 to each 3x4)",
                   path)
    if path.suffix == ".npy" and poses.ndim >= 2 and poses.shape[-2:] != (4, 4) and poses.shape[-1] != 16:
        raise _err(f"poses of shape {poses.shape}: give (T, 4, 4) camera-to-world matrices", path)
    if poses.size % 16 or poses.size == 0:
        raise _err(f"{poses.size} numbers, not a whole number of 4x4 matrices (16 numbers each)", path)
    return poses.reshape(-1, 4, 4)


def _pose_lines(path: Path) -> np.ndarray:
    """The numbers of a `poses.txt` (`#` comments), each line 16 numbers or 4; DckpError naming a line that is
    neither, or holds something else than numbers."""
    rows = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) not in (4, 16):
            raise _err(f"{len(fields)} numbers: give 16 per line (a 4x4 matrix row by row) or 4 (one row)", path,
                       line=number)
        try:
            rows.append([float(x) for x in fields])
        except ValueError:
            raise _err(f"not numbers: {text.strip()[:60]!r}", path, line=number) from None
    if any(len(r) != len(rows[0]) for r in rows):
        raise _err("lines of 16 numbers mixed with lines of 4: give one matrix per line, or four lines of four", path)
    return np.array(rows, dtype=np.float64)


# --- TUM RGB-D ---

def read_tum_list(path: Path, columns: int) -> tuple[np.ndarray, list[list[str]], list[int]]:
    """Timestamps, the other columns and the line numbers of a TUM list file (`rgb.txt`, `depth.txt`,
    `groundtruth.txt`); `#` lines are comments. Timestamps must increase."""
    if not path.is_file():
        raise _err("file not found", path)
    stamps, rows, lines = [], [], []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != columns + 1:
            raise _err(f"expected a timestamp and {columns} values, got {len(fields)} fields", path, line=number)
        try:
            t = float(fields[0])
        except ValueError:
            raise _err(f"timestamp {fields[0]!r} is not a number", path, line=number) from None
        if stamps and t <= stamps[-1]:
            raise _err(f"timestamp {fields[0]} is not after the previous one ({stamps[-1]:.6f}): timestamps must "
                       "increase", path, line=number)
        stamps.append(t)
        rows.append(fields[1:])
        lines.append(number)
    if not stamps:
        raise _err("no entries", path)
    return np.array(stamps), rows, lines


def associate(a: np.ndarray, b: np.ndarray, max_difference: float) -> list[tuple[int, int]]:
    """Index pairs `(i, j)` matching timestamps `a[i]` and `b[j]`, as TUM's associate.py: every pair closer than
    `max_difference` is a candidate, the closest are taken first, each entry at most once; sorted by `i`."""
    candidates = []
    for i, t in enumerate(a):
        lo, hi = np.searchsorted(b, [t - max_difference, t + max_difference])
        candidates += [(abs(t - b[j]), i, j) for j in range(lo, hi) if abs(t - b[j]) < max_difference]
    used_a, used_b, pairs = set(), set(), []
    for _, i, j in sorted(candidates):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def tum_pose(values) -> np.ndarray:
    """4x4 camera-to-world from TUM's `tx ty tz qx qy qz qw` (unit quaternion, scalar last)."""
    t, q = np.asarray(values[:3], float), np.asarray(values[3:], float)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
    pose[:3, 3] = t
    return pose


def read_tum(root: Path, cfg: ImportConfig) -> Sequence:
    """A TUM RGB-D sequence: colour, depth and ground-truth pose associated by nearest timestamp. Colour frames
    without a depth image or a pose within `max_time_diff` are dropped, as associate.py drops them."""
    rgb_t, rgb, _ = read_tum_list(root / "rgb.txt", 1)
    depth_t, depth, _ = read_tum_list(root / "depth.txt", 1)
    pose_t, poses, pose_lines = read_tum_list(root / "groundtruth.txt", 7)
    with_depth = associate(rgb_t, depth_t, cfg.max_time_diff)
    with_pose = dict(associate(rgb_t[[i for i, _ in with_depth]], pose_t, cfg.max_time_diff))
    frames = [(i, j, with_pose[k]) for k, (i, j) in enumerate(with_depth) if k in with_pose]
    if not frames:
        raise _err(f"no colour frame has a depth image and a pose within {cfg.max_time_diff} s (see "
                   "--max-time-diff)", root / "rgb.txt")
    matrices = []
    for _, _, p in frames:
        try:
            q = np.array(poses[p], dtype=float)
        except ValueError:
            raise _err(f"pose {poses[p]} is not numbers", root / "groundtruth.txt", line=pose_lines[p]) from None
        norm = np.linalg.norm(q[3:])
        if not np.isfinite(q).all() or abs(norm - 1) > 0.01:
            raise _err(f"quaternion qx qy qz qw {q[3:].tolist()} has norm {norm:.3g}, not 1: not a rotation",
                       root / "groundtruth.txt", line=pose_lines[p])
        matrices.append(tum_pose(q))
    K, size = _intrinsics(root, cfg)
    return Sequence(root, [root / rgb[i][0] for i, _, _ in frames], [root / depth[j][0] for _, j, _ in frames],
                    K, size, np.stack(matrices), root / "groundtruth.txt", cfg.depth_scale or 5000.0)


# --- plain folder ---

def _listing(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise _err(f"folder not found (expected {folder.name}/ with one image per frame)", folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise _err(f"no {' or '.join(suffixes)} files", folder)
    return files


def read_folder(root: Path, cfg: ImportConfig) -> Sequence:
    """A plain folder: `rgb/` colour images, `depth/` 16-bit PNG (millimetres) or float `.npy` (metres), paired
    by sorted name; `intrinsics.json`; `poses.txt` or `poses.npy`."""
    rgb = _listing(root / "rgb", COLOUR_SUFFIXES)
    depth = _listing(root / "depth", (".png", ".npy"))
    if len(depth) != len(rgb):
        few, many = ("depth", "colour") if len(depth) < len(rgb) else ("colour", "depth")
        shorter, longer = sorted((rgb, depth), key=len)
        raise _err(f"{len(depth)} depth images for {len(rgb)} colour images: frame {len(shorter)} "
                   f"({longer[len(shorter)].name}) has no {few} image beside its {many} one", root, len(shorter))
    for i, (c, d) in enumerate(zip(rgb, depth, strict=True)):
        if c.stem != d.stem:
            raise _err(f"colour {c.name} is paired with depth {d.name} (sorted by name): name them alike",
                       root, i)
    pose_file = next((root / n for n in ("poses.npy", "poses.txt") if (root / n).is_file()), root / "poses.txt")
    poses = read_pose_matrices(pose_file)
    if len(poses) != len(rgb):
        if len(poses) < len(rgb):
            raise _err(f"{len(poses)} poses for {len(rgb)} frames: frame {len(poses)} ({rgb[len(poses)].name}) "
                       "has no pose", pose_file, len(poses))
        raise _err(f"{len(poses)} poses for {len(rgb)} frames: pose {len(rgb)} has no frame (one 4x4 "
                   "camera-to-world per frame)", pose_file, len(rgb))
    K, size = _intrinsics(root, cfg)
    scale = cfg.depth_scale or (1.0 if depth[0].suffix == ".npy" else 1000.0)
    return Sequence(root, rgb, depth, K, size, poses, pose_file, scale)


def _intrinsics(root: Path, cfg: ImportConfig) -> tuple[np.ndarray, tuple[int, int] | None]:
    if cfg.intrinsics:
        return intrinsics_matrix(*cfg.intrinsics), None
    return read_intrinsics(Path(cfg.intrinsics_file) if cfg.intrinsics_file else root / "intrinsics.json")


def read_sequence(root: str | Path, cfg: ImportConfig) -> Sequence:
    """A recording's frames and camera, checked (listings, poses, image sizes, depth scale, every frame's depth),
    with every `every`-th frame kept (and bad frames left out with `skip_bad_frames`) and OpenCV pose axes."""
    root = Path(root)
    if not root.is_dir():
        raise _err("not a folder (a sequence is a folder: docs/own-data.md)", root)
    layout = cfg.layout if cfg.layout != "auto" else "tum" if (root / "rgb.txt").is_file() else "folder"
    seq = read_tum(root, cfg) if layout == "tum" else read_folder(root, cfg)
    for i, pose in enumerate(seq.poses):
        check_rigid(pose, seq.pose_file, i)
    if cfg.pose_axes == "opengl":
        seq.poses = seq.poses @ FLIP_YZ
    keep = slice(None, None, cfg.every)
    seq = dataclasses.replace(seq, rgb=seq.rgb[keep], depth=seq.depth[keep], poses=seq.poses[keep])
    return check_frames(seq, cfg.skip_bad_frames)


# --- frames ---

def _read_image(path: Path, frame: int) -> np.ndarray:
    if not path.is_file():
        raise _err("file not found", path, frame)
    try:
        return np.load(path, allow_pickle=False) if path.suffix == ".npy" else iio.imread(path)
    except Exception as e:  # noqa: BLE001 - the image readers raise many kinds on bad files
        raise _err(f"unreadable image ({type(e).__name__})", path, frame) from None


def resized_size(size: tuple[int, int], height: int) -> tuple[int, int]:
    """(W, H) after resizing to `height` (0: unchanged), the width in proportion."""
    W, H = size
    return (W, H) if height in (0, H) else (max(1, round(W * height / H)), height)


def scale_intrinsics(K: np.ndarray, size: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """K for an image resized from `size` to `new` (W, H), pixel centres at integers: `u' = (u + 0.5) s - 0.5`."""
    sx, sy = new[0] / size[0], new[1] / size[1]
    K = K.copy()
    K[0, 0], K[1, 1] = K[0, 0] * sx, K[1, 1] * sy
    K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return K


def _image_size(path: Path, frame: int) -> tuple[int, int]:
    """(W, H) of an image from its header (a .npy array's shape)."""
    if not path.is_file():
        raise _err("file not found", path, frame)
    try:
        if path.suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return (shape[1], shape[0]) if len(shape) == 2 else shape
        with Image.open(path) as image:
            return image.size
    except Exception as e:  # noqa: BLE001 - the image readers raise many kinds on bad files
        raise _err(f"unreadable image ({type(e).__name__})", path, frame) from None


def check_frames(seq: Sequence, skip_bad: bool = False) -> Sequence:
    """Every frame's colour and depth size against frame 0's and the intrinsics' (from the file headers), the
    sequence's depth scale, and every frame's depth (`bad_depth`): the usual mistakes, found before the images are
    loaded. Returns the sequence, without its bad frames (each named in a warning) where `skip_bad`."""
    size = _image_size(seq.rgb[0], 0)
    if seq.size is not None and tuple(seq.size) != size:
        raise _err(f"the intrinsics are for {seq.size[0]}x{seq.size[1]} images, but frame 0 is {size[0]}x{size[1]}",
                   seq.rgb[0], 0)
    for i, (c, d) in enumerate(zip(seq.rgb, seq.depth, strict=True)):
        shape = _image_size(c, i)
        if shape != size:
            raise _err(f"image is {shape[0]}x{shape[1]}, frame 0 is {size[0]}x{size[1]}: mixed image sizes", c, i)
        shape = _image_size(d, i)
        if shape != size:
            raise _err(f"depth is {shape[0]}x{shape[1]}, its colour image {size[0]}x{size[1]}", d, i)
    check_depth_scale(seq)
    keep = []
    for i, d in enumerate(seq.depth):
        reason = bad_depth(read_depth(seq, i))
        if reason and not skip_bad:
            raise _err(f"{reason}; leave such frames out with --skip-bad-frames", d, i)
        if reason:
            print(f"warning: {d}:frame {i}: {reason}; left out", file=sys.stderr)
        else:
            keep.append(i)
    if not keep:
        raise _err("every frame was left out (--skip-bad-frames)", seq.path)
    return dataclasses.replace(seq, rgb=[seq.rgb[i] for i in keep], depth=[seq.depth[i] for i in keep],
                               poses=seq.poses[keep])


def check_depth_scale(seq: Sequence) -> None:
    """DckpError unless the median depth of `SCALE_FRAMES` evenly spaced frames is within DEPTH_RANGE: the depth
    scale is right (one frame may be far off: a camera close to the arm)."""
    frames = np.unique(np.linspace(0, len(seq.depth) - 1, SCALE_FRAMES).round().astype(int))
    valid = [z[z > 0] for z in (read_depth(seq, i) for i in frames)]
    if not any(len(v) for v in valid):
        raise _err(f"depth is 0 (invalid) everywhere in frames {frames.tolist()}", seq.depth[0].parent)
    median = float(np.median(np.concatenate(valid)))
    if not DEPTH_RANGE[0] <= median <= DEPTH_RANGE[1]:
        raise _err(f"median depth {median:.3g} m (frames {frames.tolist()}) is outside {DEPTH_RANGE[0]}-"
                   f"{DEPTH_RANGE[1]} m at depth scale {seq.depth_scale:g} units per metre: is the depth in other "
                   "units? give --depth-scale (units per metre)", seq.depth[0].parent)


def read_depth(seq: Sequence, i: int) -> np.ndarray:
    """Frame `i`'s depth in metres (0 invalid)."""
    d = seq.depth[i]
    z = _read_image(d, i)
    if z.ndim != 2 or (d.suffix == ".png" and z.dtype != np.uint16):
        raise _err(f"expected a 16-bit depth PNG or a 2D .npy, got {z.dtype} {z.shape}", d, i)
    z = z.astype(np.float32) / np.float32(seq.depth_scale)
    z[~np.isfinite(z) | (z < 0)] = 0
    return z


def bad_depth(z: np.ndarray) -> str | None:
    """Why a frame's depth (metres, 0 invalid) is unusable, or None: no valid pixel, or a median outside
    FRAME_DEPTH_RANGE."""
    if not (z > 0).any():
        return "depth is 0 (invalid) everywhere"
    median = float(np.median(z[z > 0]))
    lo, hi = FRAME_DEPTH_RANGE
    return None if lo <= median <= hi else f"median depth {median:.3g} m is outside {lo}-{hi} m"


def load_frames(seq: Sequence, height: int, progress: bool = True) -> dict[str, np.ndarray]:
    """The `free_*` arrays of one episode (checked by `check_frames`): rgb (T,H,W,3) uint8, depth (T,H,W) float32
    metres, K, pose; resized to `height` (colour bilinear, depth nearest, K scaled)."""
    rgb, depth = [], []
    for i, c in enumerate(tqdm(seq.rgb, desc=f"import {seq.path.name}", disable=not progress, leave=False)):
        image = _read_image(c, i)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise _err(f"expected an 8-bit colour image, got {image.dtype} {image.shape}", c, i)
        image, z = image[..., :3], read_depth(seq, i)
        size = image.shape[1::-1]
        new = resized_size(size, height)
        if new != size:
            image = np.asarray(Image.fromarray(image).resize(new, Image.Resampling.BILINEAR))
            z = np.asarray(Image.fromarray(z).resize(new, Image.Resampling.NEAREST))  # no depth mixed across edges
        rgb.append(image)
        depth.append(z)
    K = scale_intrinsics(seq.K, size, resized_size(size, height))
    return {"free_rgb": np.stack(rgb), "free_depth": np.stack(depth),
            "free_K": np.repeat(K[None], len(rgb), 0).astype(np.float32), "free_pose": seq.poses.astype(np.float32)}


# --- workspace box ---

def look_centre(poses: np.ndarray) -> np.ndarray | None:
    """The point closest (least squares) to every camera's optical axis: where the cameras look; None when the
    axes are (nearly) parallel."""
    dirs, centres = poses[:, :3, 2], poses[:, :3, 3]
    P = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]
    A, b = P.sum(0), np.einsum("nij,nj->i", P, centres)
    if np.linalg.cond(A) > 1e6:
        return None
    return np.linalg.solve(A, b)


def estimate_workspace(episodes: list[dict[str, np.ndarray]], cfg: ImportConfig, path: str,
                       frames: int = 20) -> list[list[float]]:
    """The world box holding the table top and the objects. The points of up to `frames` frames per scene (rows
    and columns thinned to about 160 per image width) within `scene_radius` of where the cameras look; the table
    plane found by RANSAC among near-horizontal planes (world z up); the extent of the points at most
    `max_object_height` above it and over it, in clusters that touch the table (objects resting on it, not an
    arm above it), plus `workspace_margin`, and down to the margin below the table. Where too few points are near
    where the cameras look (axes nearly parallel, as a wrist camera's), near the points' median instead."""
    from dckp.geometry.config import MASK_PRESETS
    from dckp.geometry.masks import fit_table

    points = []
    for obs in episodes:
        poses = obs["free_pose"].astype(np.float64)
        stride = max(1, obs["free_depth"].shape[2] // 160)
        for t in np.linspace(0, len(poses) - 1, min(frames, len(poses))).round().astype(int):
            z = obs["free_depth"][t, ::stride, ::stride].astype(np.float64)
            v, u = np.nonzero(z > 0)
            K = obs["free_K"][t]
            cam = np.stack([(u * stride - K[0, 2]) / K[0, 0], (v * stride - K[1, 2]) / K[1, 1], np.ones(len(u))],
                           -1) * z[v, u, None]
            points.append(cam @ poses[t, :3, :3].T + poses[t, :3, 3])
    p = np.concatenate(points)
    looked_at = look_centre(np.concatenate([obs["free_pose"].astype(np.float64) for obs in episodes]))
    for centre in [c for c in (looked_at, np.median(p, 0)) if c is not None]:  # cameras that all look one way (a
        near = p[np.linalg.norm(p - centre, axis=1) < cfg.scene_radius]  # wrist camera): the points' median
        if len(near) >= 100:
            break
    p = near
    if len(p) < 100:
        raise DckpError(f"too few points ({len(p)}) within {cfg.scene_radius} m of where the cameras look to estimate "
                        "the workspace box: give --workspace-min and --workspace-max, or a larger --scene-radius",
                        path=path)
    mask_cfg = dataclasses.replace(MASK_PRESETS["cpu"], ransac_iters=500, ransac_threshold=0.01)
    try:
        n, c = fit_table(p, mask_cfg)
    except DckpError:
        raise DckpError("no near-horizontal table plane found to estimate the workspace box (world z must point up: "
                        "docs/own-data.md): give --workspace-min and --workspace-max", path=path) from None
    height = p @ n - c
    low = 2 * mask_cfg.ransac_threshold
    table = p[np.abs(height) < mask_cfg.ransac_threshold]
    t_lo, t_hi = np.percentile(table[:, :2], [1, 99], axis=0)  # over the table, not beside it (a robot's mount)
    above = p[(height > low) & (height < cfg.max_object_height) & (p[:, :2] >= t_lo).all(1) & (p[:, :2] <= t_hi).all(1)]
    above = np.unique(np.round(above / VOXEL), axis=0) * VOXEL  # one point per 5 mm voxel
    clusters = DBSCAN(eps=3 * VOXEL, min_samples=4).fit_predict(above) if len(above) else above[:, 0]
    resting = [k for k in np.unique(clusters[clusters >= 0])  # clusters that touch the table: objects, not the arm
               if (clusters == k).sum() >= 10 and (above[clusters == k] @ n - c).min() < low + 2 * VOXEL]
    above = above[np.isin(clusters, resting)]
    if len(above) < 10:
        raise DckpError("no objects found resting on the table to estimate the workspace box: give --workspace-min "
                        "and --workspace-max", path=path)
    m = cfg.workspace_margin
    lo_xy, hi_xy = np.percentile(above[:, :2], 0.5, axis=0) - m, np.percentile(above[:, :2], 99.5, axis=0) + m
    corners = np.array([[x, y] for x in (lo_xy[0], hi_xy[0]) for y in (lo_xy[1], hi_xy[1])])
    table_z = (c - corners @ n[:2]) / n[2]  # the plane's height under the box's corners
    lo = [*lo_xy.tolist(), float(table_z.min()) - m]
    hi = [*hi_xy.tolist(), float(np.percentile(above[:, 2], 99.5)) + m]
    return [lo, hi]


# --- the whole import ---

def import_recordings(sequences: list[str], arm_only: list[str], cfg: ImportConfig, out: str,
                      progress: bool = True) -> dict:
    """Write sequences (scenes) and arm-only sequences into the views file `out`. Returns a summary."""
    if not sequences:
        raise DckpError("give at least one sequence of a scene (arm-only sequences alone hold no objects)",
                        field="sequences")
    seqs = [read_sequence(s, cfg) for s in [*sequences, *arm_only]]  # every sequence checked before any image
    sizes = [resized_size(_image_size(seq.rgb[0], 0), cfg.height) for seq in seqs]
    for seq, size in zip(seqs, sizes, strict=True):
        if size != sizes[0]:
            raise DckpError(f"{size[0]}x{size[1]} images, {seqs[0].path} has {sizes[0][0]}x{sizes[0][1]}: the "
                            "sequences of one file need one image size (resize them alike with --height)",
                            path=str(seq.path))
    names = [f"scene_{i}" for i in range(len(sequences))] + [f"arm_{i}" for i in range(len(arm_only))]
    episodes = {}
    for name, seq in tqdm(list(zip(names, seqs, strict=True)), desc="import", disable=not progress):
        episodes[name] = load_frames(seq, cfg.height, progress)
    if cfg.workspace_min:
        workspace, estimated = [list(cfg.workspace_min), list(cfg.workspace_max)], False
    else:
        workspace = estimate_workspace([episodes[n] for n in names if n.startswith("scene_")], cfg, sequences[0])
        estimated = True
    config = {"import": dataclasses.asdict(cfg), "sequences": [str(s) for s in sequences],
              "arm_only": [str(s) for s in arm_only]}
    with DatasetWriter(out, "views", cfg.task, list(cfg.objects), config, workspace=workspace) as writer:
        for (name, obs), seq in zip(episodes.items(), seqs, strict=True):
            writer.add_episode(name, obs, source=str(seq.path), arm_only=name.startswith("arm_"))
    return {"out": str(out), "episodes": {n: len(ep["free_rgb"]) for n, ep in episodes.items()},
            "image_size": list(next(iter(episodes.values()))["free_rgb"].shape[2:0:-1]),
            "workspace": workspace, "workspace_estimated": estimated}
