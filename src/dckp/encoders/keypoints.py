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

from collections.abc import Mapping, Sequence

import torch

from dckp.encoders.base import frame_cameras, register_encoder
from dckp.errors import DckpError
from dckp.geometry.camera import project, transform
from dckp.keypoints.extract import extract_keypoints, keypoints_3d, normalise_uv
from dckp.keypoints.select import load_references

FORMS = ("2d", "depth", "camera", "world")


def _form_features(uv, depth, K, pose, form: str) -> torch.Tensor:
    H, W = depth.shape[-2:]
    if form == "2d":
        return normalise_uv(uv, H, W)
    return keypoints_3d(uv, depth, K, pose, frame=form)


class DonKeypoints:
    needs_images = True

    def __init__(self, run: str, references: str, form: str = "depth", temperature: float = 0.05,
                 mode: str = "mode"):
        from dckp.don.train import load_don

        if form not in FORMS:
            raise DckpError(f"unknown keypoint form {form!r}; choose from {list(FORMS)}", field="form")
        self.model = load_don(run)
        self.refs, self.meta = load_references(references)
        self.form, self.temperature, self.mode = form, temperature, mode

    def feature_dim(self, cameras: Sequence[str]) -> int:
        return sum(len(self.refs[c]["uv"]) * (2 if self.form == "2d" else 3) for c in cameras)

    @torch.no_grad()
    def keypoints(self, frames: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{camera: (uv (B,K,2) pixels, confidence (B,K) = peak probability)} and keeps the last extraction."""
        self._last = {}
        for cam in frame_cameras(frames):
            if cam not in self.refs:
                raise DckpError(f"no references for camera {cam!r} (have {sorted(self.refs)})", field="cameras")
            image = frames[f"{cam}_rgb"].permute(0, 3, 1, 2).float() / 255
            self._last[cam] = extract_keypoints(self.model(image), self.refs[cam]["descriptors"], self.temperature,
                                                self.mode)
        return {cam: (k["uv"], k["peak"]) for cam, k in self._last.items()}

    @torch.no_grad()
    def encode(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.keypoints(frames)
        out = [_form_features(k["uv"], frames[f"{cam}_depth"].float(), frames[f"{cam}_K"].float(),
                              frames[f"{cam}_pose"].float(), self.form).flatten(1) for cam, k in self._last.items()]
        return torch.cat(out, 1)


class GroundTruthKeypoints:
    needs_images = False  # K, pose and object_pose; the depth image is read for its size only

    def __init__(self, references: str, form: str = "depth"):
        if form not in FORMS:
            raise DckpError(f"unknown keypoint form {form!r}; choose from {list(FORMS)}", field="form")
        self.refs, self.meta = load_references(references)
        self.form = form

    def feature_dim(self, cameras: Sequence[str]) -> int:
        return sum(len(self.refs[c]["uv"]) * (2 if self.form == "2d" else 3) for c in cameras)

    def points(self, frames, cam) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`uv (B,K,2)` pixels, camera-frame `(B,K,3)` and world `(B,K,3)` points of `cam`'s keypoints."""
        if "object_pose" not in frames:
            raise DckpError("ground-truth keypoints need object_pose in the frames", field="object_pose")
        refs = self.refs[cam]
        poses = frames["object_pose"].float()[:, refs["object"]]  # (B,K,4,4)
        world = transform(poses, refs["local"][:, None, :])[..., 0, :]  # each point moved by its object's pose
        p = transform(torch.linalg.inv(frames[f"{cam}_pose"].float()), world)
        uv, _ = project(p, frames[f"{cam}_K"].float())
        return uv, p, world

    def keypoints(self, frames) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for cam in frame_cameras(frames):
            uv, _, _ = self.points(frames, cam)
            out[cam] = (uv, torch.ones(uv.shape[:2]))
        return out

    def encode(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for cam in frame_cameras(frames):
            uv, p, world = self.points(frames, cam)
            H, W = frames[f"{cam}_depth"].shape[-2:]
            if self.form == "2d":
                f = normalise_uv(uv, H, W)
            elif self.form == "depth":
                f = torch.cat([normalise_uv(uv, H, W), p[..., 2:]], -1)
            else:
                f = p if self.form == "camera" else world
            feats.append(f.flatten(1))
        return torch.cat(feats, 1)


register_encoder("dckp-2d")(lambda run, references, **kw: DonKeypoints(run, references, form="2d", **kw))
register_encoder("dckp-3d")(lambda run, references, form="depth", **kw: DonKeypoints(run, references, form, **kw))
register_encoder("gt-kp")(lambda references, form="depth": GroundTruthKeypoints(references, form))
