"""The observation-encoder interface: every encoder (DON keypoints, ground-truth keypoints, baselines) maps a
batch of camera frames to one feature vector per frame, so the policy never depends on which one it gets.

`frames` holds, for each camera `<cam>`: `<cam>_rgb (B, H, W, 3) uint8` (top row first), `<cam>_depth (B, H, W)`
float32 metres (0 = invalid), `<cam>_K (B, 3, 3)` and `<cam>_pose (B, 4, 4)` camera-to-world (OpenCV axes), as in
docs/conventions.md. An encoder concatenates its per-camera features in the order of `frame_cameras(frames)`
(sorted camera names), so `encode(frames).shape[1] == feature_dim(frame_cameras(frames))`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from torch import Tensor

from dckp.errors import DckpError


class Encoder(Protocol):
    needs_images: bool  # False: only K and pose are read (and object_pose), so closed loop need not render

    def feature_dim(self, cameras: Sequence[str]) -> int:
        """F, the length of the feature vector for frames from these cameras."""

    def encode(self, frames: Mapping[str, Tensor]) -> Tensor:
        """`(B, F)` features of a batch of frames."""


_ENCODERS: dict[str, Callable[..., Encoder]] = {}


def frame_cameras(frames: Mapping[str, Tensor]) -> list[str]:
    """The sorted camera names of `frames` (those with a `<cam>_rgb` entry)."""
    return sorted(key[: -len("_rgb")] for key in frames if key.endswith("_rgb"))


def register_encoder(name: str):
    """Class (or factory) decorator: `get_encoder(name)` returns it."""

    def register(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = factory
        return factory

    return register


def get_encoder(name: str) -> Callable[..., Encoder]:
    """The encoder class (or factory) registered as `name`; DckpError for an unknown name."""
    if name not in _ENCODERS:
        raise DckpError(f"unknown encoder {name!r}; choose from {sorted(_ENCODERS)}", field="encoder")
    return _ENCODERS[name]
