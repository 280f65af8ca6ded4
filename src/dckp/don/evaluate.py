"""Correspondence accuracy of a Dense Object Net on held-out scenes, by pair type.

Ground-truth matches come from depth and camera poses (`find_matches`, with the occlusion test) at pixels of
the objects in I_a; the simulator's segmentation is used here only to pick object pixels and to score the
wrong-object rate. For each point the best match is the argmin of descriptor distance over all of I_b.

Pair types (frames of one scene; the camera poses differ by > 0.2 m or 20 degrees):
- `same_camera`: both frames from the same stream (wrist-wrist or free-free), less than 10 % of the points
  occluded in I_b;
- `cross_scale`: a close view (the wrist camera, or a free camera < 0.5 m from the scene) against a far one
  (the overview camera, or a free camera > 0.9 m away);
- `occlusion`: more than 20 % of I_a's object points that project into I_b are hidden there.

Scores (`dckp.metrics`, docs/metrics.md): PCK, median pixel error, fraction closer, the wrong-object rate (best
matches that land on another object, the arm or the background) and the arm rate (those on the arm alone).
"""

from __future__ import annotations

import numpy as np
import torch

from dckp.data import Dataset
from dckp.geometry.camera import pixel_grid, project, transform, unproject
from dckp.geometry.correspondence import warp_pixels
from dckp.metrics import match, summarise

PAIR_TYPES = ("same_camera", "cross_scale", "occlusion")
CLOSE, FAR = 0.5, 0.9
WRIST, OVERVIEW = "robot0_eye_in_hand", "agentview"


def _tensors(fr: dict) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.asarray(fr[k], np.float64)) for k in ("depth", "K", "pose"))


def _scale(stream: str, fr: dict, centre: np.ndarray) -> str:
    if stream == WRIST:
        return "close"
    if stream == OVERVIEW:
        return "far"
    d = np.linalg.norm(fr["pose"][:3, 3] - centre)
    return "close" if d < CLOSE else "far" if d > FAR else "mid"


def sample_eval_pairs(path: str, per_type: int = 20, points: int = 100, seed: int = 0, max_tries: int = 3000):
    """Fixed evaluation pairs of a held-out views file: {type: [pair dict]} with ground-truth matches."""
    rng = np.random.default_rng(seed)
    out = {t: [] for t in PAIR_TYPES}
    with Dataset(path) as ds:
        ds.expect("views")
        ds.validate()
        episodes = [e for e in ds.episodes if not e.startswith("arm_")]
        for _ in range(max_tries):
            if all(len(v) >= per_type for v in out.values()):
                break
            ep = episodes[rng.integers(len(episodes))]
            streams = ds.streams(ep)
            centre = ds.array(ep, "object_pose")[0][:, :3, 3].mean(0)
            (sa, sb) = rng.choice(streams, 2)
            ta, tb = rng.integers(ds.num_frames(ep, sa)), rng.integers(ds.num_frames(ep, sb))
            fa, fb = ds.frame(ep, sa, ta), ds.frame(ep, sb, tb)
            moved = np.linalg.norm(fa["pose"][:3, 3] - fb["pose"][:3, 3]) > 0.2 or np.arccos(np.clip(
                (np.trace(fa["pose"][:3, :3].T @ fb["pose"][:3, :3]) - 1) / 2, -1, 1)) > np.deg2rad(20)
            if not moved:
                continue
            on_object = (fa["seg"] > 0) & (fa["seg"] < 255) & (fa["depth"] > 0)
            if on_object.sum() < 20:
                continue
            uv = pixel_grid(*fa["depth"].shape, dtype=torch.float64)[torch.from_numpy(on_object)]
            da, Ka, Pa = _tensors(fa)
            db, Kb, Pb = _tensors(fb)
            uv_b, valid = warp_pixels(uv, da, Ka, Pa, db, Kb, Pb)
            # projected into b's image and in front of its camera, but hidden there: occluded
            proj, z = project(transform(torch.linalg.inv(Pb) @ Pa, unproject(uv, da[on_object], Ka)), Kb)
            H, W = fb["depth"].shape
            in_view = (z > 0) & (proj >= -0.5).all(1) & (proj[:, 0] <= W - 0.5) & (proj[:, 1] <= H - 0.5)
            if in_view.sum() < 20 or valid.sum() < 20:
                continue
            occluded = float((in_view & ~valid).sum() / in_view.sum())
            scales = {_scale(sa, fa, centre), _scale(sb, fb, centre)}
            if occluded > 0.2:
                kind = "occlusion"
            elif sa == sb and sa in (WRIST, "free") and occluded < 0.1:
                kind = "same_camera"
            elif scales == {"close", "far"}:
                kind = "cross_scale"
            else:
                continue
            if len(out[kind]) >= per_type:
                continue
            keep = torch.from_numpy(rng.permutation(int(valid.sum()))[:points])
            out[kind].append({"episode": ep, "a": (sa, int(ta)), "b": (sb, int(tb)), "occluded": occluded,
                              "uv_a": uv[valid][keep].float(), "uv_b": uv_b[valid][keep].float()})
    return out


@torch.no_grad()
def evaluate_model(model, path: str, pairs: dict) -> dict:
    """{type: {pck@1%, pck@2%, pck@5%, pck@10%, median_px, fraction_closer, wrong_object_rate, arm_rate, points,
    pairs}} over every point of the type's pairs (`dckp.metrics.summarise`)."""
    model.eval()
    device = next(model.parameters()).device
    results = {}
    with Dataset(path) as ds:
        for kind, items in pairs.items():
            points = []
            for p in items:
                fa, fb = ds.frame(p["episode"], *p["a"]), ds.frame(p["episode"], *p["b"])
                images = torch.from_numpy(np.stack([fa["rgb"], fb["rgb"]])).permute(0, 3, 1, 2).float() / 255
                desc = model(images.to(device))
                m = match(desc[0], desc[1], p["uv_a"], p["uv_b"], seg_b=torch.from_numpy(fb["seg"]).long())
                points.append({k: v.cpu() for k, v in m.items()})
            if not items:
                continue
            size = max(fb["rgb"].shape[:2])
            results[kind] = {**summarise({k: torch.cat([m[k] for m in points]) for k in points[0]}, size),
                             "pairs": len(items)}
    return results
