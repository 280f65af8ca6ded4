"""TSDF fusion of RGB-D frames (Curless & Levoy 1996), vectorised in torch.

Each voxel keeps a running average (weight 1 per observation) of the projective truncated signed distance
`clamp((depth - z) / trunc, max=1)`, where `z` is the voxel centre's depth in the frame and `depth` the frame's
depth at the nearest pixel. A frame updates every voxel that it sees in front of, or at most `trunc` behind,
the observed surface; voxels more than `trunc` behind it keep their value. Colour is the average of the
nearest pixels' colours over the observations with |depth - z| < trunc.

To save time only voxels of allocated blocks (BLOCK^3 voxels) are stored and updated, as in voxel hashing: a
block is allocated when a frame's truncation band (`depth +- trunc` along the pixel rays) first reaches it, and
from then on every frame updates it, free space included. Free space seen before a block was allocated is
therefore not counted there, so an object seen only in the last frames (e.g. the robot arm) stays in the
volume; to count it and erase such objects, call `allocate` on all frames before integrating them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dckp.errors import DckpError
from dckp.geometry.camera import check_frame, pixel_grid, transform, unproject

BLOCK = 4  # voxels per block edge


@dataclass
class TSDFVolume:
    """A voxel grid of `shape` over the world-frame box from `origin`: voxel `(i, j, k)` has its centre at
    `origin + (i + 0.5, j + 0.5, k + 0.5) * voxel_size`. `allocated` flags blocks. The voxels of allocated blocks
    are stored in allocation order: `index` (M,) their flat indices in the grid, `centers` (3, M) world
    coordinates (one row per axis), `tsdf` (M,) signed distance divided by `trunc`, in [-1, 1] (1 until
    observed), `weight` (M,) number of observations, `color` (M, 3) mean RGB (0..255) of the observations
    within the truncation band and `color_weight` (M,) their number."""

    origin: torch.Tensor
    voxel_size: float
    trunc: float
    shape: tuple[int, int, int]
    allocated: torch.Tensor
    index: torch.Tensor
    centers: torch.Tensor
    tsdf: torch.Tensor
    weight: torch.Tensor
    color: torch.Tensor
    color_weight: torch.Tensor


def make_volume(lo, hi, voxel_size: float, trunc: float, device=None, dtype=torch.float32) -> TSDFVolume:
    """An empty volume covering the box `lo..hi` (world frame, metres), rounded up to whole blocks."""
    lo, hi = (torch.as_tensor(x, dtype=torch.float64).flatten() for x in (lo, hi))
    if lo.shape != (3,) or hi.shape != (3,) or not bool((hi > lo).all()):
        raise DckpError(f"expected 3 numbers each with lo < hi, got {lo.tolist()} and {hi.tolist()}",
                        field="workspace")
    if not voxel_size > 0:
        raise DckpError(f"must be > 0, got {voxel_size}", field="voxel_size")
    if not trunc > voxel_size:
        raise DckpError(f"must be larger than voxel_size ({voxel_size}), got {trunc}", field="trunc")
    blocks = [math.ceil(float(n) / (voxel_size * BLOCK)) for n in hi - lo]
    empty = torch.zeros(0, device=device, dtype=dtype)
    return TSDFVolume(
        origin=lo.to(device=device, dtype=dtype), voxel_size=voxel_size, trunc=trunc,
        shape=tuple(b * BLOCK for b in blocks), allocated=torch.zeros(blocks, device=device, dtype=torch.bool),
        index=torch.zeros(0, device=device, dtype=torch.long), centers=empty.reshape(3, 0),
        tsdf=empty, weight=empty, color=empty.reshape(0, 3), color_weight=empty,
    )


def allocate(volume: TSDFVolume, depth, K, pose) -> None:
    """Allocate the blocks that the frame's truncation band reaches (integrate does this itself)."""
    depth, K, pose = (x.to(volume.centers) for x in check_frame(depth, K, pose))
    _allocate(volume, depth, K, pose)


def integrate(volume: TSDFVolume, depth, rgb, K, pose) -> None:
    """Fuse one frame in place: `depth (H, W)` metres (0 = invalid), `rgb (H, W, 3)` uint8, `K (3, 3)`,
    `pose (4, 4)` camera-to-world."""
    depth, K, pose = (x.to(volume.centers) for x in check_frame(depth, K, pose))
    rgb = torch.as_tensor(rgb, device=depth.device)
    if rgb.shape != (*depth.shape, 3):
        raise DckpError(f"expected shape {(*depth.shape, 3)}, got {tuple(rgb.shape)}", field="rgb")
    _allocate(volume, depth, K, pose)
    H, W = depth.shape
    P = (K @ torch.linalg.inv(pose)[:3]).tolist()  # world to homogeneous pixel coordinates
    x, y, zw = volume.centers  # row by row: much faster than a (M, 3) x (3, 3) matmul on CPU
    u, v, z = (p[0] * x + p[1] * y + p[2] * zw + p[3] for p in P)
    u, v = (u / z).round_(), (v / z).round_()
    inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    pix = torch.where(inside, v * W + u, 0).long()
    d = depth.flatten()[pix]
    sdf = d - z
    update = inside & (d > 0) & (sdf >= -volume.trunc)
    weight = volume.weight + update
    observed = (volume.tsdf * volume.weight + (sdf / volume.trunc).clamp(max=1)) / weight.clamp(min=1)
    volume.tsdf = torch.where(update, observed, volume.tsdf)
    volume.weight = weight
    band = (update & (sdf < volume.trunc)).nonzero().squeeze(1)
    w = volume.color_weight[band, None]
    volume.color[band] = (volume.color[band] * w + rgb.reshape(-1, 3)[pix[band]].to(w)) / (w + 1)
    volume.color_weight[band] += 1


def _allocate(volume: TSDFVolume, depth, K, pose) -> None:
    valid = depth > 0
    uv = pixel_grid(*depth.shape, depth.device, depth.dtype)[valid]
    block_size = BLOCK * volume.voxel_size
    n_steps = math.ceil(2 * volume.trunc / (block_size / 2)) + 1  # at most half a block apart along each ray
    z = depth[valid] + torch.linspace(-volume.trunc, volume.trunc, n_steps).to(depth)[:, None]
    blocks = ((transform(pose, unproject(uv, z, K)) - volume.origin) / block_size).floor()
    nb = torch.tensor(volume.allocated.shape, device=depth.device)
    blocks = blocks[((blocks >= 0) & (blocks < nb)).all(-1)].long()
    hit = torch.zeros_like(volume.allocated)
    hit[blocks[:, 0], blocks[:, 1], blocks[:, 2]] = True
    new = (hit & ~volume.allocated).nonzero()
    if len(new) == 0:
        return
    volume.allocated |= hit
    offsets = torch.stack(torch.meshgrid(*[torch.arange(BLOCK, device=depth.device)] * 3, indexing="ij"), -1)
    ijk = (new[:, None] * BLOCK + offsets.reshape(1, -1, 3)).reshape(-1, 3)
    n, (_, Y, Z) = len(ijk), volume.shape
    volume.index = torch.cat([volume.index, (ijk[:, 0] * Y + ijk[:, 1]) * Z + ijk[:, 2]])
    centers = volume.origin[:, None] + (ijk.T.to(depth) + 0.5) * volume.voxel_size
    volume.centers = torch.cat([volume.centers, centers], dim=1)
    volume.tsdf = torch.cat([volume.tsdf, depth.new_ones(n)])
    volume.weight = torch.cat([volume.weight, depth.new_zeros(n)])
    volume.color = torch.cat([volume.color, depth.new_zeros(n, 3)])
    volume.color_weight = torch.cat([volume.color_weight, depth.new_zeros(n)])


def _dense(volume: TSDFVolume, values: torch.Tensor, fill: float) -> torch.Tensor:
    grid = values.new_full((math.prod(volume.shape), *values.shape[1:]), fill)
    grid[volume.index] = values
    return grid.reshape(*volume.shape, *values.shape[1:])


def extract_surface_points(volume: TSDFVolume) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface points `(P, 3)` (world frame) and their colours `(P, 3)` uint8.

    One point per pair of axis-neighbouring voxels that were both observed, are both within the truncation
    band (|tsdf| < 1) and whose tsdf changes sign; it lies where linear interpolation between the two voxel
    centres crosses zero, and its colour is interpolated the same way.
    """
    tsdf, weight, color = _dense(volume, volume.tsdf, 1), _dense(volume, volume.weight, 0), \
        _dense(volume, volume.color, 0)
    points, colors = [], []
    for axis in range(3):
        n = volume.shape[axis] - 1
        a, b = tsdf.narrow(axis, 0, n), tsdf.narrow(axis, 1, n)
        wa, wb = weight.narrow(axis, 0, n), weight.narrow(axis, 1, n)
        crossing = (wa > 0) & (wb > 0) & ((a >= 0) != (b >= 0)) & (a.abs() < 1) & (b.abs() < 1)
        t = a[crossing] / (a[crossing] - b[crossing])
        ijk = crossing.nonzero().to(t)
        ijk[:, axis] += t
        points.append(volume.origin + (ijk + 0.5) * volume.voxel_size)
        ca, cb = color.narrow(axis, 0, n)[crossing], color.narrow(axis, 1, n)[crossing]
        colors.append(ca + (cb - ca) * t[:, None])
    return torch.cat(points), torch.cat(colors).round().clamp(0, 255).to(torch.uint8)
