"""Analytic RGB-D scenes for tests: a square table top at z = 0 with spheres and boxes resting on it.

Ray casting in numpy, no renderer. Conventions as in docs/conventions.md (OpenCV cameras, camera-to-world
poses, planar depth in metres with 0 where a ray hits nothing, seg 0 = table/background, 1..N objects,
255 = the occluder, a floating box standing in for the robot arm, drawn only when asked for).

A scene is a dict: `objects` (list of dicts with `id`, `kind` "sphere" or "box", `center` (3,), `size`
(radius, or (3,) half extents), `color` (3,) uint8), `occluder` (one such box, id 255) and `table_half`
(half the table's side, metres).
"""

from __future__ import annotations

import numpy as np

TABLE_COLOR = np.array([150, 150, 150])
PALETTE = np.array([[220, 40, 40], [40, 180, 60], [40, 80, 220], [230, 200, 40], [200, 60, 200], [40, 200, 210]])
OCCLUDER_ID = 255


def intrinsics(H: int, W: int, fovy_deg: float = 45.0) -> np.ndarray:
    """Pinhole K with square pixels and the principal point at the image centre."""
    f = 0.5 * H / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world pose of an OpenCV camera at `eye` looking at `target` (x right, y down, z forward)."""
    eye, target, up = (np.asarray(x, dtype=np.float64) for x in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pose[:3, 3] = eye
    return pose


def orbit_poses(n: int, radius: float, height: float, target=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """`n` cameras evenly spaced on a circle of `radius` at `height` above `target`, all looking at it."""
    target = np.asarray(target, dtype=np.float64)
    angles = 2 * np.pi * np.arange(n) / n
    return [look_at(target + [radius * np.cos(a), radius * np.sin(a), height], target) for a in angles]


def make_scene(seed: int, n_objects: int = 3) -> dict:
    """`n_objects` (at most 6) spheres and boxes resting on the table near the origin, at least 5 cm apart."""
    rng = np.random.default_rng(seed)
    objects, footprints = [], []
    while len(objects) < n_objects:
        kind = ("sphere", "box")[len(objects) % 2]
        size = rng.uniform(0.025, 0.04) if kind == "sphere" else rng.uniform([0.025, 0.025, 0.02], 0.04)
        reach = size if kind == "sphere" else float(np.hypot(size[0], size[1]))
        xy = rng.uniform(-0.15, 0.15, 2)
        if any(np.linalg.norm(xy - c) < reach + r + 0.05 for c, r in footprints):
            continue
        footprints.append((xy, reach))
        height = size if kind == "sphere" else size[2]
        objects.append({"id": len(objects) + 1, "kind": kind, "center": np.array([*xy, height]),
                        "size": size, "color": PALETTE[len(objects)]})
    occluder = {"id": OCCLUDER_ID, "kind": "box", "center": np.array([0.0, 0.0, 0.2]),
                "size": np.array([0.03, 0.03, 0.06]), "color": np.array([60, 60, 60])}
    return {"objects": objects, "occluder": occluder, "table_half": 0.6}


def raycast(scene: dict, origin, dirs, occluder: bool = False):
    """First hits of rays `origin + t * dirs` (dirs (N, 3)): `t` (N,) (inf where nothing is hit), `ids` (N,)
    (0 = table or nothing), `normals` (N, 3) and `colors` (N, 3) float."""
    origin, dirs = np.asarray(origin, dtype=np.float64), np.asarray(dirs, dtype=np.float64)
    n = len(dirs)
    t, ids = np.full(n, np.inf), np.zeros(n, dtype=np.int64)
    normals, colors = np.zeros((n, 3)), np.zeros((n, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = -origin[2] / dirs[:, 2]
        hit = origin[:2] + t_table[:, None] * dirs[:, :2]
        ok = (t_table > 0) & (np.abs(hit) <= scene["table_half"]).all(-1)
        t[ok] = t_table[ok]
        normals[ok], colors[ok] = [0, 0, 1], TABLE_COLOR
        for obj in scene["objects"] + ([scene["occluder"]] if occluder else []):
            t_obj, normal = _intersect(obj, origin, dirs)
            closer = t_obj < t
            t[closer], ids[closer] = t_obj[closer], obj["id"]
            normals[closer], colors[closer] = normal[closer], obj["color"]
    return t, ids, normals, colors


def _intersect(obj: dict, origin, dirs):
    c, size = obj["center"], obj["size"]
    if obj["kind"] == "sphere":
        oc = origin - c
        a, b, k = (dirs * dirs).sum(-1), dirs @ oc, oc @ oc - size**2
        t = (-b - np.sqrt(b * b - a * k)) / a
        t = np.where(t > 0, t, np.inf)  # NaN (miss) compares False too
        return t, (origin + t[:, None] * dirs - c) / size
    t1, t2 = (c - size - origin) / dirs, (c + size - origin) / dirs
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = near.max(-1), far.min(-1)
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    axis = near.argmax(-1)
    normals = np.zeros_like(dirs)
    normals[np.arange(len(dirs)), axis] = -np.sign(dirs[np.arange(len(dirs)), axis])
    return t, normals


def render(scene: dict, K, pose, H: int, W: int, occluder: bool = False) -> dict[str, np.ndarray]:
    """`rgb (H, W, 3)` uint8 (Lambert shading, lit from above and behind the camera), `depth (H, W)` float32,
    `seg (H, W)` uint8."""
    K, pose = np.asarray(K, dtype=np.float64), np.asarray(pose, dtype=np.float64)
    v, u = np.mgrid[0:H, 0:W]
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1).reshape(-1, 3)
    t, ids, normals, colors = raycast(scene, pose[:3, 3], rays_cam @ pose[:3, :3].T, occluder)
    hit = np.isfinite(t)  # rays_cam has z = 1, so t is the planar depth
    to_light = pose[:3, :3] @ [0.3, -1.0, -0.5]  # up (y is down) and back towards the camera
    shade = 0.35 + 0.65 * np.clip(normals @ (to_light / np.linalg.norm(to_light)), 0, 1)
    rgb = np.where(hit[:, None], colors * shade[:, None], 0)
    return {"rgb": rgb.reshape(H, W, 3).round().astype(np.uint8),
            "depth": np.where(hit, t, 0).reshape(H, W).astype(np.float32),
            "seg": ids.reshape(H, W).astype(np.uint8)}


def surface_distance(scene: dict, points) -> np.ndarray:
    """Distance (N,) from world points (N, 3) to the nearest surface of the table top or an object (the
    occluder excluded)."""
    p = np.asarray(points, dtype=np.float64)
    outside = np.maximum(np.abs(p[:, :2]) - scene["table_half"], 0)
    dist = np.hypot(np.linalg.norm(outside, axis=-1), p[:, 2])
    for obj in scene["objects"]:
        q = p - obj["center"]
        if obj["kind"] == "sphere":
            d = np.abs(np.linalg.norm(q, axis=-1) - obj["size"])
        else:
            e = np.abs(q) - obj["size"]
            d = np.abs(np.linalg.norm(np.maximum(e, 0), axis=-1) + np.minimum(e.max(-1), 0))
        dist = np.minimum(dist, d)
    return dist
