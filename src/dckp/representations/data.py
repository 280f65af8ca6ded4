"""Training images for the representations: single frames of every camera stream of views and demos files, or
pairs of frames of one demonstration close in time (Transporter), resized to the method's image size.

`resize_rgb` is the one resizing that both pretraining and the frozen encoders (`dckp.encoders.representations`)
apply, so the policy sees its cameras exactly as the representation was trained to.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from dckp.data import Dataset
from dckp.errors import DckpError
from dckp.training import memory_share

log = logging.getLogger(__name__)


def resize_rgb(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """`(B, H, W, 3)` uint8 frames -> `(B, 3, size, size)` float in [0, 1]: bilinear with antialiasing, rounded to
    8-bit levels (as stored)."""
    x = rgb.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    return x / 255


class FrameSource:
    """Frames of dckp HDF5 files: every `<stream>_rgb` of every episode (views: static scenes filmed by moving
    cameras and arm-only sequences; demos: the demonstrations' cameras). Frames are read on demand and, resized,
    kept in memory up to `cache_bytes` (default `dckp.training.memory_share()`). `pairs=True` indexes
    demonstrations only, for pairs of frames at most `max_gap` steps apart (never the same frame)."""

    def __init__(self, files: list[str | os.PathLike], size: int, pairs: bool = False, max_gap: int = 1,
                 cache_bytes: int | None = None):
        if not files:
            raise DckpError("no views or demos files given", field="--views")
        self.size, self.pairs, self.max_gap = size, pairs, max_gap
        self.datasets: list[Dataset] = []
        self.sequences: list[tuple[int, str, str, int]] = []  # (dataset, episode, stream, frames)
        for path in files:
            ds = Dataset(path)
            self.datasets.append(ds)
            if ds.kind not in ("views", "demos"):
                raise DckpError(f"expected a views or demos file, got a {ds.kind!r} file", path=ds.path)
            if pairs and ds.kind != "demos":
                log.warning("%s: a views file; pairs of frames come from demonstrations only, so it is not used",
                            ds.path)
                continue
            for ep in ds.episodes:
                for stream in ds.streams(ep):
                    self.sequences.append((len(self.datasets) - 1, ep, stream, _check_rgb(ds, ep, stream)))
        if pairs:
            self.sequences = [s for s in self.sequences if s[3] >= 2]
            if not self.sequences:
                self.close()
                raise DckpError("transporter learns from pairs of frames of one demonstration: give a demos file "
                                "from `dckp collect` with episodes of 2 frames or more", field="--demos")
        if not self.sequences:
            self.close()
            raise DckpError("no camera frames in the given files", field="--views")
        self.counts = np.array([s[3] for s in self.sequences])
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.cache_bytes, self.cached = memory_share() if cache_bytes is None else cache_bytes, 0

    def __len__(self) -> int:
        """Frames in all (pairs: in demonstrations)."""
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return s, int(index - self.offsets[s])

    def frame(self, s: int, t: int) -> torch.Tensor:
        """Frame `t` of sequence `s`, resized: `(size, size, 3)` uint8."""
        if (s, t) in self.cache:
            return self.cache[(s, t)]
        d, ep, stream, _ = self.sequences[s]
        rgb = torch.from_numpy(self.datasets[d].frames(ep, stream, "rgb", t, t + 1))
        x = (resize_rgb(rgb, self.size)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        if self.cached + x.numel() <= self.cache_bytes:
            self.cache[(s, t)] = x
            self.cached += x.numel()
        return x

    def stack(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """`(B, 3, size, size)` float images in [0, 1] of frames from `frame`."""
        return torch.stack(frames).permute(0, 3, 1, 2).float() / 255

    def sample(self, rng: np.random.Generator, n: int, keep: slice = slice(None)) -> torch.Tensor:
        """`(n, 3, size, size)` frames drawn uniformly from all frames; `keep`: only those draws are read and
        returned (a data-parallel process's share of a batch that every process draws)."""
        return self.stack([self.frame(*self._locate(int(i))) for i in rng.integers(0, len(self), n)[keep]])

    def partner(self, rng: np.random.Generator, s: int, t: int) -> int:
        """A frame of sequence `s` other than `t`, at most `max_gap` steps from it, drawn uniformly."""
        lo, hi = max(0, t - self.max_gap), min(self.counts[s] - 1, t + self.max_gap)
        u = int(rng.integers(lo, hi))  # hi - lo >= 1 candidates besides t
        return u + 1 if u >= t else u

    def sample_pairs(self, rng: np.random.Generator, n: int, keep: slice = slice(None)
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(source, target)`, each `(n, 3, size, size)`: source frames drawn uniformly, each target a frame of the
        same camera and demonstration at most `max_gap` steps away; `keep` as in `sample`."""
        pairs = []
        for i in rng.integers(0, len(self), n):
            s, t = self._locate(int(i))
            pairs.append((s, t, self.partner(rng, s, t)))
        pairs = pairs[keep]
        return self.stack([self.frame(s, t) for s, t, _ in pairs]), self.stack([self.frame(s, u) for s, _, u in pairs])

    def spread(self, n: int) -> list[tuple[int, int]]:
        """`n` (sequence, frame) positions evenly spread over all frames: the pictures' inputs."""
        return [self._locate(int(i)) for i in np.linspace(0, len(self) - 1, n).round()]

    def close(self) -> None:
        for ds in self.datasets:
            ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_rgb(ds: Dataset, episode: str, stream: str) -> int:
    """The number of frames of a stream, after checking that they are uint8 (T, H, W, 3)."""
    field = f"data/{episode}/obs/{stream}_rgb"
    rgb = ds.f[field]
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise DckpError(f"rgb must be uint8 (T, H, W, 3), got {rgb.dtype} {rgb.shape}", path=ds.path, field=field)
    if len(rgb) == 0:
        raise DckpError("no frames", path=ds.path, field=field)
    return len(rgb)
