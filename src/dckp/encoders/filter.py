"""DON keypoints tracked over an episode, so that they survive occlusion.

`dckp-filter`: a particle filter per keypoint over its world position, fusing every camera and time step
(`dckp.keypoints.filter`). Every camera's references are tracked in every camera (a descriptor is the same point
whichever camera sees it), so with two cameras of 16 references each, 32 filters each weigh both views.
`dckp-gate`, its cheap ablation: each camera's DON keypoint as in `dckp-3d`, held at its last confident world
position while the descriptor distance at its mode exceeds `gate_threshold`.

Both keep state: `reset()` starts an episode, and a batch of frames is taken as consecutive steps of one episode,
in order (as `encode_demos` and closed-loop evaluation give them). Both give each camera's keypoints in the
configured form for that camera, as `dckp-3d` and `gt-kp` do: `depth` (u, v normalised to [-1, 1] and z, the
tracked point projected into the camera: it may lie outside the image), `camera` or `world`; `dckp-filter` can
append each keypoint's spread (m), its uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dckp.config import option
from dckp.encoders.keypoints import DonKeypoints, DonOptions3d
from dckp.errors import DckpError
from dckp.geometry.camera import project, transform
from dckp.keypoints.extract import descriptor_distance, extract_keypoints, keypoints_3d, normalise_uv
from dckp.keypoints.filter import FilterConfig, ParticleFilter


@dataclass
class GateOptions(DonOptions3d):
    gate_threshold: float = option(0.3, "dckp-gate: hold a keypoint's last position while the descriptor distance "
                                        "at its mode exceeds this")

    def __post_init__(self):
        super().__post_init__()
        if not self.gate_threshold > 0:
            raise DckpError(f"must be > 0, got {self.gate_threshold}", field="gate_threshold")


@dataclass
class FilterOptions(DonOptions3d, FilterConfig):
    spread: bool = option(False, "dckp-filter: append each keypoint's particle spread (m) to its features")
    follow: str = option("robot0_eye_in_hand", "dckp-filter: the camera on the gripper, whose motion held "
                                                "keypoints follow ('' or a camera the policy does not use: none)")

    def __post_init__(self):
        DonOptions3d.__post_init__(self)
        FilterConfig.__post_init__(self)


class _Tracked(DonKeypoints):
    """What both share: world points tracked per episode, given in each camera's form, and drawn."""

    def __init__(self, cameras, image_size, options=None, don: str = "", references: str = ""):
        super().__init__(cameras, image_size, options, don, references)
        self.reset()

    def output_dim(self) -> int:
        return sum(len(self.refs[c]["uv"]) for c in self.cameras) * (3 + bool(getattr(self.opts, "spread", False)))

    def reset(self) -> None:
        self.last: dict[str, dict[str, torch.Tensor]] | None = None  # the last step's tracks, for pictures

    def track(self, frames: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Advance over the batch (consecutive frames): per camera, `world (B, K, 3)` tracked points, `confidence
        (B, K)` (a heatmap-peak-like probability, for colouring), `raw_uv (B, K, 2)` and `raw_peak (B, K)` the
        DON's own keypoints, and for the filter `spread (B, K)` metres."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, frames: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """`track`, each camera's tracked points also as pixels `uv (B, K, 2)` of that camera."""
        tracks = self.track(frames)
        for cam, t in tracks.items():
            t["uv"] = self._camera(t["world"], frames, cam)[1]
        self.last = tracks
        return tracks

    def _camera(self, world, frames, cam) -> tuple[torch.Tensor, torch.Tensor]:
        """World points `(B, K, 3)` in `cam`'s frame and as its pixels (points behind the camera: at 1 mm)."""
        p = transform(torch.linalg.inv(frames[f"{cam}_pose"].float()), world)
        ahead = torch.cat([p[..., :2], p[..., 2:].clamp(min=1e-3)], -1)
        return p, project(ahead, frames[f"{cam}_K"].float())[0]

    @torch.no_grad()
    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tracks = self.step(frames)
        out = []
        for cam in self.cameras:
            t = tracks[cam]
            if self.form == "world":
                f = t["world"]
            else:
                p, uv = self._camera(t["world"], frames, cam)
                f = p if self.form == "camera" else torch.cat(
                    [normalise_uv(uv, self.image_size, self.image_size), p[..., 2:]], -1)
            if getattr(self.opts, "spread", False):
                f = torch.cat([f, t["spread"][..., None]], -1)
            out.append(f.flatten(1))
        return torch.cat(out, 1)

    def image_keypoints(self, frames):
        """The tracked keypoints of the last `forward` (whose frames these must be), coloured by confidence."""
        if self.last is None:
            raise DckpError(f"{self.name}: image_keypoints needs a forward step since reset", field="frames")
        return {cam: (t["uv"], t["confidence"]) for cam, t in self.last.items()}

    def _don(self, frames, cam) -> torch.Tensor:
        return self.don[0](frames[f"{cam}_rgb"].permute(0, 3, 1, 2).float() / 255)


class GatedKeypoints(_Tracked):
    name = "dckp-gate"
    options = GateOptions

    def reset(self) -> None:
        super().reset()
        self.held: dict[str, torch.Tensor] = {}  # per camera, (K, 3) the last confident world points

    def track(self, frames):
        out = {}
        for cam in self.cameras:
            k = extract_keypoints(self._don(frames, cam), self.refs[cam]["descriptors"], self.opts.temperature,
                                  self.opts.mode)
            depth = frames[f"{cam}_depth"].float()
            p = keypoints_3d(k["uv"], depth, frames[f"{cam}_K"].float(), frames[f"{cam}_pose"].float(), "camera")
            world = transform(frames[f"{cam}_pose"].float(), p)
            confident = (k["distance"] <= self.opts.gate_threshold) & (p[..., 2] > 0)
            held = []
            for t in range(len(world)):
                last = self.held.get(cam)
                self.held[cam] = world[t] if last is None else torch.where(confident[t, :, None], world[t], last)
                held.append(self.held[cam])
            flat = 1.0 / (depth.shape[-1] * depth.shape[-2])  # a held keypoint is drawn as unsure
            out[cam] = {"world": torch.stack(held), "confidence": torch.where(confident, k["peak"], flat),
                        "raw_uv": k["uv"], "raw_peak": k["peak"]}
        return out


class FilteredKeypoints(_Tracked):
    name = "dckp-filter"
    options = FilterOptions

    def __init__(self, cameras, image_size, options=None, don: str = "", references: str = ""):
        super().__init__(cameras, image_size, options, don, references)
        self.filter = ParticleFilter(self.opts)
        self.references = torch.cat([self.refs[c]["descriptors"] for c in self.cameras])  # (K total, D)
        sizes = [len(self.refs[c]["uv"]) for c in self.cameras]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.slices = {c: slice(s, s + n) for c, s, n in zip(self.cameras, starts, sizes, strict=True)}

    def reset(self) -> None:
        super().reset()
        if hasattr(self, "filter"):
            self.filter.reset()

    def track(self, frames):
        desc = torch.stack([self._don(frames, cam) for cam in self.cameras], 1)  # (B, C, D, H, W)
        depth, K, pose = (torch.stack([frames[f"{c}_{key}"].float() for c in self.cameras], 1)
                          for key in ("depth", "K", "pose"))
        world, spread = [], []
        for t in range(len(desc)):
            dist = descriptor_distance(desc[t], self.references)  # (C, K total, H, W)
            gripper = pose[t, self.cameras.index(self.opts.follow)] if self.opts.follow in self.cameras else None
            mean, s = self.filter.step(dist, depth[t], K[t], pose[t], gripper)
            world.append(mean)
            spread.append(s)
        world, spread = torch.stack(world), torch.stack(spread)
        H, W = depth.shape[-2:]
        out = {}
        for i, cam in enumerate(self.cameras):
            raw = extract_keypoints(desc[:, i], self.refs[cam]["descriptors"], self.opts.temperature, self.opts.mode)
            sl = self.slices[cam]
            p, _ = self._camera(world[:, sl], frames, cam)
            radius = spread[:, sl] * K[:, i, None, 0, 0] / p[..., 2].clamp(min=1e-3)  # spread in pixels
            confidence = (1.0 / (math.pi * radius.square() + 1)).clamp(min=1.0 / (H * W))
            out[cam] = {"world": world[:, sl], "spread": spread[:, sl], "spread_px": radius,
                        "confidence": confidence, "raw_uv": raw["uv"], "raw_peak": raw["peak"]}
        return out
