"""Pixel correspondences between two RGB-D frames of a static scene, from depth and camera poses.

A pixel of frame a is back-projected with its depth, moved into frame b and projected. It matches the
projected subpixel location in b if that lies in b's image (`-0.5 <= u <= W - 0.5`, same for v), in front of
b's camera, and b's depth there agrees with the point's depth within `tol` metres. A surface more than `tol` in
front of the point occludes it; one more than `tol` behind it cannot be seen in a static scene except where
interpolation mixes the two sides of a depth edge, so such pixels are dropped too. Depth is read by bilinear
interpolation of the 4 neighbouring pixels, and only where all of them (those with non-zero weight) are valid
(> 0); otherwise the pixel is dropped. Rows and columns beyond the border repeat the border pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dckp.errors import DckpError
from dckp.geometry.camera import check_depth, check_frame, check_shape, pixel_grid, project, transform, unproject

_REDRAWS = 8  # rounds of redrawing non-matches that fell too close to their match


@dataclass
class CorrespondenceConfig:
    """tol: metres by which b's depth may differ from the projected point's depth (occlusion test).
    n_matches: matches sampled per image pair; non_matches_per_match: non-matches drawn per match;
    exclusion_px: non-matches are at least this far (pixels) from their true match."""

    tol: float = 0.003
    n_matches: int = 1000
    non_matches_per_match: int = 10
    exclusion_px: float = 3.0

    def __post_init__(self):
        for name in ("tol", "exclusion_px"):
            if getattr(self, name) < 0:
                raise DckpError(f"must be >= 0, got {getattr(self, name)}", field=name)
        for name in ("n_matches", "non_matches_per_match"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)


CORRESPONDENCE_PRESETS = {
    "cpu": CorrespondenceConfig(),
    "paper": CorrespondenceConfig(n_matches=5000, non_matches_per_match=150),  # full-scale counts
}


def sample_depth(depth: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear depth `(..., N)` of `depth (..., H, W)` at finite `uv (..., N, 2)`, and whether it is valid.

    Valid means every neighbour with non-zero interpolation weight has depth > 0; coordinates are clamped to the
    image, so the border pixels extend to its edge.
    """
    H, W = depth.shape[-2:]
    lead = torch.broadcast_shapes(depth.shape[:-2], uv.shape[:-2])
    flat = depth.expand(*lead, H, W).reshape(*lead, H * W)
    u, v = uv[..., 0].clamp(0, W - 1), uv[..., 1].clamp(0, H - 1)
    u0, v0 = u.floor().clamp(max=W - 2), v.floor().clamp(max=H - 2)
    fu, fv = u - u0, v - v0
    i00 = (v0 * W + u0).long().expand(*lead, uv.shape[-2])
    d = torch.stack([flat.gather(-1, i00 + o) for o in (0, 1, W, W + 1)], dim=-1)
    w = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], dim=-1)
    return (d * w).sum(-1), ((d > 0) | (w == 0)).all(-1)


def warp_pixels(uv_a, depth_a, K_a, pose_a, depth_b, K_b, pose_b, tol: float = 0.003):
    """Batched correspondences: `uv_b (..., N, 2)` and `valid (..., N)` for pixels `uv_a (..., N, 2)` of a.

    `depth_* (..., H, W)`, `K_* (..., 3, 3)`, `pose_* (..., 4, 4)` (camera-to-world); leading dimensions
    broadcast. `uv_b` is 0 where not valid. Same rules as `find_matches`.
    """
    depth_a, depth_b = check_depth(depth_a, "depth_a"), check_depth(depth_b, "depth_b")
    cams = [check_shape(x, shape, name).to(depth_a) for x, shape, name in (
        (uv_a, (2,), "uv_a"), (K_a, (3, 3), "K_a"), (pose_a, (4, 4), "pose_a"),
        (K_b, (3, 3), "K_b"), (pose_b, (4, 4), "pose_b"))]
    return _warp(depth_a, depth_b, *cams, tol)


def _warp(depth_a, depth_b, uv_a, K_a, pose_a, K_b, pose_b, tol):
    Hb, Wb = depth_b.shape[-2:]
    z_a, ok_a = sample_depth(depth_a, uv_a)
    points_b = transform(torch.linalg.inv(pose_b) @ pose_a, unproject(uv_a, z_a, K_a))
    uv_b, z_b = project(points_b, K_b)
    inside = ((z_b > 0) & (uv_b >= -0.5).all(-1)
              & (uv_b[..., 0] <= Wb - 0.5) & (uv_b[..., 1] <= Hb - 0.5) & ok_a)
    uv_b = torch.where(inside[..., None], uv_b, 0)
    d_b, ok_b = sample_depth(depth_b, uv_b)
    valid = inside & ok_b & ((d_b - z_b).abs() <= tol)
    return torch.where(valid[..., None], uv_b, 0), valid


def find_matches(depth_a, K_a, pose_a, depth_b, K_b, pose_b, uv_a=None, tol: float = 0.003):
    """Matches between one pair of frames: `uv_a (N, 2)` and `uv_b (N, 2)`, float subpixel coordinates.

    `depth_* (H, W)` metres (0 = invalid), `K_* (3, 3)`, `pose_* (4, 4)` camera-to-world. Candidates are all
    valid-depth pixels of a, or the given `uv_a (M, 2)`. For batches of image pairs use `warp_pixels`.
    """
    depth_a, K_a, pose_a = check_frame(depth_a, K_a, pose_a, "_a")
    depth_b, K_b, pose_b = check_frame(depth_b, K_b, pose_b, "_b")
    if uv_a is None:
        uv_a = pixel_grid(*depth_a.shape, depth_a.device, depth_a.dtype)[depth_a > 0]
    uv_a = check_shape(uv_a, (2,), "uv_a").to(depth_a)
    if uv_a.ndim != 2:
        raise DckpError(f"expected shape (N, 2), got {tuple(uv_a.shape)}", field="uv_a")
    uv_b, valid = _warp(depth_a, depth_b, uv_a, K_a, pose_a, K_b, pose_b, tol)
    return uv_a[valid], uv_b[valid]


def sample_matches(mask_a, depth_a, K_a, pose_a, depth_b, K_b, pose_b, n: int, tol: float = 0.003,
                   generator: torch.Generator | None = None):
    """Up to `n` matches `(uv_a, uv_b)`, drawn uniformly without replacement from the matches of the pixels
    in the boolean `mask_a (H, W)`. `generator` lives on depth's device and seeds the draw."""
    depth_a = check_depth(depth_a, "depth_a")
    mask_a = torch.as_tensor(mask_a, device=depth_a.device)
    if mask_a.shape != depth_a.shape or mask_a.dtype != torch.bool:
        raise DckpError(f"expected a bool mask of shape {tuple(depth_a.shape)}, got {mask_a.dtype} "
                        f"{tuple(mask_a.shape)}", field="mask_a")
    uv = pixel_grid(*depth_a.shape, depth_a.device, depth_a.dtype)[mask_a & (depth_a > 0)]
    uv_a, uv_b = find_matches(depth_a, K_a, pose_a, depth_b, K_b, pose_b, uv_a=uv, tol=tol)
    pick = torch.randperm(len(uv_a), generator=generator, device=uv_a.device)[:n]
    return uv_a[pick], uv_b[pick]


def sample_non_matches(uv_b_matches, mask_b, n_per_match: int, exclusion_px: float = 3.0,
                       generator: torch.Generator | None = None):
    """For each match `uv_b_matches (N, 2)`, `n_per_match` pixels of the boolean `mask_b (H, W)` that are more
    than `exclusion_px` pixels from it: `uv (N, n_per_match, 2)` at pixel centres and `valid (N, n_per_match)`.

    Pixels are drawn uniformly with replacement; draws too close to the match are redrawn a few times and stay
    invalid if they never get far enough (only happens when few mask pixels are far from the match). An empty
    mask gives no valid non-matches. `generator` lives on the mask's device.
    """
    uv_b_matches = check_shape(uv_b_matches, (2,), "uv_b_matches")
    mask_b = torch.as_tensor(mask_b, device=uv_b_matches.device)
    if mask_b.ndim != 2 or mask_b.dtype != torch.bool:
        raise DckpError(f"expected a bool (H, W) mask, got {mask_b.dtype} {tuple(mask_b.shape)}", field="mask_b")
    device, shape = mask_b.device, (len(uv_b_matches), n_per_match)
    pool = pixel_grid(*mask_b.shape, device, uv_b_matches.dtype)[mask_b]
    if len(pool) == 0:
        return pool.new_zeros(*shape, 2), torch.zeros(shape, dtype=torch.bool, device=device)
    uv = pool[torch.randint(len(pool), shape, generator=generator, device=device)]
    far = (uv - uv_b_matches[:, None]).norm(dim=-1) > exclusion_px
    for _ in range(_REDRAWS):
        if bool(far.all()):
            break
        redraw = pool[torch.randint(len(pool), shape, generator=generator, device=device)]
        uv = torch.where(far[..., None], uv, redraw)
        far = (uv - uv_b_matches[:, None]).norm(dim=-1) > exclusion_px
    return uv, far
