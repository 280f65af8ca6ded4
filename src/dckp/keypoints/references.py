"""Reference descriptors: the descriptors whose best matches become keypoints.

Sampled on object masks of one reference image, or read at hand-picked pixels. Pixel coordinates `(u, v)` =
(column, row), pixel centres at integers (docs/conventions.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dckp.errors import DckpError


def sample_references(desc: torch.Tensor, masks: torch.Tensor, n: int,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` references from `desc (D, H, W)`, spread evenly over the objects of `masks (H, W)`.

    `masks` holds instance ids, 0 = background; every other id present counts as an object. The objects, in
    ascending id order, get `n // m` references each and the first `n % m` of them one more (m = number of
    objects); each object's pixels are drawn uniformly without replacement from its mask (`generator` must be on
    the CPU). Returns `refs (n, D)`, `uv (n, 2)` int64 pixel coordinates and `object_ids (n,)` int64.
    """
    if desc.ndim != 3 or tuple(masks.shape) != tuple(desc.shape[1:]):
        raise DckpError(f"expected desc (D, H, W) and masks (H, W), got {tuple(desc.shape)} and "
                        f"{tuple(masks.shape)}", field="masks")
    if n < 1:
        raise DckpError(f"n must be >= 1, got {n}", field="n")
    masks = torch.as_tensor(masks).cpu().long()
    ids = [i for i in masks.unique().tolist() if i != 0]
    if not ids:
        raise DckpError("no object pixels (every id is 0)", field="masks")
    uv, object_ids = [], []
    for rank, obj in enumerate(ids):
        count = n // len(ids) + (rank < n % len(ids))
        v, u = torch.nonzero(masks == obj, as_tuple=True)
        if count > len(u):
            raise DckpError(f"object {obj} has {len(u)} pixels, fewer than its {count} references", field="masks")
        pick = torch.randperm(len(u), generator=generator)[:count]
        uv.append(torch.stack([u[pick], v[pick]], dim=-1))
        object_ids.append(torch.full((count,), obj, dtype=torch.long))
    uv = torch.cat(uv)
    return references_at(desc, uv), uv, torch.cat(object_ids)


def references_at(desc: torch.Tensor, uv) -> torch.Tensor:
    """`(n, D)` descriptors of `desc (D, H, W)` at the pixels nearest to `uv (n, 2)`; DckpError outside the
    image."""
    D, H, W = desc.shape
    px = torch.as_tensor(uv).round().long().to(desc.device)
    if px.ndim != 2 or px.shape[1] != 2:
        raise DckpError(f"expected uv (n, 2), got {tuple(px.shape)}", field="uv")
    outside = (px[:, 0] < 0) | (px[:, 0] >= W) | (px[:, 1] < 0) | (px[:, 1] >= H)
    if bool(outside.any()):
        raise DckpError(f"pixel {px[outside][0].tolist()} is outside the {W}x{H} image", field="uv")
    return desc[:, px[:, 1], px[:, 0]].T


def load_pixels(path) -> torch.Tensor:
    """Hand-picked pixels `(n, 2)` float32 `(u, v)` from a JSON file `{"uv": [[u, v], ...]}` (n >= 1, finite)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DckpError("file not found", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DckpError(f"invalid JSON ({e})".replace("\n", " "), path=str(path)) from None
    uv = data.get("uv") if isinstance(data, dict) else None
    ok = isinstance(uv, list) and len(uv) > 0 and all(
        isinstance(p, list) and len(p) == 2 and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in p) for p in uv)
    if not ok:
        raise DckpError("expected a non-empty list of [u, v] pairs of finite numbers", path=str(path), field="uv")
    return torch.tensor(uv, dtype=torch.float32)
