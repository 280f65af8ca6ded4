"""Train a policy on a demonstrations file, through its encoder: frozen encoders are run once over every
demonstration and their features cached; trainable ones train with the policy on frames read lazily from the HDF5
file. With `val_every`, kept checkpoints are rolled out on validation seeds in background processes
(`dckp.evaluation.validation`) while training goes on, and the best is kept.

The policy folder gets `run.json` (`dckp.policy.folder`: task, image size, cameras and the encoder spec,
everything that rebuilds the observation), for a frozen encoder `features.h5` (its output for every
demonstration step, reused while the encoder spec, its artefacts' contents and the demonstrations are unchanged),
and the policy files of `train_policy`. A training that starts afresh (no `policy_last.safetensors`) first removes
an earlier training's kept checkpoints and validation records.

This module sits above `dckp.policy` and `dckp.evaluation`: training with validation rollouts needs both.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from dckp.data import Dataset
from dckp.encoders import build_encoder
from dckp.evaluation.validation import Validator
from dckp.policy.config import PolicyConfig
from dckp.policy.demos import FrameWindows, encode_demos
from dckp.policy.folder import write_run
from dckp.policy.kept import forget_kept
from dckp.policy.model import PROPRIO_KEYS, proprioception
from dckp.policy.train import LAST, train_policy


def cached_features(path: Path, key: str | None = None) -> list[np.ndarray] | None:
    """The per-demonstration features cached in a policy folder's `features.h5`; None when it is missing or, given
    `key`, was made for another encoder spec or demonstrations file."""
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        if key is not None and f.attrs.get("key") != key:
            return None
        return [f[f"demo_{i}"][()] for i in range(len(f))]


def train_on_demos(demos: str | os.PathLike, encoder_spec: dict, cfg: PolicyConfig, out_dir: str | os.PathLike,
                   progress: bool = True, budget_s: float = 0.0) -> dict:
    """Train the policy of encoder `encoder_spec` (`EncoderConfig.spec()`) on a demonstrations file; with
    `cfg.val_every`, kept checkpoints are rolled out on validation seeds in background processes; `budget_s` as
    `train_policy`'s."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Dataset(demos) as ds:
        task, cameras = ds.task, ds.streams(ds.episodes[0])
        image_size = int(ds.frames(ds.episodes[0], cameras[0], "rgb", 0, 1).shape[1])
        actions = [ds.actions(ep) for ep in ds.episodes]
        proprio = [proprioception({k: ds.array(ep, k) for k in PROPRIO_KEYS}, cfg.proprio) for ep in ds.episodes]
    with torch.random.fork_rng(devices=[]):  # a trainable encoder's initial weights depend on the seed alone
        torch.manual_seed(cfg.seed)
        encoder = build_encoder(encoder_spec, cameras, image_size)
    write_run(out, task, image_size, cameras, encoder_spec, demos)
    if not (out / LAST).exists():
        forget_kept(out)
    validator = None
    if cfg.val_every:
        validator = Validator(out, cfg.val_episodes, cfg.val_workers,
                              lambda folder: write_run(folder, task, image_size, cameras, encoder_spec, demos))
    try:
        if encoder.trainable:
            with FrameWindows(demos, cameras, encoder.inputs, device=cfg.device) as frames:
                return train_policy(proprio, actions, cfg, out, progress, encoder, frames, validator, budget_s)
        features = _features(encoder, encoder_spec, demos, cameras, cfg, out, progress)
        obs = [np.concatenate([f, p], 1) for f, p in zip(features, proprio, strict=True)]
        return train_policy(obs, actions, cfg, out, progress=progress, validator=validator, budget_s=budget_s)
    finally:
        if validator is not None:
            validator.terminate()  # after close(), or an interrupt: the next run rolls out what is left


def _features(encoder, encoder_spec: dict, demos, cameras: list[str], cfg: PolicyConfig, out: Path,
              progress: bool) -> list[np.ndarray]:
    """A frozen encoder's features of every demonstration, from `features.h5` while the encoder spec, its
    artefacts' contents and the demonstrations are unchanged, else computed and saved there."""
    absolute = {**encoder_spec, "artefacts": {k: [str(Path(v).resolve()), _contents(Path(v))]
                                              for k, v in encoder_spec.get("artefacts", {}).items()}}
    key = json.dumps({"demos": str(Path(demos).resolve()), "mtime": os.path.getmtime(demos), "encoder": absolute},
                     sort_keys=True)
    cache = out / "features.h5"
    features = cached_features(cache, key)
    if features is None:
        features = encode_demos(encoder, str(demos), cameras, progress=progress, device=cfg.device)
        tmp = cache.with_name(".features.h5.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["key"] = key
            for i, x in enumerate(features):
                f[f"demo_{i}"] = x
        os.replace(tmp, cache)
    return features


def _contents(path: Path) -> str:
    """sha256 of an artefact file, or of a folder's weights (`*.safetensors`): a DON trained again at the same path
    gives other features."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()[:16]
