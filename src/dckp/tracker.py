"""`dckp.KeypointTracker`: Dense Object Net keypoints for a robot's control loop, from a DON run and a references
file, with nothing but torch (no simulator is imported).

    tracker = KeypointTracker.load("runs/don", "runs/refs.safetensors", device="cuda")
    kp = tracker.track(rgb, depth, K, pose)        # one camera: Keypoints(points (K, 3), confidence (K,), ...)
    kps = tracker.track({"wrist": rgb_w, "front": rgb_f}, {...}, {...}, {...})   # every camera: {camera: Keypoints}

It runs the policy encoder's own code (`DonKeypoints.camera_keypoints`: the DON, descriptor distances,
softmax(-d / T), its mode, the depth lookup), so its keypoints are the ones a `dckp-3d`/`dckp-2d` policy sees.
Inputs follow docs/conventions.md: `rgb (H, W, 3)` uint8 top row first, `depth (H, W)` float metres (0 invalid),
`K (3, 3)`, `pose (4, 4)` camera-to-world with OpenCV axes; numpy or torch, optionally with a leading batch
dimension. They are checked as the CLI checks its files (`dckp.checks`): a bad frame (millimetre depth, NaN in K or
the pose, a zero focal length, a pose that is not rigid, no valid depth) raises `DckpError` with one line; depth
that is partly missing (NaN, inf) is masked as invalid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from dckp.checks import check_frame
from dckp.encoders.keypoints import FORMS_3D, DonKeypoints, DonKeypoints3d, DonOptions, DonOptions3d
from dckp.errors import DckpError
from dckp.keypoints.select import load_references

FORMS = ("2d", *FORMS_3D)


@dataclass
class Keypoints:
    """One camera's keypoints (leading batch dimension `B` when the inputs had one).

    `points (K, F)`: the configured form, as the policy sees them: `2d` (u, v) in [-1, 1]; `depth` (u, v, z);
    `camera` or `world` (x, y, z) metres. `uv (K, 2)` pixels, `confidence (K,)` the heatmap's peak probability and
    `distance (K,)` the descriptor distance at the keypoint (lower is surer)."""

    points: torch.Tensor
    uv: torch.Tensor
    confidence: torch.Tensor
    distance: torch.Tensor


class KeypointTracker:
    """DON keypoints of the references' cameras; build it with `load`."""

    def __init__(self, encoder: DonKeypoints, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()  # the DON and the references with it
        self._cameras = list(encoder.cameras)

    @classmethod
    def load(cls, don_run, references, form: str = "depth", temperature: float = 0.05, mode: str = "mode",
             device: str | torch.device = "cpu", cameras=None) -> KeypointTracker:
        """A tracker from a `dckp pretrain` run folder and a `dckp keypoints` references file. `form`: `2d`,
        `depth` (the paper's best), `camera` or `world`; `temperature` and `mode` as the policy encoder's options;
        `cameras` defaults to every camera of the references."""
        if form not in FORMS:
            raise DckpError(f"unknown keypoint form {form!r}; choose from {list(FORMS)}", field="form")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise DckpError("no CUDA device here; use device='cpu'", field="device")
        if cameras is None:
            cameras = sorted(load_references(references)[0])
        if form == "2d":
            encoder = DonKeypoints(cameras, 0, DonOptions(temperature, mode), str(don_run), str(references))
        else:
            encoder = DonKeypoints3d(cameras, 0, DonOptions3d(temperature, mode, form), str(don_run), str(references))
        return cls(encoder, device)

    @property
    def cameras(self) -> list[str]:
        return self._cameras

    @property
    def form(self) -> str:
        return self.encoder.form

    def track(self, rgb, depth, K, pose=None, camera: str | None = None) -> Keypoints | dict[str, Keypoints]:
        """Keypoints of one camera's frame (`camera` may be left out when the references have one camera), or,
        given dicts {camera: array} for every camera, {camera: Keypoints}. `pose` may be left out unless the form
        is `world`."""
        if isinstance(rgb, Mapping):
            cams = sorted(rgb)
            unknown = [c for c in cams if c not in self.cameras]
            if unknown:
                raise DckpError(f"no references for camera(s) {unknown} (have {self.cameras})", field="camera")
            pose = pose if pose is not None else {}
            return self._track(cams, {c: (rgb[c], depth[c], K[c], pose.get(c)) for c in cams})
        if camera is None:
            if len(self.cameras) != 1:
                raise DckpError(f"name the camera: the references have {self.cameras}", field="camera")
            camera = self.cameras[0]
        if camera not in self.cameras:
            raise DckpError(f"no references for camera {camera!r} (have {self.cameras})", field="camera")
        return self._track([camera], {camera: (rgb, depth, K, pose)})[camera]

    @torch.no_grad()
    def _track(self, cams: list[str], inputs: dict) -> dict[str, Keypoints]:
        frames, batched = {}, False
        for cam in cams:
            if inputs[cam][3] is None and self.form == "world":
                raise DckpError("world keypoints need the camera pose", field=cam)
            rgb, depth, K, pose = (_tensor(x) for x in check_frame(*inputs[cam], where=cam))  # invalid depth: 0
            batched = rgb.ndim == 4
            if rgb.ndim not in (3, 4):
                raise DckpError(f"expected uint8 rgb (H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}", field=cam)
            pose = torch.eye(4) if pose is None else pose
            rgb = rgb if batched else rgb[None]
            B, H, W = rgb.shape[:3]
            for name, x, shape in (("depth", depth, (H, W)), ("K", K, (3, 3)), ("pose", pose, (4, 4))):
                if tuple(x.shape[-2:]) != shape:
                    raise DckpError(f"expected {name} (..., {shape[0]}, {shape[1]}), got {tuple(x.shape)}",
                                    field=cam)
            frames[f"{cam}_rgb"] = rgb.to(self.device)
            for name, x in (("depth", depth), ("K", K), ("pose", pose)):
                frames[f"{cam}_{name}"] = x.to(self.device, torch.float32).expand(B, *x.shape[-2:])
        self.encoder.cameras = cams  # the cameras given this call
        try:
            out = self.encoder.camera_keypoints(frames)
        finally:
            self.encoder.cameras = self._cameras
        return {cam: Keypoints(*(k[n] if batched else k[n][0] for n in ("features", "uv", "peak", "distance")))
                for cam, k in out.items()}


def _tensor(x) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x))
