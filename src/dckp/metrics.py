"""How well keypoints and correspondences land: every measure defined once, here (docs/metrics.md), and used by
`dckp eval-correspondence`, `dckp eval-keypoints`, `dckp run`'s report, `dckp table` and the benchmarks.

- pixel error: the Euclidean distance in pixels between a found pixel and the true one;
- 3D error: the Euclidean distance between a found point and the true one, in millimetres;
- median: of an even number of values, the midpoint of the two middle ones; None of no values;
- PCK@t: the share of points whose pixel error is at most t * S, with S = max(H, W) the image size, for
  t = 1, 2, 5, 10 %;
- wrong-object rate: the share of points whose found pixel lies on another label of the ground-truth segmentation
  than the true pixel (each read at its rounded pixel, clamped into the image): another object, the arm (255) or
  the background (0) all count as a wrong object; the arm rate: the share found on the arm;
- fraction closer: per point, the share of the (allowed) pixels of the second image strictly closer in descriptor
  space to the query than the true match's descriptor (0 is perfect), averaged over points;
- symmetry-aware error: the smallest pixel (or 3D) error over the true point's images under its object's symmetry
  group (`dckp.sim.tasks.base.symmetry_rotations`): a keypoint on the right object at a symmetric twin of its point
  counts as right.

Correspondences (`match`): for each ground-truth match (u_a, u_b), the query descriptor f_a(u_a) (bilinear, as in
training) is compared with the descriptor of every pixel of I_b (optionally only the valid ones); the best match
is the pixel at the smallest Euclidean descriptor distance (the first one on ties, in row-major order). Distances
are computed in chunks of query points so that 128x128 and 256x256 images stay in bounded memory.
"""

from __future__ import annotations

import torch

from dckp.errors import DckpError

# The version of these definitions, stored with the scores made with them (`dckp run` makes older ones again):
# 2 counts a landing on the background as a wrong object and takes the midpoint median (2026-12)
VERSION = 2
PCK_FRACTIONS = (0.01, 0.02, 0.05, 0.10)
ARM_LABEL = 255  # the segmentation label of the robot (dckp.sim.render.ROBOT_LABEL)


def sample_descriptors(desc: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear descriptors `(B, N, D)` of `desc (B, D, H, W)` at pixel coordinates `uv (B, N, 2)` = (col, row):
    exact at integer coordinates, clamped to the pixel centres at the border. The DON's loss reads them so too."""
    B, D, H, W = desc.shape
    u, v = uv[..., 0].clamp(0, W - 1), uv[..., 1].clamp(0, H - 1)
    u0, v0 = u.floor(), v.floor()
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    u0, v0 = u0.long(), v0.long()
    u1, v1 = (u0 + 1).clamp(max=W - 1), (v0 + 1).clamp(max=H - 1)
    flat = desc.flatten(2)

    def at(uu, vv):
        return flat.gather(2, (vv * W + uu)[:, None].expand(B, D, -1))

    out = (at(u0, v0) * (1 - fu) + at(u1, v0) * fu) * (1 - fv) + (at(u0, v1) * (1 - fu) + at(u1, v1) * fu) * fv
    return out.transpose(1, 2)


def median(values: torch.Tensor) -> float | None:
    """The median of the values (any shape); of an even number, the midpoint of the two middle ones."""
    values = values.flatten().double().sort().values  # (torch.quantile refuses more than 2^24 values)
    n = values.numel()
    if n == 0:
        return None
    return ((values[(n - 1) // 2] + values[n // 2]) / 2).item()


def pixel_error(found: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """`(...)` Euclidean distances in pixels of found pixels `(..., 2)` from the true ones."""
    return (found.double() - true.double()).norm(dim=-1)


def error_mm(found: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """`(...)` Euclidean distances in millimetres of found points `(..., 3)` (metres) from the true ones."""
    return 1000 * (found.double() - true.double()).norm(dim=-1)


def symmetric_error(found: torch.Tensor, twins: torch.Tensor, error=pixel_error) -> torch.Tensor:
    """`(...)` the smallest `error` of found points `(..., d)` over each true point's symmetric twins
    `(..., G, d)` (the true point itself among them); NaN twins (behind the camera, say) are skipped."""
    e = error(found[..., None, :], twins)
    return e.nan_to_num(float("inf")).amin(-1)


def pck(errors: torch.Tensor, size: int, fractions=PCK_FRACTIONS) -> dict[str, float | None]:
    """`{"pck@1%": ..., ...}`: the share of pixel errors at most t * `size` (None of no errors)."""
    errors = errors.flatten()
    return {f"pck@{round(t * 100)}%": (errors <= t * size).double().mean().item() if errors.numel() else None
            for t in fractions}


def labels_at(seg: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """`(N,)` labels of the segmentation `seg (H, W)` at pixels `uv (N, 2)` (col, row), rounded, clamped inside."""
    H, W = seg.shape
    px = uv.round().long()
    return seg[px[:, 1].clamp(0, H - 1), px[:, 0].clamp(0, W - 1)]


def wrong_object(seg: torch.Tensor, found: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """`(N,)` bool: the found pixel lies on another label than the true one (another object, the arm or the
    background)."""
    return labels_at(seg, found) != labels_at(seg, true)


@torch.no_grad()
def match(desc_a: torch.Tensor, desc_b: torch.Tensor, uv_a: torch.Tensor, uv_b: torch.Tensor,
          seg_b: torch.Tensor | None = None, valid_b: torch.Tensor | None = None, max_elements: int = 2**24) -> dict:
    """Best matches of ground-truth correspondences, per point. desc_a, desc_b: `(D, H, W)`; uv_a, uv_b: `(N, 2)`
    matches (col, row); seg_b: `(H, W)` labels of b; valid_b: `(H, W)` bool, the pixels of b that may be matched.
    max_elements bounds the distance tensor per chunk (query points x pixels x D).

    Returns `best_uv (N, 2)`, `pixel_error (N,)`, `fraction_closer (N,)` and, with seg_b, `wrong_object (N,)`
    and `on_arm (N,)` (bool): what `summarise` reads, concatenated over pairs where there are several."""
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
    out = {"best_uv": best_uv, "pixel_error": pixel_error(best_uv, uv_b),
           "fraction_closer": torch.cat(closer).double() / allowed.sum()}
    if seg_b is not None:
        seg_b = seg_b.to(best_uv.device)
        out["wrong_object"] = wrong_object(seg_b, best_uv, uv_b)
        out["on_arm"] = labels_at(seg_b, best_uv) == ARM_LABEL
    return out


def summarise(points: dict, size: int) -> dict:
    """The scores of per-point results (`match`'s, or several concatenated) in images of size `size` = max(H, W):
    `pck@1%` .. `pck@10%`, `median_px`, `fraction_closer` (the mean), `points`, and `wrong_object_rate` and
    `arm_rate` where the points have them."""
    out = {**pck(points["pixel_error"], size), "median_px": median(points["pixel_error"]),
           "fraction_closer": points["fraction_closer"].double().mean().item(), "points": len(points["pixel_error"])}
    if "wrong_object" in points:
        out["wrong_object_rate"] = points["wrong_object"].double().mean().item()
        out["arm_rate"] = points["on_arm"].double().mean().item()
    return out
