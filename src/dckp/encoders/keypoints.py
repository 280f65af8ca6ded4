"""Keypoint encoders: Dense Object Net keypoints (the method) and ground-truth keypoints (its upper bound).

Both give, per camera (sorted names) and per reference keypoint, either `2d`: (u, v) normalised to [-1, 1],
or one of the 3D forms: `depth`: (u, v, depth at the keypoint) (the paper's best), `camera`: the point in the
camera frame, `world`: in the world frame. Features are flattened and concatenated over cameras.

`dckp-2d` / `dckp-3d`: the frozen DON's descriptor image, the distance of every pixel to each reference
descriptor (normalised by sqrt(D)), softmax(-d / temperature) over the image and its global mode.
`gt-kp`: the same reference pixels, fixed on the object they lie on and moved with its true pose
(`object_pose` in the frames), projected into each camera.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dckp.config import option
from dckp.encoders.base import Encoder
from dckp.errors import DckpError
from dckp.geometry.camera import project, transform
from dckp.keypoints.extract import extract_keypoints, keypoints_3d, normalise_uv
from dckp.keypoints.select import load_references

FORMS_3D = ("depth", "camera", "world")
FORM = option("depth", "3D form of the keypoints: (u, v, depth), camera frame or world frame", choices=FORMS_3D)


@dataclass
class DonOptions:
    temperature: float = option(0.05, "T of the DON keypoint heatmap softmax(-descriptor distance / T)")
    mode: str = option("mode", "DON keypoint: the heatmap's highest pixel (as the paper) or its weighted mean",
                       choices=("mode", "expectation"))

    def __post_init__(self):
        if not self.temperature > 0:
            raise DckpError(f"must be > 0, got {self.temperature}", field="temperature")
        if self.mode not in ("mode", "expectation"):
            raise DckpError(f"must be mode or expectation, got {self.mode!r}", field="mode")


@dataclass
class DonOptions3d(DonOptions):
    form: str = FORM

    def __post_init__(self):
        super().__post_init__()
        _check_form(self.form)


@dataclass
class GroundTruthOptions:
    form: str = FORM

    def __post_init__(self):
        _check_form(self.form)


def _check_form(form: str) -> None:
    if form not in FORMS_3D:
        raise DckpError(f"unknown keypoint form {form!r}; choose from {list(FORMS_3D)}", field="form")


class _Keypoints(Encoder):
    """What both keypoint encoders share: the references, one feature row per keypoint and camera."""

    keypoints = True

    def __init__(self, cameras, image_size, options=None, references: str = "", **artefacts):
        super().__init__(cameras, image_size, options)
        self.refs, self.meta = load_references(references)
        missing = [c for c in self.cameras if c not in self.refs]
        if missing:
            raise DckpError(f"no references for camera(s) {missing} (have {sorted(self.refs)})", path=references)
        self.form = getattr(self.opts, "form", "2d")

    def _apply(self, fn, recurse=True):
        """`.to(device)` moves the references too (they are plain tensors, not buffers: not saved with a policy)."""
        self.refs = {cam: {k: fn(v) for k, v in r.items()} for cam, r in self.refs.items()}
        return super()._apply(fn, recurse)

    def output_dim(self) -> int:
        return sum(len(self.refs[c]["uv"]) * (2 if self.form == "2d" else 3) for c in self.cameras)


class DonKeypoints(_Keypoints):
    name = "dckp-2d"
    options = DonOptions
    inputs = ("rgb", "depth")
    artefacts = ("don", "references")

    def __init__(self, cameras, image_size, options=None, don: str = "", references: str = ""):
        from dckp.don.train import load_don

        super().__init__(cameras, image_size, options, references)
        self.don = [load_don(don)]  # in a list: frozen, and not part of the policy's saved weights

    def _apply(self, fn, recurse=True):
        self.don[0]._apply(fn, recurse)  # `.to(device)` moves the frozen DON too
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def _extract(self, frames: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        out = {}
        for cam in self.cameras:
            image = frames[f"{cam}_rgb"].permute(0, 3, 1, 2).float() / 255
            out[cam] = extract_keypoints(self.don[0](image), self.refs[cam]["descriptors"], self.opts.temperature,
                                         self.opts.mode)
        return out

    def image_keypoints(self, frames):
        return {cam: (k["uv"], k["peak"]) for cam, k in self._extract(frames).items()}

    @torch.no_grad()
    def camera_keypoints(self, frames: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        """Per camera, `extract_keypoints`' outputs plus `features (B, K, 2 or 3)` in the configured form (what
        `forward` concatenates; `dckp.KeypointTracker` returns them)."""
        out = self._extract(frames)
        for cam, k in out.items():
            depth = frames[f"{cam}_depth"].float()
            if self.form == "2d":
                k["features"] = normalise_uv(k["uv"], *depth.shape[-2:])
            else:
                k["features"] = keypoints_3d(k["uv"], depth, frames[f"{cam}_K"].float(),
                                             frames[f"{cam}_pose"].float(), frame=self.form)
        return out

    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([k["features"].flatten(1) for k in self.camera_keypoints(frames).values()], 1)


class DonKeypoints3d(DonKeypoints):
    name = "dckp-3d"
    options = DonOptions3d


class GroundTruthKeypoints(_Keypoints):
    name = "gt-kp"
    options = GroundTruthOptions
    inputs = ("object_pose",)  # privileged: the objects' true poses
    artefacts = ("references",)

    def points(self, frames, cam, local: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`uv (B,K,2)` pixels, camera-frame `(B,K,3)` and world `(B,K,3)` points of `cam`'s keypoints; with `local
        (K,G,3)`, of G other points fixed on each keypoint's object instead (in its frame): `(B,K,G,...)`."""
        if "object_pose" not in frames:
            raise DckpError("ground-truth keypoints need object_pose in the frames", field="object_pose")
        refs = self.refs[cam]
        poses = frames["object_pose"].float()[:, refs["object"]]  # (B,K,4,4)
        world = transform(poses, refs["local"][:, None, :] if local is None else local)  # moved by its object's pose
        B, K, G = world.shape[:3]
        p = transform(torch.linalg.inv(frames[f"{cam}_pose"].float()), world.reshape(B, K * G, 3))
        uv, _ = project(p, frames[f"{cam}_K"].float())
        shape = (B, K) if local is None else (B, K, G)
        return uv.reshape(*shape, 2), p.reshape(*shape, 3), world.reshape(*shape, 3)

    def image_keypoints(self, frames):
        out = {}
        for cam in self.cameras:
            uv, _, _ = self.points(frames, cam)
            out[cam] = (uv, torch.ones(uv.shape[:2]))
        return out

    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for cam in self.cameras:
            uv, p, world = self.points(frames, cam)
            if self.form == "depth":
                f = torch.cat([normalise_uv(uv, self.image_size, self.image_size), p[..., 2:]], -1)
            else:
                f = p if self.form == "camera" else world
            feats.append(f.flatten(1))
        return torch.cat(feats, 1)
