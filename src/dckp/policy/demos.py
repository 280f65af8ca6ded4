"""Train a policy on demonstrations through a frozen encoder: encode once, cache, then train on the cache.

The policy folder gets `run.json` (task, image size, cameras, encoder spec: everything `dckp evaluate` needs to
rebuild the observation; its paths are relative to the policy folder, so the folder can move with its run),
`features.h5` (the encoder's output for every demonstration step, reused while the
encoder spec and the demonstrations are unchanged) and the policy files of `train_policy`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from dckp.config import save_json
from dckp.data import Dataset
from dckp.encoders import build_encoder
from dckp.policy.config import PolicyConfig
from dckp.policy.model import proprioception
from dckp.policy.train import train_policy

PATH_KWARGS = ("run", "references")  # encoder kwargs that are paths: run.json stores them relative to its folder


def frames_of(ds: Dataset, episode: str, cameras: list[str], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Encoder input for steps start..stop-1 of a demonstration."""
    frames = {}
    for cam in cameras:
        fr = [ds.frame(episode, cam, t) for t in range(start, stop)]
        for key in ("rgb", "depth", "K", "pose"):
            frames[f"{cam}_{key}"] = torch.from_numpy(np.stack([f[key] for f in fr]))
    frames["object_pose"] = torch.from_numpy(ds.array(episode, "object_pose")[start:stop])
    return frames


def encode_demos(encoder, demos: str, cameras: list[str], batch: int = 32, progress: bool = True) -> list[np.ndarray]:
    """(T_i, F) encoder features of every demonstration."""
    out = []
    with Dataset(demos) as ds:
        for ep in tqdm(ds.episodes, desc="encode demos", disable=not progress):
            T = len(ds.actions(ep))
            out.append(np.concatenate([encoder.encode(frames_of(ds, ep, cameras, s, min(s + batch, T))).numpy()
                                       for s in range(0, T, batch)]).astype(np.float32))
    return out


def _cached(path: Path, key: str) -> list[np.ndarray] | None:
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if f.attrs.get("key") != key:
            return None
        return [f[f"demo_{i}"][()] for i in range(len(f))]


def _relative(path: str | os.PathLike, folder: Path) -> str:
    return os.path.relpath(Path(path).resolve(), folder.resolve())


def train_on_demos(demos: str | os.PathLike, encoder_spec: dict, cfg: PolicyConfig, out_dir: str | os.PathLike,
                   progress: bool = True) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Dataset(demos) as ds:
        task, cameras = ds.task, ds.streams(ds.episodes[0])
        image_size = int(ds.frame(ds.episodes[0], cameras[0], 0)["rgb"].shape[0])
        actions = [ds.actions(ep) for ep in ds.episodes]
        proprio = [proprioception({k: ds.array(ep, k) for k in ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")},
                                  cfg.proprio) for ep in ds.episodes]
    kwargs = encoder_spec.get("kwargs", {})
    paths = {k: kwargs[k] for k in PATH_KWARGS if k in kwargs}
    absolute = {**encoder_spec, "kwargs": {**kwargs, **{k: str(Path(v).resolve()) for k, v in paths.items()}}}
    key = json.dumps({"demos": str(Path(demos).resolve()), "mtime": os.path.getmtime(demos), "encoder": absolute},
                     sort_keys=True)
    cache = out / "features.h5"
    features = _cached(cache, key)
    if features is None:
        torch.set_grad_enabled(False)
        features = encode_demos(build_encoder(encoder_spec), str(demos), cameras, progress=progress)
        torch.set_grad_enabled(True)
        tmp = cache.with_name(".features.h5.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["key"] = key
            for i, x in enumerate(features):
                f[f"demo_{i}"] = x
        os.replace(tmp, cache)
    stored = {**encoder_spec, "kwargs": {**kwargs, **{k: _relative(v, out) for k, v in paths.items()}}}
    save_json({"task": task, "image_size": image_size, "cameras": cameras, "encoder": stored,
               "demos": _relative(demos, out)}, out / "run.json")
    obs = [np.concatenate([f, p], 1) for f, p in zip(features, proprio, strict=True)]
    return train_policy(obs, actions, cfg, out, progress=progress)
