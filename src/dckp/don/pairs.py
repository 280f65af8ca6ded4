"""Training pairs for the Dense Object Net from pretraining-view files with fused object masks.

A pair: pick a scene, then two of its frames (any streams: wrist, overview, free cameras) whose camera poses
differ by more than `min_translation` metres or `min_rotation_deg` degrees; pick one object uniformly among
those with mask pixels in both frames (the other objects count as background); sample matches from that
object's mask in I_a (depth and poses, with the occlusion test), object non-matches from its mask in I_b and
background non-matches from the rest of I_b (table, other objects, arm). A pair without an object in both
masks, or with too few matches, is drawn again.

Arm-only sequences (`arm_N` episodes) give pairs in which the arm is the object (its mask comes from
fusing the arm-only free views): the arm gets consistent descriptors of its own, and in ordinary scenes it
is background, so object descriptors are pushed away from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dckp.data import Dataset
from dckp.errors import DckpError
from dckp.geometry.correspondence import sample_matches, sample_non_matches
from dckp.training import memory_share

PRIOR_WORK_DISTANCE = (0.5, 0.9)  # metres from the scene centre: the prior work's fixed-distance camera


def _scene_centre(ds: Dataset, episode: str) -> np.ndarray:
    return ds.f[f"data/{episode}/fused/points"][()].mean(0)


def check_views(path: str) -> None:
    """A views file fit for training: every frame sound (`Dataset.validate`) and masks from `dckp fuse`."""
    with Dataset(path) as ds:
        ds.expect("views")
        for ep in ds.episodes:
            if not ep.startswith("arm_") and not any(k.endswith("_mask") for k in ds.keys(ep)):
                raise DckpError(f"no object masks in {ep}; run `dckp fuse {path}` first", path=path)
        ds.validate()


@dataclass
class Frame:
    file: int
    episode: str
    stream: str
    t: int
    pose: np.ndarray


class PairSampler:
    """Draws training pairs from one or more view files that `dckp fuse` has given masks.

    Decoded frames are kept in memory once read, up to `cache_bytes` (default `dckp.training.memory_share()`, taken
    where the sampler is made: in each DataLoader worker; decoding the file's compressed images took half of a
    pair's time), and each frame's partners far enough apart are listed once."""

    def __init__(self, paths: list[str], n_matches: int, n_object: int, n_background: int,
                 min_translation: float = 0.2, min_rotation_deg: float = 20.0, arm_fraction: float = 0.1,
                 tol: float = 0.003, seed: int = 0, max_tries: int = 50, episodes: dict | None = None,
                 prior_work: bool = False, cache_bytes: int | None = None):
        self.datasets = [Dataset(p) for p in paths]
        self.cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self.cache_bytes, self.cached_bytes = memory_share() if cache_bytes is None else cache_bytes, 0
        self.partners: dict[tuple, list[Frame]] = {}
        self.n_matches, self.n_object, self.n_background = n_matches, n_object, n_background
        self.min_translation, self.min_rotation = min_translation, np.deg2rad(min_rotation_deg)
        self.arm_fraction, self.tol, self.max_tries = arm_fraction, tol, max_tries
        self.prior_work = prior_work
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.scenes, self.arm = [], []
        for i, ds in enumerate(self.datasets):
            for ep in (episodes or {}).get(ds.path, ds.episodes):
                frames = self._frames(i, ds, ep)
                if prior_work:
                    if ep.startswith("arm_"):
                        continue
                    frames = [f for f in frames if f.stream == "free" and PRIOR_WORK_DISTANCE[0]
                              <= np.linalg.norm(f.pose[:3, 3] - _scene_centre(ds, ep)) <= PRIOR_WORK_DISTANCE[1]]
                if frames:
                    (self.arm if ep.startswith("arm_") else self.scenes).append(frames)
        if not self.scenes:
            if prior_work:
                raise DckpError(f"no masked free-camera frames at {PRIOR_WORK_DISTANCE} m from a scene's centre "
                                "(prior_work needs them)", path=paths[0])
            raise DckpError(f"no scene frames with masks; run `dckp fuse {paths[0]}` first", path=paths[0])

    @staticmethod
    def _frames(i: int, ds: Dataset, episode: str) -> list[Frame]:
        frames = []
        for stream in ds.streams(episode):
            if f"{stream}_mask" not in ds.f[f"data/{episode}/obs"]:
                continue
            poses = ds.array(episode, f"{stream}_pose")
            frames += [Frame(i, episode, stream, t, poses[t]) for t in range(len(poses))]
        return frames

    def _load(self, fr: Frame) -> dict[str, torch.Tensor]:
        key = (fr.file, fr.episode, fr.stream, fr.t)
        if key not in self.cache:
            out = self._read(fr)
            size = sum(v.numel() * v.element_size() for v in out.values())
            if self.cached_bytes + size > self.cache_bytes:
                return out
            self.cache[key], self.cached_bytes = out, self.cached_bytes + size
        return self.cache[key]

    def _read(self, fr: Frame) -> dict[str, torch.Tensor]:
        ds = self.datasets[fr.file]
        data = ds.frame(fr.episode, fr.stream, fr.t)
        mask = ds.f[f"data/{fr.episode}/obs/{fr.stream}_mask"][fr.t]
        if self.prior_work:
            mask = (mask > 0).astype(np.uint8)  # one foreground mask for all objects
        return {"rgb": torch.from_numpy(data["rgb"]), "depth": torch.from_numpy(data["depth"]),
                "K": torch.from_numpy(data["K"]).double(), "pose": torch.from_numpy(data["pose"]).double(),
                "mask": torch.from_numpy(mask)}

    def _far(self, pool: list[list[Frame]], scene: int, index: int) -> list[Frame]:
        """The frames of the scene whose camera poses are far enough from frame `index`'s (listed once)."""
        key = (pool is self.arm, scene, index)
        if key not in self.partners:
            frames = pool[scene]
            self.partners[key] = [f for f in frames if self.far_apart(frames[index].pose, f.pose)]
        return self.partners[key]

    def far_apart(self, a: np.ndarray, b: np.ndarray) -> bool:
        translation = np.linalg.norm(a[:3, 3] - b[:3, 3])
        cos = np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1)
        return translation > self.min_translation or np.arccos(cos) > self.min_rotation

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()

    def sample(self, rng: np.random.Generator | None = None, generator: torch.Generator | None = None
               ) -> dict[str, torch.Tensor]:
        """One pair: `rgb_a`, `rgb_b` (H,W,3) uint8, `uv_a`, `uv_b` (m,2), `nm_object` (m,n_o,2) with
        `nm_object_valid` (m,n_o), `nm_background` (m,n_b,2) with `nm_background_valid`, and `object`. It is
        drawn with `rng` and `generator` where given, else with the sampler's own (seeded `seed`)."""
        rng = self.rng if rng is None else rng
        generator = self.generator if generator is None else generator
        for _ in range(self.max_tries):
            pool = self.arm if self.arm and rng.random() < self.arm_fraction else self.scenes
            scene = rng.integers(len(pool))
            index = rng.integers(len(pool[scene]))
            a, far = pool[scene][index], self._far(pool, scene, index)
            if not far:
                continue
            b = far[rng.integers(len(far))]
            fa, fb = self._load(a), self._load(b)
            common = sorted(set(fa["mask"].unique().tolist()) & set(fb["mask"].unique().tolist()) - {0})
            if not common:
                continue
            obj = common[rng.integers(len(common))]
            uv_a, uv_b = sample_matches(fa["mask"] == obj, fa["depth"].double(), fa["K"], fa["pose"],
                                        fb["depth"].double(), fb["K"], fb["pose"], self.n_matches, self.tol,
                                        generator)
            if len(uv_a) < min(10, self.n_matches):
                continue
            nm_obj, ok_obj = sample_non_matches(uv_b, fb["mask"] == obj, self.n_object, generator=generator)
            nm_bg, ok_bg = sample_non_matches(uv_b, fb["mask"] != obj, self.n_background,
                                              generator=generator)
            return {"rgb_a": fa["rgb"], "rgb_b": fb["rgb"], "mask_a": fa["mask"], "mask_b": fb["mask"],
                    "uv_a": uv_a.float(), "uv_b": uv_b.float(),
                    "nm_object": nm_obj.float(), "nm_object_valid": ok_obj,
                    "nm_background": nm_bg.float(), "nm_background_valid": ok_bg,
                    "object": torch.tensor(obj), "arm": torch.tensor(pool is self.arm)}
        raise DckpError(f"no valid pair in {self.max_tries} draws (masks empty or poses too similar?)",
                        path=self.datasets[0].path)
