"""Object masks without labels: segment a fused point cloud into objects, then render per-frame masks.

`segment_objects` keeps the points inside the workspace box, fits the table as the dominant near-horizontal
plane (RANSAC; world z is up), drops points below or close above it, and clusters the rest with DBSCAN.
`render_instance_masks` labels a frame's pixels by looking up the 3D point each pixel sees: a pixel gets an
object's id if that point lies within `depth_tol` of one of the object's fused points. This is the depth test
of projecting the objects into the frame, done from the pixel side, so masks come out dense without hole
filling, and anything in front of an object that was not fused (such as the robot arm) stays background.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from sklearn.cluster import DBSCAN

from dckp.errors import DckpError
from dckp.geometry.camera import backproject, check_frame, transform
from dckp.geometry.config import MASK_PRESETS, MaskConfig  # noqa: F401 - MASK_PRESETS re-exported

_SCORED_POINTS = 10000  # RANSAC scores each plane hypothesis on at most this many random points


def _points(points) -> np.ndarray:
    p = torch.as_tensor(points).detach().cpu().numpy().astype(np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise DckpError(f"expected shape (N, 3), got {p.shape}", field="points")
    if len(p) == 0:
        raise DckpError("empty point cloud", field="points")
    if not np.isfinite(p).all():
        raise DckpError("points must be finite", field="points")
    return p


def fit_table(points: np.ndarray, cfg: MaskConfig, seed: int = 0) -> tuple[np.ndarray, float]:
    """The table plane as a unit normal `n` (pointing up, n_z > 0) and offset `c` with `n . p = c` on it:
    RANSAC over planes within `table_max_tilt_deg` of horizontal, refined by least squares on the inliers."""
    rng = np.random.default_rng(seed)
    scored = points[rng.choice(len(points), min(len(points), _SCORED_POINTS), replace=False)]
    p0, p1, p2 = (points[rng.integers(len(points), size=cfg.ransac_iters)] for _ in range(3))
    normals = np.cross(p1 - p0, p2 - p0)
    length = np.linalg.norm(normals, axis=1)
    ok = length > 0
    normals[ok] /= length[ok, None]
    ok &= np.abs(normals[:, 2]) >= math.cos(math.radians(cfg.table_max_tilt_deg))
    if not ok.any():
        raise DckpError("no near-horizontal table plane found", field="points")
    normals, p0 = normals[ok], p0[ok]
    offsets = (normals * p0).sum(1)
    inliers = np.abs(scored @ normals.T - offsets) < cfg.ransac_threshold
    best = inliers.sum(0).argmax()
    on_plane = points[np.abs(points @ normals[best] - offsets[best]) < cfg.ransac_threshold]
    centre = on_plane.mean(0)
    n = np.linalg.svd(on_plane - centre, full_matrices=False)[2][-1]
    n = n if n[2] > 0 else -n
    return n, float(n @ centre)


def segment_objects(points, cfg: MaskConfig) -> np.ndarray:
    """Per-point object labels `(N,)` int64 for world-frame `points (N, 3)` (numpy or torch).

    0 = not an object (outside the workspace box, table, below or within `table_clearance` above the table,
    DBSCAN noise, clusters under `min_cluster_points`). Objects are numbered 1..K by their centroid's world x
    (then y), ascending.
    """
    p = _points(points)
    labels = np.zeros(len(p), dtype=np.int64)
    inside = np.flatnonzero((p >= cfg.workspace_min).all(1) & (p <= cfg.workspace_max).all(1))
    if len(inside) < 3:
        raise DckpError(f"{len(inside)} points inside the workspace box, need at least 3", field="points")
    n, c = fit_table(p[inside], cfg)
    above = inside[p[inside] @ n - c > cfg.table_clearance]
    if len(above) == 0:
        return labels
    clusters = DBSCAN(eps=cfg.dbscan_eps, min_samples=cfg.dbscan_min_samples).fit_predict(p[above])
    ids, counts = np.unique(clusters[clusters >= 0], return_counts=True)
    ids = ids[counts >= cfg.min_cluster_points]
    centroids = np.array([p[above[clusters == i]].mean(0) for i in ids]).reshape(-1, 3)
    for label, i in enumerate(ids[np.lexsort((centroids[:, 1], centroids[:, 0]))], start=1):
        labels[above[clusters == i]] = label
    return labels


def render_instance_masks(points, labels, depth, K, pose, cfg: MaskConfig) -> np.ndarray:
    """Instance-id image `(H, W)` uint8 (0 = background) of one frame: a pixel with valid depth gets label k
    if the world point it sees is within `cfg.depth_tol` of a point labelled k (the nearest such point wins).

    `points (N, 3)` world frame and `labels (N,)` (0 = ignore, 1..254) as from `segment_objects`; `depth (H, W)`
    metres (0 = invalid), `K (3, 3)`, `pose (4, 4)` camera-to-world.
    """
    depth, K, pose = check_frame(torch.as_tensor(depth).cpu().to(torch.float64), K, pose)
    p = _points(points)
    labels = torch.as_tensor(labels).cpu().numpy()
    if labels.shape != (len(p),):
        raise DckpError(f"expected shape ({len(p)},), got {labels.shape}", field="labels")
    if labels.min() < 0 or labels.max() > 254:
        raise DckpError("labels must be in 0..254", field="labels")
    mask = np.zeros(depth.shape, dtype=np.uint8)
    objects = labels > 0
    valid = (depth > 0).numpy()
    if not objects.any() or not valid.any():
        return mask
    seen = transform(pose, backproject(depth, K)[torch.from_numpy(valid)]).numpy()
    dist, nearest = cKDTree(p[objects]).query(seen, distance_upper_bound=cfg.depth_tol)
    hit = np.isfinite(dist)
    mask.reshape(-1)[np.flatnonzero(valid)[hit]] = labels[objects][nearest[hit]]
    return mask


def mask_iou_matched(pred, gt, min_iou: float = 0.5) -> dict:
    """Match predicted to ground-truth objects by maximum total IoU (Hungarian) and score them.

    `pred`, `gt`: instance-id images (H, W); 0 is background and gt's 255 (the robot) is ignored as a class
    (its pixels still count against predictions that cover them). A pair with IoU below `min_iou` is not a
    match. Returns `iou` {gt id: IoU of its match, 0.0 if missed}, `mean_iou` over gt objects (nan if none),
    `missed` (gt objects without a match) and `spurious` (predicted objects without a match).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise DckpError(f"expected two images of the same (H, W) shape, got {pred.shape} and {gt.shape}",
                        field="pred")
    gt_ids = [int(i) for i in np.unique(gt) if i not in (0, 255)]
    pred_ids = [int(i) for i in np.unique(pred) if i != 0]
    g = np.array([gt.ravel() == i for i in gt_ids], dtype=np.int64).reshape(len(gt_ids), gt.size)
    q = np.array([pred.ravel() == i for i in pred_ids], dtype=np.int64).reshape(len(pred_ids), gt.size)
    inter = g @ q.T
    union = g.sum(1)[:, None] + q.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-iou)
    matched = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
    per_object = {i: 0.0 for i in gt_ids} | {gt_ids[r]: float(iou[r, c]) for r, c in matched}
    return {"iou": per_object, "mean_iou": float(np.mean(list(per_object.values()))) if gt_ids else math.nan,
            "missed": len(gt_ids) - len(matched), "spurious": len(pred_ids) - len(matched)}
