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
    """Batches of frame windows of a demonstrations file, for an encoder trained with the policy.

    Decoding the file's compressed images is a large part of a step, so the decoded frames are kept in memory: one
    tensor per key (images as uint8) holding the demonstrations end to end, each demonstration decoded when a batch
    first asks for it, and a batch is gathered from it by frame index in one indexing operation per key. The store
    lies on `device` where that is a GPU with room for it (half its free memory), else in CPU memory (pinned for a
    GPU, so the batch's copy runs beside the computation). It holds the first demonstrations that fit in
    `cache_bytes` (default `memory_share()`; the `cpu` presets' largest, pick_place_clutter's, are 3.6 GiB of
    colour and 8.6 GiB with depth); a window of any other demonstration is read from the file at every step (whole
    demonstrations would not fit in memory at paper size). Either way, the same frames."""

    def __init__(self, demos: str | os.PathLike, cameras: list[str], inputs, cache_bytes: int | None = None,
                 device: str = "cpu"):
        self.ds = Dataset(demos)
        self.episodes, self.cameras, self.inputs = self.ds.episodes, cameras, tuple(inputs)
        self.lengths = np.array([len(self.ds.actions(ep)) for ep in self.episodes])
        one = frames_of(self.ds, self.episodes[0], cameras, 0, 1, self.inputs)
        self.step_bytes = sum(v.numel() * v.element_size() for v in one.values())
        budget = memory_share() if cache_bytes is None else cache_bytes
        self.stored = np.cumsum(self.lengths) * self.step_bytes <= budget  # a prefix of the demonstrations
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        rows = int(self.lengths[self.stored].sum())
        on_gpu = device.startswith("cuda") and rows * self.step_bytes <= torch.cuda.mem_get_info(device)[0] / 2
        self.pin = device.startswith("cuda") and not on_gpu
        self.store = {key: torch.empty((rows, *v.shape[1:]), dtype=v.dtype, device=device if on_gpu else "cpu",
                                       pin_memory=self.pin) for key, v in one.items()}
        self.decoded = np.zeros(len(self.episodes), dtype=bool)

    def batch(self, index: np.ndarray, first: np.ndarray, n: np.ndarray, length: int) -> dict[str, torch.Tensor]:
        """Frames of windows `first[b] .. first[b] + n[b] - 1` of demonstrations `index[b]`, each padded to `length`
        with its last frame, flattened to a batch of `B * length` frames (window-major), on the store's device."""
        steps = np.clip(first[:, None] + np.minimum(np.arange(length), n[:, None] - 1), 0,
                        self.lengths[index][:, None] - 1)  # (B, length) step of each row
        for i in np.unique(index[self.stored[index] & ~self.decoded[index]]):
            o, T = self.offsets[i], self.lengths[i]
            for key, v in frames_of(self.ds, self.episodes[i], self.cameras, 0, T, self.inputs).items():
                self.store[key][o:o + T] = v
            self.decoded[i] = True
        where = next(iter(self.store.values())).device
        rows = torch.from_numpy((self.offsets[index][:, None] + steps).ravel()).to(where)
        out = {key: torch.empty((len(rows), *v.shape[1:]), dtype=v.dtype, device=where, pin_memory=self.pin)
               for key, v in self.store.items()}
        stored = np.repeat(self.stored[index], length)
        if stored.all():  # the common case: one gather per key
            for key, v in self.store.items():
                torch.index_select(v, 0, rows, out=out[key])
            return out
        kept = torch.from_numpy(np.flatnonzero(stored)).to(where)
        for key, v in self.store.items():
            out[key][kept] = v[rows[kept]]
        for b in np.flatnonzero(~self.stored[index]):  # read from the file, the rows' step range
            lo, hi = int(steps[b].min()), int(steps[b].max()) + 1
            window = frames_of(self.ds, self.episodes[index[b]], self.cameras, lo, hi, self.inputs)
            for key, v in window.items():
                out[key][b * length:(b + 1) * length] = v[steps[b] - lo]
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
