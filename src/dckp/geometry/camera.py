"""Pinhole camera geometry in torch (docs/conventions.md).

OpenCV camera frame (x right, y down, z forward); `K` is `[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`; a pose is the
4x4 camera-to-world transform; depth is planar z in metres with 0 = invalid; the centre of pixel `(u, v)` is at
integer `(u, v)`. Every function broadcasts over leading batch dimensions and keeps the inputs' device and dtype.
"""

from __future__ import annotations

import torch

from dckp.errors import DckpError


def pixel_grid(H: int, W: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """`(H, W, 2)` pixel-centre coordinates: `grid[v, u] = (u, v)`."""
    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                          torch.arange(W, device=device, dtype=dtype), indexing="ij")
    return torch.stack([u, v], dim=-1)


def unproject(uv: torch.Tensor, z: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points `(..., N, 3)` seen at pixels `uv (..., N, 2)` with planar depth `z (..., N)`."""
    K = check_shape(K, (3, 3), "K")
    fx, fy, cx, cy = (K[..., None, i, j] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    return torch.stack([(uv[..., 0] - cx) / fx * z, (uv[..., 1] - cy) / fy * z, z], dim=-1)


def backproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points `(..., H, W, 3)` of every pixel of `depth (..., H, W)`; invalid pixels give z = 0."""
    H, W = depth.shape[-2:]
    uv = pixel_grid(H, W, depth.device, depth.dtype).reshape(H * W, 2)
    points = unproject(uv, depth.flatten(-2), K)
    return points.unflatten(-2, (H, W))


def transform(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply the 4x4 rigid transforms `T (..., 4, 4)` to `points (..., N, 3)`: `R p + t`."""
    T = check_shape(T, (4, 4), "pose")
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def project(points_cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates `uv (..., N, 2)` and depth `z (..., N)` of camera-frame points `(..., N, 3)`.

    `uv` is only meaningful where `z > 0`.
    """
    K = check_shape(K, (3, 3), "K")
    fx, fy, cx, cy = (K[..., None, i, j] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    x, y, z = points_cam.unbind(-1)
    return torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1), z


def check_shape(x, shape: tuple[int, ...], field: str) -> torch.Tensor:
    """`x` as a tensor whose trailing dimensions are `shape`, else a DckpError naming `field`."""
    x = torch.as_tensor(x)
    if x.ndim < len(shape) or tuple(x.shape[-len(shape):]) != shape:
        raise DckpError(f"expected shape (..., {', '.join(map(str, shape))}), got {tuple(x.shape)}", field=field)
    return x


def check_depth(depth, field: str = "depth") -> torch.Tensor:
    """`depth (..., H, W)` as a float tensor, else a DckpError naming `field` (wrong shape, NaN, inf or < 0)."""
    depth = torch.as_tensor(depth)
    if depth.ndim < 2 or not depth.is_floating_point():
        raise DckpError(f"expected a float (..., H, W) depth image, got {depth.dtype} {tuple(depth.shape)}",
                        field=field)
    if not bool(torch.isfinite(depth).all()) or bool((depth < 0).any()):
        raise DckpError("depth must be finite and >= 0 (0 = invalid)", field=field)
    return depth


def check_frame(depth, K, pose, suffix: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame's `depth (H, W)`, `K (3, 3)` and `pose (4, 4)` as tensors of depth's device and dtype.

    Raises DckpError naming the field (`depth`, `K` or `pose`, plus `suffix`) for a wrong shape, or for depth
    that is not floating point, not finite or negative.
    """
    depth = check_depth(depth, "depth" + suffix)
    if depth.ndim != 2:
        raise DckpError(f"expected one (H, W) depth image, got {tuple(depth.shape)}", field="depth" + suffix)
    for x, shape, field in ((K, (3, 3), "K"), (pose, (4, 4), "pose")):
        if tuple(torch.as_tensor(x).shape) != shape:
            raise DckpError(f"expected shape {shape}, got {tuple(torch.as_tensor(x).shape)}", field=field + suffix)
    return depth, torch.as_tensor(K).to(depth), torch.as_tensor(pose).to(depth)
