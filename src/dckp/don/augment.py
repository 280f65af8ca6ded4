"""Augmentations of one training pair, applied to each image with its pixel coordinates.

- crop and rescale: a random square crop of side `s` (s in [crop_min, 1] of the image) resized back to the
  image size, so objects appear at other scales; coordinates map as u' = (u + 0.5 - x0) / s - 0.5.
- 180 degree rotation: u' = W - 1 - u, v' = H - 1 - v.
- colour jitter: brightness, contrast and saturation factors in [1 - j, 1 + j].
- background randomisation: pixels outside every object mask get a smooth random colour field.

Matches whose either end leaves the image are dropped; non-matches that leave it become invalid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _crop_rescale(img: torch.Tensor, coords: list[torch.Tensor], scale: float, rng) -> tuple:
    _, H, W = img.shape
    side_h, side_w = max(int(round(H * scale)), 2), max(int(round(W * scale)), 2)
    y0, x0 = int(rng.integers(0, H - side_h + 1)), int(rng.integers(0, W - side_w + 1))
    crop = img[:, y0: y0 + side_h, x0: x0 + side_w]
    img = F.interpolate(crop[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    s = torch.tensor([side_w / W, side_h / H])
    off = torch.tensor([x0, y0], dtype=torch.float32)
    return img, [(c + 0.5 - off) / s - 0.5 for c in coords]


def _inside(uv: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5)


def _jitter(img: torch.Tensor, amount: float, rng) -> torch.Tensor:
    b, c, s = (1 + rng.uniform(-amount, amount, 3)).tolist()
    img = img * b
    img = (img - img.mean()) * c + img.mean()
    grey = img.mean(0, keepdim=True)
    return ((img - grey) * s + grey).clamp(0, 1)


def _random_background(img: torch.Tensor, background: torch.Tensor, rng) -> torch.Tensor:
    _, H, W = img.shape
    field = torch.from_numpy(rng.uniform(0, 1, (1, 3, 4, 4)).astype(np.float32))
    field = F.interpolate(field, size=(H, W), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return torch.where(background[None], field, img)


def augment_pair(pair: dict, rng: np.random.Generator, crop_min: float = 0.6, rotate: bool = True,
                 jitter: float = 0.2, background: bool = True) -> dict:
    """Returns a new pair with float images `image_a`, `image_b` (3,H,W) in [0,1] and updated coordinates."""
    out = dict(pair)
    for side in ("a", "b"):
        img = pair[f"rgb_{side}"].permute(2, 0, 1).float() / 255
        _, H, W = img.shape
        if background and f"mask_{side}" in pair:
            img = _random_background(img, pair[f"mask_{side}"] == 0, rng) if rng.random() < 0.5 else img
        keys = ["uv_a"] if side == "a" else ["uv_b", "nm_object", "nm_background"]
        coords = [out[k] for k in keys]
        if crop_min < 1:
            img, coords = _crop_rescale(img, coords, float(rng.uniform(crop_min, 1)), rng)
        if rotate and rng.random() < 0.5:
            img = img.flip(1, 2)
            coords = [torch.stack([W - 1 - c[..., 0], H - 1 - c[..., 1]], -1) for c in coords]
        if jitter > 0:
            img = _jitter(img, jitter, rng)
        out[f"image_{side}"] = img
        out.update(dict(zip(keys, coords, strict=True)))
    H, W = out["image_a"].shape[1:]
    keep = _inside(out["uv_a"], H, W) & _inside(out["uv_b"], H, W)
    for k in ("uv_a", "uv_b", "nm_object", "nm_object_valid", "nm_background", "nm_background_valid"):
        out[k] = out[k][keep]
    out["nm_object_valid"] = out["nm_object_valid"] & _inside(out["nm_object"], H, W)
    out["nm_background_valid"] = out["nm_background_valid"] & _inside(out["nm_background"], H, W)
    return out
