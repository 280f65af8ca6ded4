"""Turn frames into pictures people can look at: coloured depth and segmentation, grids, videos."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import matplotlib
import numpy as np

from dckp.config import atomic_write_bytes

_PALETTE = (matplotlib.colormaps["tab10"](np.arange(10))[:, :3] * 255).astype(np.uint8)


def depth_rgb(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """Depth in metres -> turbo-coloured uint8 image; invalid (0) pixels are black."""
    valid = depth > 0
    if not valid.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    near = np.percentile(depth[valid], 1) if near is None else near
    far = np.percentile(depth[valid], 99) if far is None else far
    x = np.clip((depth - near) / max(far - near, 1e-6), 0, 1)
    rgb = (matplotlib.colormaps["turbo"](x)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def seg_rgb(seg: np.ndarray) -> np.ndarray:
    """Instance ids -> colours: 0 black, 1..N palette colours, 255 (robot) grey."""
    rgb = _PALETTE[(seg.astype(np.int64) - 1) % len(_PALETTE)]
    rgb[seg == 0] = 0
    rgb[seg == 255] = 128
    return rgb


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized uint8 RGB images into rows and columns with white padding."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y: y + h, x: x + w] = img
    return out


def draw_rings(image: np.ndarray, centres: np.ndarray, radii: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    """Draw in place a 1.5 px wide circle of radius `radii[i]` (pixels, at least 2) around each `centres[i] = (x, y)`
    inside `image (H, W, 3)`; non-finite ones are skipped. Returns `image`."""
    H, W = image.shape[:2]
    for (x, y), r in zip(np.asarray(centres, np.float64), np.asarray(radii, np.float64), strict=True):
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(r)):
            continue
        r = max(r, 2.0)
        x0, x1 = max(0, int(x - r - 2)), min(W, int(x + r + 3))
        y0, y1 = max(0, int(y - r - 2)), min(H, int(y + r + 3))
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        ring = np.abs(np.hypot(xx - x, yy - y) - r) <= 0.75
        image[y0:y1, x0:x1][ring] = colour
    return image


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    atomic_write_bytes(path, iio.imwrite("<bytes>", image, extension=".png"))
    return Path(path)


def save_video(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 20) -> Path:
    """H.264 mp4 through imageio-ffmpeg, written to a temp file and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with iio2.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))))
    os.replace(tmp, path)
    return path


def colour_scale(peak, pixels: int) -> np.ndarray:
    """Keypoint confidence for colouring: the heatmap's peak probability as a ratio to a flat heatmap's (1 / pixels),
    on a log scale, `log(peak * pixels) / log(pixels)`: 0 when the heatmap is flat (the keypoint could be
    anywhere), 1 when all probability is on one pixel. The raw peak of a softmax over thousands of pixels is small
    even for a good match (a few hundredths), which would colour every keypoint red."""
    peak = np.clip(np.asarray(peak, np.float64), 1.0 / pixels, 1.0)
    return np.log(peak * pixels) / np.log(pixels)


def confidence_colour(c: float) -> np.ndarray:
    """Red (confidence 0) to yellow (0.5) to green (confidence 1)."""
    c = float(np.clip(c, 0.0, 1.0)) if np.isfinite(c) else 0.0
    return np.array([255 * min(1.0, 2 * (1 - c)), 255 * min(1.0, 2 * c), 0], np.uint8)


def draw_keypoints(image: np.ndarray, uv: np.ndarray, confidence: np.ndarray, scale: int = 1,
                   radius: int | None = None) -> np.ndarray:
    """A copy of `image (H, W, 3)` upscaled (nearest) by `scale`, with a filled circle per keypoint `uv (K, 2)`
    (pixel coordinates of the original image), coloured by `confidence (K,)`, with a black rim."""
    out = np.repeat(np.repeat(image, scale, 0), scale, 1) if scale > 1 else image.copy()
    H, W = out.shape[:2]
    r = radius if radius is not None else max(2, H // 64)
    for (u, v), c in zip(np.asarray(uv, np.float64), np.asarray(confidence, np.float64), strict=True):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        x, y = u * scale + (scale - 1) / 2, v * scale + (scale - 1) / 2  # pixel centres stay pixel centres
        x0, x1 = max(0, int(np.floor(x - r - 1))), min(W, int(np.ceil(x + r + 1)) + 1)
        y0, y1 = max(0, int(np.floor(y - r - 1))), min(H, int(np.ceil(y + r + 1)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        patch = out[y0:y1, x0:x1]
        patch[d2 <= (r + 1) ** 2] = 0
        patch[d2 <= r**2] = confidence_colour(c)
    return out
