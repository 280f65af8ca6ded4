"""`dckp show`: a dataset's summary, a picture grid of one episode and a video of its camera streams."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dckp.data import Dataset
from dckp.viz.images import depth_rgb, grid, save_png, save_video, seg_rgb


def default_out(path: str | os.PathLike) -> Path:
    """Where `show` writes by default: `<stem>_show/` beside the file."""
    return Path(path).with_name(Path(path).stem + "_show")


def show(path: str | os.PathLike, episode: str | None = None, out: str | os.PathLike | None = None) -> list[str]:
    """Summary lines; writes `<out>/<episode>.png` (rgb, depth, segmentation at a few times per stream)
    and `<out>/<episode>.mp4` (all streams side by side); `out` defaults to `default_out`."""
    path = Path(path)
    out = Path(out) if out is not None else default_out(path)
    with Dataset(path) as ds:
        episodes = ds.episodes
        episode = ds.pick_episode(episode)
        size = path.stat().st_size
        frames = sum(ds.num_frames(e, s) for e in episodes for s in ds.streams(e))
        lines = [
            f"{path}: {ds.kind} of task {ds.task}, {len(episodes)} episodes, {frames} frames, "
            f"{size / 1e6:.1f} MB ({size / max(frames, 1) / 1e3:.1f} kB per frame), objects {ds.objects}",
        ]
        streams = ds.streams(episode)
        lengths = {s: ds.num_frames(episode, s) for s in streams}
        lines.append(f"{episode}: " + ", ".join(f"{s} {n} frames" for s, n in lengths.items())
                     + (f", {len(ds.actions(episode))} actions" if ds.kind == "demos" else ""))
        rows = []
        for s in streams:
            for t in np.linspace(0, lengths[s] - 1, 4).round().astype(int):
                f = ds.frame(episode, s, t)
                rows.append([f["rgb"], depth_rgb(f["depth"])] + ([seg_rgb(f["seg"])] if "seg" in f else []))
        rows = [sum(rows[i: i + 2], []) for i in range(0, len(rows), 2)]
        lines.append(f"picture: {save_png(grid(rows), out / f'{episode}.png')}")
        n = max(lengths.values())
        video = []
        for t in range(n):
            video.append(np.concatenate([ds.frame(episode, s, min(t * lengths[s] // n, lengths[s] - 1))["rgb"]
                                         for s in streams], axis=1))
        lines.append(f"video: {save_video(video, out / f'{episode}.mp4', fps=10)}")
    return lines
