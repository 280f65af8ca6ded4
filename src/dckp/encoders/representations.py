"""`bvae`, `transporter` and `monet`: the pretrained representation baselines as frozen policy encoders.

Each is built from a `dckp pretrain-representation` run folder (the `representation` artefact), resizes every
camera's RGB frame to the representation's training size exactly as pretraining did
(`dckp.representations.data.resize_rgb`) and reads, per camera: the beta-VAE's latent mean (32), the
Transporter's 10 keypoints as (x, y) in [-1, 1] (20), or MONet's 6 slot latent means (96); features are
concatenated over the cameras in sorted order. The network is frozen: kept outside the module's parameters (not
saved with the policy, untouched by its optimiser), in eval mode, without gradients.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dckp.encoders.base import Encoder
from dckp.errors import DckpError


class _Representation(Encoder):
    """A frozen representation of a run folder of the method `name`."""

    inputs = ("rgb",)
    artefacts = ("representation",)
    trainable = False

    def __init__(self, cameras, image_size, options=None, representation: str = "", **artefacts):
        from dckp.representations.train import METHODS, load_representation

        super().__init__(cameras, image_size, options)
        if not representation:
            raise DckpError(f"encoder {self.name} needs a representation run folder (from `dckp "
                            "pretrain-representation`)", field="representation")
        method, self.cfg, model = load_representation(representation)
        if method != self.name:
            raise DckpError(f"a {method} representation, but the encoder is {self.name}", path=representation)
        model.requires_grad_(False)
        self.method = METHODS[method]
        self.net = [model]  # in a list: frozen, and not part of the policy's saved weights

    def _apply(self, fn, recurse=True):
        self.net[0]._apply(fn, recurse)  # `.to(device)` moves the frozen network too
        return super()._apply(fn, recurse)

    def output_dim(self) -> int:
        return len(self.cameras) * self.method.feature_dim(self.cfg)

    def images(self, frames: Mapping[str, torch.Tensor], cam: str) -> torch.Tensor:
        """`(B, 3, S, S)` network input of one camera, on the network's device."""
        from dckp.representations.data import resize_rgb

        return resize_rgb(frames[f"{cam}_rgb"], self.cfg.image_size).to(next(self.net[0].parameters()).device)

    @torch.no_grad()
    def forward(self, frames: Mapping[str, torch.Tensor]) -> torch.Tensor:
        net = self.net[0].eval()
        return torch.cat([self.method.features(net, self.images(frames, cam)) for cam in self.cameras], 1)


class BetaVaeEncoder(_Representation):
    name = "bvae"


class TransporterEncoder(_Representation):
    name = "transporter"
    keypoints = True

    @torch.no_grad()
    def image_keypoints(self, frames):
        net, out = self.net[0].eval(), {}
        for cam in self.cameras:
            H, W = frames[f"{cam}_rgb"].shape[1:3]
            uv, peak = self.method.image_keypoints(net, self.images(frames, cam), H, W)
            out[cam] = (uv.cpu(), peak.cpu())
        return out


class MonetEncoder(_Representation):
    name = "monet"
