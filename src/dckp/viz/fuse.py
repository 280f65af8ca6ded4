"""The picture `dckp fuse` writes: masks over a few frames of each stream and the clustered point cloud."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dckp.data import Dataset  # noqa: E402
from dckp.viz.images import _PALETTE, grid, save_png, seg_rgb  # noqa: E402


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Objects tinted with their mask colour over the image."""
    tint = seg_rgb(mask).astype(np.float32)
    out = rgb.astype(np.float32)
    on = mask > 0
    out[on] = (1 - alpha) * out[on] + alpha * tint[on]
    return out.astype(np.uint8)


def point_cloud_image(points: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """Top and side views of fused points, objects in their mask colours, the rest grey."""
    colours = np.where(labels[:, None] > 0, _PALETTE[(labels.astype(int) - 1) % len(_PALETTE)], 170) / 255
    fig, axes = plt.subplots(1, 2, figsize=(2 * size / 50, size / 50), dpi=50)
    for ax, (i, j, name) in zip(axes, ((0, 1, "top (x, y)"), (0, 2, "side (x, z)")), strict=True):
        order = np.argsort(labels)  # objects drawn last, over the table
        ax.scatter(points[order, i], points[order, j], s=0.3, c=colours[order])
        ax.set_title(name, fontsize=8)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def fuse_picture(path: str | os.PathLike, out: str | os.PathLike, episode: str | None = None) -> str:
    with Dataset(path) as ds:
        episode = episode or ds.episodes[0]
        rows = []
        for s in ds.streams(episode):
            key = f"data/{episode}/obs/{s}_mask"
            if key not in ds.f:
                continue
            n = ds.num_frames(episode, s)
            rows.append([overlay(ds.frame(episode, s, t)["rgb"], ds.f[key][t])
                         for t in np.linspace(0, n - 1, 4).round().astype(int)])
        size = rows[0][0].shape[0]
        fused = ds.f[f"data/{episode}/fused"]
        cloud = point_cloud_image(fused["points"][()], fused["labels"][()], size)
    picture = grid(rows)
    pad = np.full((cloud.shape[0], max(picture.shape[1] - cloud.shape[1], 0), 3), 255, np.uint8)
    cloud = np.concatenate([cloud, pad], 1)[:, : picture.shape[1]]
    return str(save_png(np.concatenate([picture, cloud], 0), out))
