"""Demonstrations as an encoder reads them: the frames of a step range, lazily read training windows for a
trainable encoder (`FrameWindows`), and a frozen encoder's output over every demonstration (`encode_demos`)."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from dckp.data import Dataset
from dckp.training import memory_share


def frames_of(ds: Dataset, episode: str, cameras: list[str], start: int, stop: int,
              inputs=("rgb", "depth", "object_pose")) -> dict[str, torch.Tensor]:
    """Encoder input for steps start..stop-1 of a demonstration: each camera's K and pose, and of `rgb`, `depth`
    and `object_pose` those in `inputs`."""
    frames = {}
    for cam in cameras:
        for key in ("K", "pose", *(k for k in ("rgb", "depth") if k in inputs)):
            frames[f"{cam}_{key}"] = torch.from_numpy(ds.frames(episode, cam, key, start, stop))
    if "object_pose" in inputs:
        frames["object_pose"] = torch.from_numpy(ds.array(episode, "object_pose")[start:stop])
    return frames


class FrameWindows:
    """Batches of frame windows read from a demonstrations file on demand, for an encoder trained with the policy.

    Decoding the file's compressed images is a large part of a step, so each demonstration's decoded frames are
    kept in memory once read, whole, while they fit in `cache_bytes` in all (default `memory_share()`; the `cpu`
    presets' largest, pick_place_clutter's, are 3.6 GiB of colour and 8.6 GiB with depth). The cache changes only
    the speed: a demonstration that does not fit is read again at every step, only the window asked for (whole
    demonstrations would not fit in memory at paper size), the same frames."""

    def __init__(self, demos: str | os.PathLike, cameras: list[str], inputs, cache_bytes: int | None = None):
        self.ds = Dataset(demos)
        self.episodes, self.cameras, self.inputs = self.ds.episodes, cameras, tuple(inputs)
        self.lengths = [len(self.ds.actions(ep)) for ep in self.episodes]
        one = frames_of(self.ds, self.episodes[0], cameras, 0, 1, self.inputs)
        self.step_bytes = sum(v.numel() * v.element_size() for v in one.values())
        self.cache: dict[int, dict[str, torch.Tensor]] = {}
        self.cache_bytes, self.cached_bytes = memory_share() if cache_bytes is None else cache_bytes, 0

    def _window(self, i: int, start: int, stop: int) -> dict[str, torch.Tensor]:
        if i not in self.cache:
            size = self.lengths[i] * self.step_bytes
            if self.cached_bytes + size > self.cache_bytes:
                return frames_of(self.ds, self.episodes[i], self.cameras, start, stop, self.inputs)
            self.cache[i] = frames_of(self.ds, self.episodes[i], self.cameras, 0, self.lengths[i], self.inputs)
            self.cached_bytes += size
        return {key: v[start:stop] for key, v in self.cache[i].items()}

    def batch(self, index: np.ndarray, first: np.ndarray, n: np.ndarray, length: int) -> dict[str, torch.Tensor]:
        """Frames of windows `first[b] .. first[b] + n[b] - 1` of demonstrations `index[b]`, each padded to `length`
        with its last frame, flattened to a batch of `B * length` frames (window-major)."""
        out: dict[str, torch.Tensor] = {}
        for b, (i, f, k) in enumerate(zip(index.tolist(), first.tolist(), n.tolist(), strict=True)):
            for key, v in self._window(i, f, f + k).items():  # copied once, into the batch
                if key not in out:
                    out[key] = v.new_empty((len(index) * length, *v.shape[1:]))
                rows = out[key][b * length:(b + 1) * length]
                rows[:k] = v
                rows[k:] = v[k - 1]
        return out

    def close(self) -> None:
        self.ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def encode_demos(encoder, demos: str, cameras: list[str], batch: int = 32, progress: bool = True,
                 device: str = "cpu") -> list[np.ndarray]:
    """(T_i, F) features of every demonstration by a frozen encoder: each demonstration from a `reset()`, its
    frames in order, in batches of consecutive steps, on `device` (the encoder is moved there)."""
    out = []
    encoder.to(device).eval()
    with Dataset(demos) as ds, torch.no_grad():
        for ep in tqdm(ds.episodes, desc="encode demos", disable=not progress):
            T = len(ds.actions(ep))
            encoder.reset()  # a stateful encoder runs each demonstration from its start, as in closed loop
            out.append(np.concatenate([
                encoder({k: v.to(device) for k, v in frames_of(ds, ep, cameras, s, min(s + batch, T),
                                                                encoder.inputs).items()}).cpu().numpy()
                for s in range(0, T, batch)]).astype(np.float32))
    return out
