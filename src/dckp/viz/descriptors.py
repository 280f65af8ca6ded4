"""What a Dense Object Net learned, as pictures: descriptor images and correspondence heatmaps.

Descriptor images map D-dimensional descriptors to RGB by a PCA fitted once over all frames shown, so the
same colour means the same descriptor everywhere. A heatmap shows, for a point in I_a, softmax(-d/T) over I_b
with d the descriptor distance normalised by sqrt(D); the cross marks the true match when one is given.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import torch

from dckp.data import Dataset
from dckp.keypoints.extract import descriptor_distance, heatmap
from dckp.viz.images import grid, save_png, save_video


@torch.no_grad()
def describe(model, rgb: np.ndarray, batch: int = 8) -> torch.Tensor:
    """Descriptors (N,D,H,W) of uint8 images (N,H,W,3)."""
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    return torch.cat([model(images[i: i + batch]) for i in range(0, len(images), batch)])


def pca_rgb(desc: torch.Tensor) -> np.ndarray:
    """(N,D,H,W) descriptors -> (N,H,W,3) uint8 through their first three principal components."""
    N, D, H, W = desc.shape
    x = desc.permute(0, 2, 3, 1).reshape(-1, D)
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:20000]],
                               full_matrices=False)
    y = x @ v[: min(3, D)].T
    if y.shape[1] < 3:
        y = torch.cat([y, y.new_zeros(len(y), 3 - y.shape[1])], 1)
    lo, hi = torch.quantile(y[::7], 0.01, dim=0), torch.quantile(y[::7], 0.99, dim=0)
    y = ((y - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    return (y.reshape(N, H, W, 3).numpy() * 255).astype(np.uint8)


def heatmap_rgb(rgb_b: np.ndarray, probs: np.ndarray) -> np.ndarray:
    p = probs / max(probs.max(), 1e-12)
    colour = matplotlib.colormaps["inferno"](p)[..., :3] * 255
    return (0.4 * rgb_b + 0.6 * colour).astype(np.uint8)


def _cross(img: np.ndarray, uv, colour=(0, 255, 0)) -> np.ndarray:
    img = img.copy()
    u, v = int(round(float(uv[0]))), int(round(float(uv[1])))
    H, W = img.shape[:2]
    for d in range(-3, 4):
        if 0 <= v < H and 0 <= u + d < W:
            img[v, u + d] = colour
        if 0 <= v + d < H and 0 <= u < W:
            img[v + d, u] = colour
    return img


def descriptor_pictures(model, path: str | os.PathLike, out_dir: str | os.PathLike, episode: str | None = None,
                        temperature: float = 0.05, points: int = 4, seed: int = 0) -> list[str]:
    """Writes `<episode>_descriptors.mp4` and `.png` (every stream: RGB | descriptors, side by side, along the
    episode) and `<episode>_heatmaps.png` (object points of one frame against another frame)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    with Dataset(path) as ds:
        episode = episode or ds.episodes[0]
        streams = [s for s in ds.streams(episode) if s != "free"] or ds.streams(episode)
        n = min(ds.num_frames(episode, s) for s in streams)
        rgb = {s: np.stack([ds.frame(episode, s, t)["rgb"] for t in range(n)]) for s in streams}
        desc = {s: describe(model, rgb[s]) for s in streams}
        colours = pca_rgb(torch.cat([desc[s] for s in streams]))
        colours = dict(zip(streams, np.split(colours, len(streams)), strict=True))
        frames = [np.concatenate([np.concatenate([rgb[s][t], colours[s][t]], 1) for s in streams], 1)
                  for t in range(n)]
        some = [[f] for f in frames[:: max(1, n // 4)][:4]]
        written = [str(save_video(frames, out / f"{episode}_descriptors.mp4", fps=10)),
                   str(save_png(grid(some), out / f"{episode}_descriptors.png"))]

        # heatmaps: points on objects of the first stream's first frame, against a later frame of every stream
        fa = ds.frame(episode, streams[0], 0)
        on = np.argwhere((fa["seg"] > 0) & (fa["seg"] < 255))
        if len(on):
            pick = on[rng.choice(len(on), min(points, len(on)), replace=False)][:, ::-1]  # (u, v)
            refs = desc[streams[0]][0][:, pick[:, 1], pick[:, 0]].T  # (k, D)
            rows = []
            for s in streams:
                t = n - 1
                probs = heatmap(descriptor_distance(desc[s][t: t + 1], refs), temperature)[0].numpy()
                rows.append([_cross(fa["rgb"], uv) for uv in pick][:1] + [heatmap_rgb(rgb[s][t], p) for p in probs])
            written.append(str(save_png(grid(rows), out / f"{episode}_heatmaps.png")))
    return written
