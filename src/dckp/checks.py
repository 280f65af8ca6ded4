"""Checks of camera frames given to the library API (`KeypointTracker.track`, `VisuomotorPolicy.act`, the import
readers), as the CLI checks its files: dtype, units (depth in metres), finite values, intrinsics with positive focal
lengths and rigid poses, each a pass over the array (microseconds for K and the pose, well under a millisecond for
a 640x480 depth image). A bad frame raises `DckpError` with one line naming it; depth that is partly missing (NaN,
inf or 0, as real sensors give it) is allowed, its invalid pixels set to 0 (docs/conventions.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dckp.errors import DckpError

NEAREST_MAX_M = 20.0  # a frame whose nearest valid depth is farther than this is not in metres (millimetres?)
RIGID_TOL = 1e-3


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_rgb(rgb, where: str) -> np.ndarray:
    """`(..., H, W, 3)` uint8."""
    rgb = _array(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise DckpError(f"expected rgb uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}", field=where)
    return rgb


def check_depth(depth, where: str, allow_empty: bool = False) -> np.ndarray:
    """`(..., H, W)` float metres, its invalid pixels (NaN, inf, 0) set to 0; DckpError for integer depth (a
    sensor's millimetres), negative depth, a frame in other units than metres, or (unless `allow_empty`) a frame
    without valid depth."""
    depth = _array(depth)
    if depth.dtype.kind in "iu":
        raise DckpError(f"depth is {depth.dtype}: give float metres (a sensor's {depth.dtype} millimetres: depth / "
                        "1000)", field=where)
    if depth.dtype.kind != "f" or depth.ndim < 2:
        raise DckpError(f"expected depth float metres (H, W), got {depth.dtype} {depth.shape}", field=where)
    finite = np.isfinite(depth)
    if (depth < 0).any():
        raise DckpError(f"negative depth ({np.nanmin(depth):.3g} m): give metres along the optical axis, 0 where "
                        "invalid", field=where)
    valid = finite & (depth > 0)
    nearest = np.where(valid, depth, np.inf).min(axis=(-2, -1))
    if not allow_empty and not np.isfinite(nearest).all():
        raise DckpError("no valid depth in the frame (every pixel NaN, inf or 0)", field=where)
    nearest = nearest[np.isfinite(nearest)]
    if nearest.size and nearest.max() > NEAREST_MAX_M:
        raise DckpError(f"the nearest depth is {nearest.max():.4g} m: give metres (millimetres: depth / 1000)",
                        field=where)
    return depth if finite.all() else np.where(finite, depth, 0).astype(depth.dtype)


def check_intrinsics(K, where: str) -> np.ndarray:
    """`(..., 3, 3)` finite, positive focal lengths, last row 0 0 1."""
    K = _array(K)
    if K.shape[-2:] != (3, 3) or K.dtype.kind not in "fiu":
        raise DckpError(f"expected K (3, 3) numbers, got {K.dtype} {K.shape}", field=where)
    if not np.isfinite(K).all():
        raise DckpError("K contains NaN or inf", field=where)
    if (K[..., 0, 0] <= 0).any() or (K[..., 1, 1] <= 0).any() or np.abs(K[..., 2, :] - [0, 0, 1]).max() > 1e-6:
        raise DckpError(f"not camera intrinsics (fx and fy > 0, last row 0 0 1): {K.reshape(-1, 3, 3)[0].tolist()}",
                        field=where)
    return K


def check_pose(pose, where: str) -> np.ndarray:
    """`(..., 4, 4)` finite rigid camera-to-world transform: a rotation, a translation, last row 0 0 0 1."""
    pose = _array(pose)
    if pose.shape[-2:] != (4, 4) or pose.dtype.kind not in "fiu":
        raise DckpError(f"expected pose (4, 4) numbers, got {pose.dtype} {pose.shape}", field=where)
    if not np.isfinite(pose).all():
        raise DckpError("pose contains NaN or inf", field=where)
    R = pose[..., :3, :3].astype(np.float64)
    error = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max()
    det = np.linalg.det(R).min()
    last = np.abs(pose[..., 3, :] - [0, 0, 0, 1]).max()
    if error > RIGID_TOL or det < 0 or last > RIGID_TOL:
        raise DckpError(f"not a rigid camera-to-world transform (|R^T R - I| = {error:.3g}, det R = {det:.3g}, last "
                        f"row off by {last:.3g})", field=where)
    return pose


def check_frame(rgb, depth, K, pose, where: str, allow_empty_depth: bool = False) -> tuple:
    """`(rgb, depth, K, pose)` of one camera, checked (`pose` may be None), with invalid depth set to 0."""
    return (check_rgb(rgb, f"{where}_rgb"), check_depth(depth, f"{where}_depth", allow_empty_depth),
            check_intrinsics(K, f"{where}_K"), None if pose is None else check_pose(pose, f"{where}_pose"))


def checked_observation(observation: Mapping, cameras: Sequence[str]) -> dict:
    """A policy's observation with every camera's frame checked (`check_frame`), its invalid depth set to 0;
    DckpError naming the key that is missing or bad. A frame without valid depth is allowed: in closed loop a wrist
    camera meets them against an object, as its demonstrations did."""
    missing = [f"{c}_{k}" for c in cameras for k in ("rgb", "depth", "K", "pose") if f"{c}_{k}" not in observation]
    if missing:
        raise DckpError(f"missing from the observation (have {sorted(observation)})", field=", ".join(missing))
    checked = dict(observation)
    for cam in cameras:
        keys = [f"{cam}_{k}" for k in ("rgb", "depth", "K", "pose")]
        checked.update(zip(keys, check_frame(*(observation[k] for k in keys), where=cam, allow_empty_depth=True),
                           strict=True))
    return checked
