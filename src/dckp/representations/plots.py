"""The pictures of a representation run: loss curves and image grids, as PNG bytes (matplotlib's `Figure`, no
pyplot state), written with `atomic_write_bytes` by the caller."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def curves(log_path: Path, title: str) -> bytes | None:
    """Every logged loss term against the step (moving average over a 50th of the run), log scale where all are
    positive; None for an empty log."""
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    positive = True
    for key in [k for k in rows[0] if k != "step"]:
        values = np.array([r[key] for r in rows], np.float64)
        k = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=key)
        positive &= bool((smooth > 0).all())
    ax.set_xlabel("step")
    if positive:
        ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return png(fig)


def image_grid(rows: list[list[np.ndarray]], labels: list[str], title: str,
               marks: list[list[np.ndarray | None]] | None = None) -> bytes:
    """A grid of `(H, W, 3)` float images in [0, 1] (or `(H, W)` masks, shown grey), one labelled row per list;
    `marks[r][c]`: points `(K, 2)` in pixel coordinates drawn on that image, coloured by index."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(1.3 * n_cols + 0.8, 1.3 * n_rows + 0.5))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            image = row[c]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            points = marks[r][c] if marks is not None else None
            if points is not None:
                ax.scatter(points[:, 0], points[:, 1], c=np.arange(len(points)), cmap="tab10", vmin=0, vmax=9,
                           s=18, edgecolors="black", linewidths=0.5)
                ax.set_xlim(-0.5, image.shape[1] - 0.5)
                ax.set_ylim(image.shape[0] - 0.5, -0.5)
        axes[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png(fig)
