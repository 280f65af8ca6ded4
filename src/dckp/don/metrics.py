"""Correspondence quality of descriptor images against ground-truth matches.

For each ground-truth match (u_a, u_b), the query descriptor f_a(u_a) (bilinear, as in training) is compared
with the descriptor of every pixel of I_b (optionally only the valid ones); the best match is the pixel at
the smallest Euclidean descriptor distance (the first one on ties, in row-major order). Reported:

- pixel error: ||best - u_b|| in pixels, per point, and its median (midpoint of the two middle values);
- PCK@t: fraction of points with pixel error <= t * S for t = 1, 2, 5, 10 %, with image size S = max(H, W);
- fraction closer: share of (valid) pixels of I_b strictly closer in descriptor space than f_b(u_b), the
  true match's descriptor, averaged over points (0 is perfect);
- wrong-object rate (given the ground-truth segmentation of b): share of points whose best match lies on a
  different instance id than the true match, read at the rounded u_b; landing on the background (0) or the
  arm (255) counts as wrong when the true match is on an object.

Distances are computed in chunks of query points so that 128x128 and 256x256 images stay in bounded memory.
"""

from __future__ import annotations

import torch

from dckp.don.loss import sample_descriptors
from dckp.errors import DckpError

PCK_FRACTIONS = (0.01, 0.02, 0.05, 0.10)


@torch.no_grad()
def correspondence_metrics(desc_a: torch.Tensor, desc_b: torch.Tensor, uv_a: torch.Tensor, uv_b: torch.Tensor,
                           seg_b: torch.Tensor | None = None, valid_b: torch.Tensor | None = None,
                           max_elements: int = 2**24) -> dict:
    """desc_a, desc_b: `(D, H, W)`; uv_a, uv_b: `(N, 2)` ground-truth matches (col, row); seg_b: `(H, W)`
    instance ids of b; valid_b: `(H, W)` bool, pixels of b that may be matched. max_elements bounds the
    distance tensor per chunk (query points x pixels x D).

    Returns per-point tensors `best_uv (N, 2)`, `pixel_error (N,)`, `fraction_closer (N,)` and floats
    `median_px`, `pck@1%`, `pck@2%`, `pck@5%`, `pck@10%`, `mean_fraction_closer`, and `wrong_object_rate`
    when seg_b is given."""
    D, H, W = desc_b.shape
    if len(uv_a) == 0 or uv_a.shape != uv_b.shape:
        raise DckpError(f"need N >= 1 matches with uv_a and uv_b of one shape, got {tuple(uv_a.shape)} and "
                        f"{tuple(uv_b.shape)}", field="uv_a")
    uv_a, uv_b = uv_a.to(desc_a), uv_b.to(desc_b)
    query = sample_descriptors(desc_a[None], uv_a[None])[0]  # (N, D)
    true_d2 = ((query - sample_descriptors(desc_b[None], uv_b[None])[0]) ** 2).sum(-1)
    pixels = desc_b.flatten(1)  # (D, HW)
    allowed = torch.ones(H * W, dtype=torch.bool, device=desc_b.device) if valid_b is None else valid_b.flatten()
    best, closer = [], []
    chunk = max(1, max_elements // (H * W * D))
    for i in range(0, len(query), chunk):
        d2 = ((query[i: i + chunk, :, None] - pixels[None]) ** 2).sum(1)  # (chunk, HW)
        d2 = d2.masked_fill(~allowed, float("inf"))
        best.append(d2.argmin(1))
        closer.append((d2 < true_d2[i: i + chunk, None]).sum(1))
    best = torch.cat(best)
    best_uv = torch.stack([best % W, best // W], -1)
    error = (best_uv.to(uv_b) - uv_b).norm(dim=-1)
    fraction = torch.cat(closer).to(uv_b) / allowed.sum()
    size = max(H, W)
    out = {"best_uv": best_uv, "pixel_error": error, "fraction_closer": fraction,
           "median_px": error.quantile(0.5).item(), "mean_fraction_closer": fraction.mean().item()}
    out.update({f"pck@{round(t * 100)}%": (error <= t * size).float().mean().item() for t in PCK_FRACTIONS})
    if seg_b is not None:
        true_uv = uv_b.round().long()
        true_id = seg_b[true_uv[:, 1].clamp(0, H - 1), true_uv[:, 0].clamp(0, W - 1)]
        out["wrong_object_rate"] = (seg_b[best_uv[:, 1], best_uv[:, 0]] != true_id).float().mean().item()
    return out
