"""What a Dense Object Net learned, as pictures: descriptor images and correspondence heatmaps.

Descriptor images map D-dimensional descriptors to RGB by a PCA fitted once over all frames shown, so the
same colour means the same descriptor everywhere. A heatmap shows, for a reference point in frame a,
softmax(-d/T) over frame b with d the descriptor distance normalised by sqrt(D). Each heatmap is marked with the
best match (the heatmap's peak) and the true match: the point back-projected with a's depth, fixed on the object
it lies on (a's segmentation), moved with that object's true pose from a to b and projected into b (ground truth,
used here only to draw); a true match behind something in b (b's depth is nearer) is marked as hidden.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from dckp.config import atomic_write_bytes  # noqa: E402
from dckp.data import Dataset  # noqa: E402
from dckp.geometry.camera import project, transform, unproject  # noqa: E402
from dckp.geometry.correspondence import sample_depth  # noqa: E402
from dckp.keypoints.extract import descriptor_distance, heatmap  # noqa: E402
from dckp.metrics import pixel_error  # noqa: E402
from dckp.viz.images import save_video  # noqa: E402

POINT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
VISIBLE_TOL = 0.005  # metres: b's depth within this of the moved point's depth means the true match is visible


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


def true_matches(uv: np.ndarray, fa: dict, fb: dict, objects_a: np.ndarray, objects_b: np.ndarray,
                 tol: float = VISIBLE_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Where pixels `uv (k, 2)` of frame a (on objects of a's `seg`) are in frame b: `uv_b (k, 2)` and a state per
    point, "visible", "hidden" (behind something in b) or "outside" (out of b's view). Each point is moved with
    its object's pose, `objects_a`/`objects_b (N, 4, 4)` at the two frames."""
    uv_t = torch.from_numpy(np.asarray(uv, np.float64))
    u, v = np.round(uv).astype(int).T
    z = torch.from_numpy(fa["depth"][v, u].astype(np.float64))
    world = transform(torch.from_numpy(fa["pose"].astype(np.float64)),
                      unproject(uv_t, z, torch.from_numpy(fa["K"].astype(np.float64))))
    obj = fa["seg"][v, u].astype(int) - 1
    motion = torch.from_numpy(np.stack([objects_b[i] @ np.linalg.inv(objects_a[i]) for i in obj]).astype(np.float64))
    moved = transform(motion, world[:, None])[:, 0]  # (k, 3), each point by its own object's motion
    cam_b = transform(torch.linalg.inv(torch.from_numpy(fb["pose"].astype(np.float64))), moved)
    uv_b, z_b = project(cam_b, torch.from_numpy(fb["K"].astype(np.float64)))
    H, W = fb["depth"].shape
    inside = (z_b > 0) & (uv_b >= -0.5).all(-1) & (uv_b[:, 0] <= W - 0.5) & (uv_b[:, 1] <= H - 0.5)
    d_b, ok = sample_depth(torch.from_numpy(fb["depth"].astype(np.float64)), torch.where(inside[:, None], uv_b, 0))
    visible = inside & ok & ((d_b - z_b).abs() <= tol)
    state = np.where(visible.numpy(), "visible", np.where(inside.numpy(), "hidden", "outside"))
    return uv_b.numpy(), state


def _save_figure(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def descriptor_figure(rgb: dict[str, np.ndarray], colours: dict[str, np.ndarray], times: list[int],
                      path: Path) -> Path:
    """Rows: frames at `times`; columns: per stream, its RGB and its descriptor image (PCA to RGB)."""
    streams = list(rgb)
    fig, axes = plt.subplots(len(times), 2 * len(streams), figsize=(2.2 * 2 * len(streams), 2.2 * len(times)),
                             squeeze=False)
    for i, t in enumerate(times):
        for j, s in enumerate(streams):
            for k, (image, what) in enumerate(((rgb[s][t], "RGB"), (colours[s][t], "descriptors (PCA)"))):
                ax = axes[i, 2 * j + k]
                ax.imshow(image, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{s}\n{what}", fontsize=8)
                if j == k == 0:
                    ax.set_ylabel(f"frame {t}", fontsize=8)
    fig.suptitle("Descriptor images\n(same colour = same descriptor)", fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, path)


def heatmap_figure(rows: list[dict], temperature: float, path: Path) -> Path:
    """One row per stream: frame a with the reference points, then each point's heatmap over frame b with its
    best match and true match. `rows`: {stream_a, stream, t_a, t_b, rgb_a, rgb_b, uv (k,2), probs (k,H,W),
    true_uv (k,2), state (k,)}."""
    k = max(len(r["uv"]) for r in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(2.3 * (k + 1), 2.4 * len(rows) + 0.6), squeeze=False)
    for i, r in enumerate(rows):
        ax = axes[i, 0]
        ax.imshow(r["rgb_a"], interpolation="nearest")
        ax.set_title(f"frame a: {r['stream_a']} {r['t_a']}\nreference points", fontsize=8)
        for n, (u, v) in enumerate(r["uv"]):
            c = POINT_COLOURS[n % len(POINT_COLOURS)]
            ax.plot(u, v, "+", color=c, ms=10, mew=2)
            ax.annotate(str(n + 1), (u, v), xytext=(4, -4), textcoords="offset points", color=c, fontsize=8,
                        fontweight="bold")
        for n in range(k):
            ax = axes[i, n + 1]
            if n >= len(r["uv"]):
                ax.axis("off")
                continue
            probs = r["probs"][n]
            best = np.unravel_index(probs.argmax(), probs.shape)[::-1]
            ax.imshow(heatmap_rgb(r["rgb_b"], probs), interpolation="nearest")
            ax.plot(*best, "x", color="cyan", ms=9, mew=2)
            state = r["state"][n]
            if state == "outside":
                note = "true match out of view"
            else:
                ax.plot(*r["true_uv"][n], "o", mfc="none", mec="lime" if state == "visible" else "orange",
                        ms=11, mew=2, ls="none")
                error = pixel_error(torch.tensor(best, dtype=torch.float64), torch.as_tensor(r["true_uv"][n])).item()
                note = f"error {error:.1f} px" + (" (hidden)" if state == "hidden" else "")
            ax.set_title(f"point {n + 1} in {r['stream']} {r['t_b']}\n{note}", fontsize=8,
                         color=POINT_COLOURS[n % len(POINT_COLOURS)])
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Line2D([], [], marker="+", ls="none", color="k", ms=9, mew=2, label="reference point (frame a)"),
               Line2D([], [], marker="x", ls="none", color="cyan", ms=9, mew=2, label="best match (heatmap peak)"),
               Line2D([], [], marker="o", ls="none", mfc="none", mec="lime", ms=9, mew=2,
                      label="true match (depth + poses)"),
               Line2D([], [], marker="o", ls="none", mfc="none", mec="orange", ms=9, mew=2,
                      label="true match, hidden in frame b")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Correspondence heatmaps: softmax(-d / {temperature}) over frame b, bright = likely match",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save_figure(fig, path)


def descriptor_pictures(model, path: str | os.PathLike, out_dir: str | os.PathLike, episode: str | None = None,
                        temperature: float = 0.05, points: int = 4, seed: int = 0) -> list[str]:
    """Writes `<episode>_descriptors.mp4` (every stream: RGB | descriptors, side by side, along the episode),
    `<episode>_descriptors.png` (the same at four frames, labelled) and `<episode>_heatmaps.png` (object points
    of the first stream's first frame against the middle frame of every stream, with best and true matches)."""
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
        times = list(range(n))[:: max(1, n // 4)][:4]
        written = [str(save_video(frames, out / f"{episode}_descriptors.mp4", fps=10)),
                   str(descriptor_figure(rgb, colours, times, out / f"{episode}_descriptors.png"))]

        poses = ds.array(episode, "object_pose")  # per step in demonstrations; a static scene's in views files

        def objects_at(t: int) -> np.ndarray:
            return poses[min(t, len(poses) - 1)].astype(np.float64)

        fa = ds.frame(episode, streams[0], 0)
        on = np.argwhere((fa["seg"] > 0) & (fa["seg"] < 255) & (fa["depth"] > 0))
        if len(on):
            pick = on[rng.choice(len(on), min(points, len(on)), replace=False)][:, ::-1].astype(np.float64)
            refs = desc[streams[0]][0][:, pick[:, 1].astype(int), pick[:, 0].astype(int)].T  # (k, D)
            rows = []
            for s in streams:
                t = n // 2
                fb = ds.frame(episode, s, t)
                true_uv, state = true_matches(pick, fa, fb, objects_at(0), objects_at(t))
                rows.append({"stream_a": streams[0], "stream": s, "t_a": 0, "t_b": t, "rgb_a": fa["rgb"],
                             "rgb_b": rgb[s][t], "uv": pick,
                             "probs": heatmap(descriptor_distance(desc[s][t: t + 1], refs), temperature)[0].numpy(),
                             "true_uv": true_uv, "state": state})
            written.append(str(heatmap_figure(rows, temperature, out / f"{episode}_heatmaps.png")))
    return written
