"""The observation-encoder interface and its registry.

An encoder is an `nn.Module` that maps a batch of camera frames to one feature vector per frame. Every encoder
(DON keypoints, ground-truth keypoints, end-to-end CNNs, frozen pretrained representations, none at all) is a
subclass of `Encoder` with a class attribute `name`; defining the subclass registers it (as robomimic's
`EncoderCore` does), and everything else derives from the registry: the CLI's choices and flags, `dckp run`, the
benchmarks. An encoder declares what it needs and is:

- `options`: the dataclass of its own settings (CLI flags; saved in the policy folder's `run.json`);
- `inputs`: which images it reads, of `rgb` and `depth`, and `object_pose` (privileged ground truth: only
  `gt-kp` may read it). Camera intrinsics `K` and poses are always there. An encoder that reads no image lets
  closed-loop evaluation skip rendering;
- `artefacts`: the files it is built from, of `don` (a `dckp pretrain` run folder) and `references` (a
  `dckp keypoints` file); an encoder that needs no DON lets `dckp run` skip the DON stages;
- `trainable`: trained end to end with the policy (its weights are saved with the policy), or frozen (its
  features are computed once and cached);
- `keypoints`: whether it produces keypoints, which the report and videos then draw (`image_keypoints`).

It is built for the cameras and image size of the data, so `output_dim` sizes the policy before any data is seen.
`frames` holds, for each camera `<cam>`: `<cam>_rgb (B, H, W, 3) uint8` (top row first), `<cam>_depth (B, H, W)`
float32 metres (0 = invalid), `<cam>_K (B, 3, 3)` and `<cam>_pose (B, 4, 4)` camera-to-world (OpenCV axes), as in
docs/conventions.md, and `object_pose (B, N, 4, 4)`. Features are concatenated over cameras in sorted order.
An encoder may keep state across an episode; `reset()` is called at each episode's start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from torch import Tensor, nn

from dckp.registry import Registry

INPUTS = ("rgb", "depth", "object_pose")
ARTEFACTS = ("don", "references", "representation")
_SUPPORT = {"augment", "base", "config"}  # modules of this package that define no encoder


@dataclasses.dataclass
class NoOptions:
    """An encoder without settings of its own."""


class Encoder(nn.Module):
    name: ClassVar[str | None] = None  # the registry key; a class without one (a base) is not registered
    options: ClassVar[type] = NoOptions
    inputs: ClassVar[tuple[str, ...]] = ()
    artefacts: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = False
    keypoints: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name:
            register(cls)

    def __init__(self, cameras: Sequence[str], image_size: int, options=None, **artefacts: str):
        super().__init__()
        self.cameras, self.image_size = sorted(cameras), int(image_size)
        self.opts = options if options is not None else self.options()

    @classmethod
    def needs_images(cls) -> bool:
        return "rgb" in cls.inputs or "depth" in cls.inputs

    def output_dim(self) -> int:
        """F, the length of the feature vector of one frame from every camera."""
        raise NotImplementedError

    def forward(self, frames: Mapping[str, Tensor]) -> Tensor:
        """`(B, F)` features of a batch of frames."""
        raise NotImplementedError

    def reset(self) -> None:
        """Called at the start of each episode; stateless encoders do nothing."""

    def image_keypoints(self, frames: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Encoders with `keypoints`: {camera: (uv (B, K, 2) pixels, confidence (B, K))} for drawing."""
        raise NotImplementedError


def _check(cls: type[Encoder]) -> str:
    bad = [i for i in cls.inputs if i not in INPUTS] + [a for a in cls.artefacts if a not in ARTEFACTS]
    return f"unknown inputs or artefacts {bad}, or options not a dataclass" \
        if bad or not dataclasses.is_dataclass(cls.options) else ""


_REGISTRY: Registry[Encoder] = Registry("encoder", __package__, Path(__file__).parent, _SUPPORT, _check)
register, unregister = _REGISTRY.register, _REGISTRY.unregister
registry = _REGISTRY.all  # every encoder by name, the built-in ones and any registered since
encoder_class = _REGISTRY.get  # the encoder class registered as a name; DckpError for an unknown name
