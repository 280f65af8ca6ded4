"""Keypoints from dense descriptors: distance maps, heatmaps, 2D keypoints and their 3D variants.

Shapes: descriptors `(B, D, H, W)` with `B` = frames x cameras flattened; references `(K, D)`. Pixel coordinates
`(u, v)` = (column, row), pixel centres at integers (docs/conventions.md). Normalised coordinates put the centres
of the image's corner pixels at -1 and +1: `u_norm = 2 u / (W - 1) - 1`, `v_norm = 2 v / (H - 1) - 1`.
Everything is batched tensor code and runs on the inputs' device.
"""

from __future__ import annotations

import math

import torch

from dckp.errors import DckpError
from dckp.geometry.camera import check_shape, pixel_grid, transform, unproject


def descriptor_distance(desc: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """`(B, K, H, W)` distances `d = ||f(u, v) - r_k||_2 / sqrt(D)` between every pixel's descriptor and every
    reference (the Dense Object Net convention)."""
    if desc.ndim != 4 or refs.ndim != 2 or refs.shape[1] != desc.shape[1]:
        raise DckpError(f"expected desc (B, D, H, W) and refs (K, D), got {tuple(desc.shape)} and "
                        f"{tuple(refs.shape)}", field="refs")
    B, D, H, W = desc.shape
    pixels = desc.flatten(2).transpose(1, 2)  # (B, HW, D)
    refs = refs.to(desc).expand(B, -1, -1)
    dist = torch.cdist(pixels, refs, compute_mode="donot_use_mm_for_euclid_dist")  # exact near 0
    return dist.transpose(1, 2).reshape(B, -1, H, W) / math.sqrt(D)


def heatmap(dist: torch.Tensor, temperature: float) -> torch.Tensor:
    """`softmax(-dist / temperature)` over the `H * W` pixels of each `(b, k)`; same shape as `dist`."""
    if not temperature > 0:
        raise DckpError(f"temperature must be > 0, got {temperature}", field="temperature")
    return torch.softmax(-dist.flatten(-2) / temperature, dim=-1).view_as(dist)


def normalise_uv(uv: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Pixel coordinates `(..., 2)` to `[-1, 1]`: `2 u / (W - 1) - 1`, `2 v / (H - 1) - 1`."""
    return 2 * uv / uv.new_tensor([W - 1, H - 1]) - 1


def extract_keypoints(desc: torch.Tensor, refs: torch.Tensor, temperature: float,
                      mode: str = "mode") -> dict[str, torch.Tensor]:
    """One keypoint per reference descriptor in every image.

    `mode="mode"`: the pixel with the highest heatmap value (= lowest distance; ties: the first in row-major
    order), as in the paper. `mode="expectation"`: the heatmap-weighted mean of the pixel coordinates.
    Returns `uv (B, K, 2)` float pixel coordinates, `uv_norm (B, K, 2)`, `distance (B, K)` the descriptor
    distance at the keypoint (for "expectation", at the pixel nearest to it) and `peak (B, K)` the heatmap's
    largest value (softmax probability at the mode, whichever `mode`).
    """
    if mode not in ("mode", "expectation"):
        raise DckpError(f"mode must be 'mode' or 'expectation', got {mode!r}", field="mode")
    H, W = desc.shape[-2:]
    if H < 2 or W < 2:
        raise DckpError(f"images must be at least 2x2, got {H}x{W}", field="desc")
    dist = descriptor_distance(desc, refs)
    heat = heatmap(dist, temperature).flatten(-2)  # (B, K, HW)
    peak, index = heat.max(dim=-1)
    grid = pixel_grid(H, W, desc.device, desc.dtype).reshape(H * W, 2)
    if mode == "mode":
        uv = grid[index]
    else:
        uv = heat @ grid
        index = (uv[..., 1].round().clamp(0, H - 1) * W + uv[..., 0].round().clamp(0, W - 1)).long()
    distance = dist.flatten(-2).gather(-1, index[..., None])[..., 0]
    return {"uv": uv, "uv_norm": normalise_uv(uv, H, W), "distance": distance, "peak": peak}


def depth_at(uv: torch.Tensor, depth: torch.Tensor, window: int = 5) -> torch.Tensor:
    """`(B, K)` depth at keypoints `uv (B, K, 2)` in `depth (B, H, W)`.

    Read at the nearest pixel (`uv` rounded, then clamped into the image). Where that depth is invalid (0), the
    median of the valid (> 0) depths in the `window x window` pixels around it inside the image (for an even
    count, the lower of the two middle values), else 0.
    """
    if window < 1 or window % 2 == 0:
        raise DckpError(f"window must be a positive odd number, got {window}", field="window")
    B, H, W = depth.shape
    px = uv.round().long()
    u, v = px[..., 0].clamp(0, W - 1), px[..., 1].clamp(0, H - 1)
    r = torch.arange(-(window // 2), window // 2 + 1, device=depth.device)
    dv, du = (x.flatten() for x in torch.meshgrid(r, r, indexing="ij"))
    uu, vv = u[..., None] + du, v[..., None] + dv  # (B, K, window^2); the centre is at window^2 // 2
    inside = (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
    index = (vv.clamp(0, H - 1) * W + uu.clamp(0, W - 1)).flatten(1)
    values = depth.flatten(1).gather(1, index).view(uu.shape)
    centre = values[..., window * window // 2]
    values = torch.where(inside & (values > 0), values, torch.full_like(values, float("nan")))
    median = values.nanmedian(dim=-1).values.nan_to_num(0.0)
    return torch.where(centre > 0, centre, median)


def keypoints_3d(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, pose: torch.Tensor,
                 frame: str = "depth", window: int = 5) -> torch.Tensor:
    """`(B, K, 3)` keypoints with depth from `depth (B, H, W)` (metres, 0 invalid; read as in `depth_at`).

    - `"depth"`: `(u_norm, v_norm, z)`, the normalised pixel coordinates plus the depth z (the paper's best).
    - `"camera"`: the point seen at `uv` at depth z, in the OpenCV camera frame (`K (B, 3, 3)`).
    - `"world"`: that point in the world frame, through the camera-to-world `pose (B, 4, 4)`.
    A keypoint without any valid depth gets z = 0, so its camera-frame point is the camera centre.
    """
    if frame not in ("depth", "camera", "world"):
        raise DckpError(f"frame must be 'depth', 'camera' or 'world', got {frame!r}", field="frame")
    if depth.ndim != 3 or uv.ndim != 3 or uv.shape[0] != depth.shape[0] or uv.shape[-1] != 2:
        raise DckpError(f"expected uv (B, K, 2) and depth (B, H, W), got {tuple(uv.shape)} and "
                        f"{tuple(depth.shape)}", field="depth")
    uv = uv.to(depth)
    z = depth_at(uv, depth, window)
    if frame == "depth":
        return torch.cat([normalise_uv(uv, *depth.shape[-2:]), z[..., None]], dim=-1)
    points = unproject(uv, z, check_shape(K, (3, 3), "K").to(depth))
    return points if frame == "camera" else transform(check_shape(pose, (4, 4), "pose").to(depth), points)
