"""Train a policy on demonstrations, through its encoder: frozen encoders are run once over every demonstration
and their features cached; trainable ones train with the policy on frames read lazily from the HDF5 file.

The policy folder gets `run.json` (`dckp.policy.folder`: task, image size, cameras and the encoder spec,
everything that rebuilds the observation), for a frozen encoder `features.h5` (its output for every
demonstration step, reused while the encoder spec and the demonstrations are unchanged), and the policy files of
`train_policy`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from dckp.data import Dataset
from dckp.encoders import build_encoder
from dckp.policy.config import PolicyConfig
from dckp.policy.folder import write_run
from dckp.policy.model import proprioception
from dckp.policy.train import train_policy
from dckp.policy.validate import Validator
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


def _cached(path: Path, key: str) -> list[np.ndarray] | None:
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if f.attrs.get("key") != key:
            return None
        return [f[f"demo_{i}"][()] for i in range(len(f))]


def train_on_demos(demos: str | os.PathLike, encoder_spec: dict, cfg: PolicyConfig, out_dir: str | os.PathLike,
                   progress: bool = True) -> dict:
    """Train the policy of encoder `encoder_spec` (`EncoderConfig.spec()`) on a demonstrations file; with
    `cfg.val_every`, kept checkpoints are rolled out on validation seeds in background processes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Dataset(demos) as ds:
        task, cameras = ds.task, ds.streams(ds.episodes[0])
        image_size = int(ds.frames(ds.episodes[0], cameras[0], "rgb", 0, 1).shape[1])
        actions = [ds.actions(ep) for ep in ds.episodes]
        proprio = [proprioception({k: ds.array(ep, k) for k in ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")},
                                  cfg.proprio) for ep in ds.episodes]
    with torch.random.fork_rng(devices=[]):  # a trainable encoder's initial weights depend on the seed alone
        torch.manual_seed(cfg.seed)
        encoder = build_encoder(encoder_spec, cameras, image_size)
    write_run(out, task, image_size, cameras, encoder_spec, demos)
    validator = None
    if cfg.val_every:
        validator = Validator(out, cfg.val_episodes, cfg.val_workers,
                              lambda folder: write_run(folder, task, image_size, cameras, encoder_spec, demos))
    try:
        if encoder.trainable:
            with FrameWindows(demos, cameras, encoder.inputs) as frames:
                return train_policy(proprio, actions, cfg, out, progress, encoder, frames, validator)
        features = _features(encoder, encoder_spec, demos, cameras, cfg, out, progress)
        obs = [np.concatenate([f, p], 1) for f, p in zip(features, proprio, strict=True)]
        return train_policy(obs, actions, cfg, out, progress=progress, validator=validator)
    finally:
        if validator is not None:
            validator.terminate()  # after close(), or an interrupt: the next run rolls out what is left


def _features(encoder, encoder_spec: dict, demos, cameras: list[str], cfg: PolicyConfig, out: Path,
              progress: bool) -> list[np.ndarray]:
    """A frozen encoder's features of every demonstration, from `features.h5` while the encoder spec and the
    demonstrations are unchanged, else computed and saved there."""
    absolute = {**encoder_spec, "artefacts": {k: str(Path(v).resolve())
                                              for k, v in encoder_spec.get("artefacts", {}).items()}}
    key = json.dumps({"demos": str(Path(demos).resolve()), "mtime": os.path.getmtime(demos), "encoder": absolute},
                     sort_keys=True)
    cache = out / "features.h5"
    features = _cached(cache, key)
    if features is None:
        features = encode_demos(encoder, str(demos), cameras, progress=progress, device=cfg.device)
        tmp = cache.with_name(".features.h5.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["key"] = key
            for i, x in enumerate(features):
                f[f"demo_{i}"] = x
        os.replace(tmp, cache)
    return features
