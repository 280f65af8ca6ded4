"""Image augmentation for encoders trained with the policy, applied in training only (`module.training`).

`random_shift` (DrQ; robomimic's crop randomiser in effect): pad each image by `pad` pixels, replicating the
border, and crop it back at a random offset. `random_crop` / `centre_crop`: a `size` crop at a random offset in
training and the centre at test time, as robomimic's `CropRandomizer`. Offsets come from torch's global
generator, which policy training seeds per step, so a resumed run repeats its augmentations exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _offsets(n: int, high: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, high + 1, (n,)).to(device), torch.randint(0, high + 1, (n,)).to(device)


def _crop_at(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """`(B, C, size, size)` crops of `images (B, C, H, W)` at per-image offsets."""
    rows = (top[:, None] + torch.arange(size, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(size, device=images.device))[:, None, None, :]
    batch = torch.arange(len(images), device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, chans, rows, cols]


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """`images (B, C, H, W)`, each shifted by up to `pad` pixels in each direction (border replicated)."""
    if pad == 0:
        return images
    H, W = images.shape[-2:]
    if H != W:
        raise ValueError(f"random_shift needs square images, got {H}x{W}")
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    top, left = _offsets(len(images), 2 * pad, images.device)
    return _crop_at(padded, top, left, H)


def random_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """A `size` x `size` crop of each of `images (B, C, H, W)` at a random offset."""
    top, left = _offsets(len(images), images.shape[-2] - size, images.device)
    return _crop_at(images, top, left, size)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    H, W = images.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return images[..., top:top + size, left:left + size]
