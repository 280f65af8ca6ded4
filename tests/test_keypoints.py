"""dckp.keypoints on synthetic descriptor maps whose best matches are known."""

import json
import math

import numpy as np
import pytest
import synthetic_scenes as synth
import torch

from dckp.data.dataset import DatasetWriter
from dckp.errors import DckpError
from dckp.geometry import project, transform
from dckp.keypoints import (
    depth_at,
    descriptor_distance,
    extract_keypoints,
    keypoints_3d,
    load_pixels,
    references_at,
    sample_references,
)
from dckp.keypoints.select import load_references, select_references, single_view_masks

H, W, D = 12, 16, 4



def cone(centres, scale=1.0):
    """`(B, D, H, W)` descriptors `f(u, v) = r + scale (u - u0, v - v0, 0, 0)` with the reference r = (1, 2, 3, 4):
    the distance to r is `scale |(u, v) - (u0, v0)| / sqrt(D)`, lowest (0) at `(u0, v0)`."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    maps = []
    for u0, v0 in centres:
        offset = torch.stack([u - u0, v - v0, torch.zeros_like(u), torch.zeros_like(u)]) * scale
        maps.append(ref[:, None, None] + offset)
    return torch.stack(maps), ref[None]


def intrinsics(B):
    return torch.tensor([[20.0, 0, (W - 1) / 2], [0, 20.0, (H - 1) / 2], [0, 0, 1]]).expand(B, 3, 3)


def random_poses(B, generator):
    q, _ = torch.linalg.qr(torch.randn(B, 3, 3, generator=generator))
    q = q * torch.linalg.det(q)[:, None, None]  # a proper rotation
    pose = torch.eye(4).repeat(B, 1, 1)
    pose[:, :3, :3], pose[:, :3, 3] = q, torch.randn(B, 3, generator=generator)
    return pose


def test_distance_is_normalised_euclidean():
    g = torch.Generator().manual_seed(0)
    desc, refs = torch.randn(2, D, H, W, generator=g), torch.randn(3, D, generator=g)
    dist = descriptor_distance(desc, refs)
    assert dist.shape == (2, 3, H, W)
    expect = (desc[1, :, 5, 7] - refs[2]).norm() / math.sqrt(D)
    assert torch.allclose(dist[1, 2, 5, 7], expect, atol=1e-6)


def test_mode_lands_on_the_minimum_and_expectation_near_it():
    desc, ref = cone([(9, 4), (2, 10)])
    out = extract_keypoints(desc, ref, temperature=0.05, mode="mode")
    assert out["uv"].tolist() == [[[9.0, 4.0]], [[2.0, 10.0]]]
    assert out["distance"].abs().max() < 1e-6
    assert torch.allclose(out["peak"], torch.softmax(-descriptor_distance(desc, ref).flatten(-2) / 0.05, -1).amax(-1))
    exp = extract_keypoints(desc, ref, temperature=0.05, mode="expectation")
    assert (exp["uv"] - out["uv"]).abs().max() < 0.05
    broad = extract_keypoints(desc, ref, temperature=1.0, mode="expectation")  # pulled towards the image centre
    assert (broad["uv"] - out["uv"]).abs().max() > 0.5


def test_corners_normalise_to_plus_minus_one():
    desc = torch.randn(1, D, H, W, generator=torch.Generator().manual_seed(1))
    corners = torch.tensor([[0, 0], [W - 1, 0], [0, H - 1], [W - 1, H - 1]])
    out = extract_keypoints(desc, references_at(desc[0], corners), temperature=0.1)
    assert torch.equal(out["uv"][0], corners.float())
    assert torch.equal(out["uv_norm"][0], torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))


def test_batched_equals_per_frame():
    g = torch.Generator().manual_seed(2)
    desc, refs = torch.randn(3, D, H, W, generator=g), torch.randn(5, D, generator=g)
    batched = extract_keypoints(desc, refs, temperature=0.2, mode="expectation")
    for b in range(3):
        single = extract_keypoints(desc[b:b + 1], refs, temperature=0.2, mode="expectation")
        for key in ("uv", "uv_norm", "distance", "peak"):
            assert torch.allclose(batched[key][b], single[key][0], atol=1e-5), key


def test_3d_variants_agree_with_geometry():
    g = torch.Generator().manual_seed(3)
    B = 2
    desc, refs = torch.randn(B, D, H, W, generator=g), torch.randn(6, D, generator=g)
    uv = extract_keypoints(desc, refs, temperature=0.1)["uv"]
    depth = 0.5 + torch.rand(B, H, W, generator=g)
    K, pose = intrinsics(B), random_poses(B, g)
    z = depth[torch.arange(B)[:, None], uv[..., 1].long(), uv[..., 0].long()]

    near = keypoints_3d(uv, depth, K, pose, frame="depth")
    assert torch.equal(near[..., 2], z)
    assert torch.allclose(near[..., :2], 2 * uv / torch.tensor([W - 1, H - 1]) - 1)

    cam = keypoints_3d(uv, depth, K, pose, frame="camera")
    uv_back, z_back = project(cam, K)
    assert torch.allclose(uv_back, uv, atol=1e-4) and torch.equal(z_back, z)

    world = keypoints_3d(uv, depth, K, pose, frame="world")
    assert torch.allclose(world, transform(pose, cam), atol=1e-6)
    p_world = torch.einsum("bij,bkj->bki", pose[:, :3, :3], cam) + pose[:, None, :3, 3]
    assert torch.allclose(world, p_world, atol=1e-5)


def test_invalid_depth_takes_the_window_median():
    depth = torch.zeros(1, H, W)
    depth[0, 4:7, 4:7] = torch.arange(1, 10, dtype=torch.float32).view(3, 3)
    depth[0, 5, 5] = 0  # the keypoint's own pixel is invalid; valid neighbours: 1..4, 6..9
    uv = torch.tensor([[[5.2, 4.8], [4.0, 4.0], [14.0, 1.0]]])
    assert depth_at(uv, depth).tolist() == [[4.0, 1.0, 0.0]]  # lower median; own value; nothing valid -> 0
    assert depth_at(uv, depth, window=1).tolist() == [[0.0, 1.0, 0.0]]


def test_reference_sampling_is_even_and_inside_masks():
    g = torch.Generator().manual_seed(4)
    desc = torch.randn(D, H, W, generator=g)
    masks = torch.zeros(H, W, dtype=torch.uint8)
    masks[0:3, 0:3], masks[5:11, 2:12], masks[8:12, 13:16] = 2, 5, 7
    refs, uv, ids = sample_references(desc, masks, 10, generator=g)
    assert refs.shape == (10, D) and uv.shape == (10, 2)
    assert [int((ids == i).sum()) for i in (2, 5, 7)] == [4, 3, 3]
    assert torch.equal(masks[uv[:, 1], uv[:, 0]].long(), ids)
    assert len({tuple(p) for p in uv.tolist()}) == 10  # no pixel twice
    assert torch.equal(refs, desc[:, uv[:, 1], uv[:, 0]].T)
    with pytest.raises(DckpError, match="object 2 has 9 pixels"):
        sample_references(desc, masks, 30, generator=g)
    with pytest.raises(DckpError, match="no object pixels"):
        sample_references(desc, torch.zeros(H, W, dtype=torch.uint8), 3)


def test_load_pixels(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"uv": [[3, 4], [10.5, 2]]}))
    assert load_pixels(good).tolist() == [[3.0, 4.0], [10.5, 2.0]]
    bad = {"missing.json": None, "notjson.json": "{uv: ", "nokey.json": '{"points": [[1, 2]]}',
           "triple.json": '{"uv": [[1, 2, 3]]}', "empty.json": '{"uv": []}', "text.json": '{"uv": [["a", 1]]}'}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(DckpError) as e:
            load_pixels(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DckpError, match="outside"):
        references_at(torch.zeros(D, H, W), torch.tensor([[W, 0]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    g = torch.Generator().manual_seed(5)
    desc, refs = torch.randn(2, D, H, W, generator=g), torch.randn(3, D, generator=g)
    depth, K, pose = 0.5 + torch.rand(2, H, W, generator=g), intrinsics(2), random_poses(2, g)
    depth[:, ::2] = 0
    for mode in ("mode", "expectation"):
        cpu = extract_keypoints(desc, refs, 0.1, mode)
        gpu = extract_keypoints(desc.cuda(), refs.cuda(), 0.1, mode)
        for key in cpu:
            assert torch.allclose(cpu[key], gpu[key].cpu(), atol=1e-4), key
        for frame in ("depth", "camera", "world"):
            a = keypoints_3d(cpu["uv"], depth, K, pose, frame)
            b = keypoints_3d(gpu["uv"], depth.cuda(), K.cuda(), pose.cuda(), frame)
            assert torch.allclose(a, b.cpu(), atol=1e-4), frame


BOX = ([-0.3, -0.3, -0.05], [0.3, 0.3, 0.35])  # holds the table top, the objects and the floating occluder


def _view(scene, occluder=False):
    K, pose = synth.intrinsics(96, 96), synth.look_at([0.0, -0.35, 0.55], [0.0, 0.0, 0.0])
    return {**synth.render(scene, K, pose, 96, 96, occluder), "K": K, "pose": pose}


def test_a_single_view_drops_the_cluster_at_the_hand():
    scene = synth.make_scene(0, n_objects=3)  # the occluder, a box floating 20 cm up, stands in for the fingers
    fr = _view(scene, occluder=True)
    assert (fr["seg"] == synth.OCCLUDER_ID).sum() > 20
    without = single_view_masks(fr["depth"], fr["K"], fr["pose"], BOX)
    masks = single_view_masks(fr["depth"], fr["K"], fr["pose"], BOX, hand=scene["occluder"]["center"])
    assert without.max() == 4 and masks.max() == 3
    assert not masks[fr["seg"] == synth.OCCLUDER_ID].any()
    for k in (1, 2, 3):  # each remaining cluster is one object
        assert len(np.unique(fr["seg"][masks == k])) == 1


def test_references_come_from_the_first_scene_with_the_typical_object_count(tmp_path):
    """Of scenes showing 2, 3 (with the hand in view), 3 and 4 objects, the references are on the second: 3 is
    the count most scenes agree on, and the hand's cluster is not an object."""
    scenes = [synth.make_scene(i, n) for i, n in enumerate((2, 3, 3, 4))]
    views = [_view(s, occluder=i == 1) for i, s in enumerate(scenes)]
    with DatasetWriter(tmp_path / "views.h5", "views", "custom", ["a", "b", "c", "d"], {}, workspace=BOX) as w:
        for i, (scene, fr) in enumerate(zip(scenes, views, strict=True)):
            obs = {f"free_{k}": np.stack([fr[k]] * 2) for k in ("rgb", "depth", "K", "pose")}
            w.add_episode(f"scene_{i}", {**obs, "eef_pos": np.stack([scene["occluder"]["center"]] * 2)})
    summary = select_references(None, tmp_path / "views.h5", tmp_path / "refs.safetensors", per_camera=9)
    assert summary["free"]["episode"] == "scene_1"
    refs, _ = load_references(tmp_path / "refs.safetensors")
    u, v = refs["free"]["uv"].long().T
    assert sorted(np.unique(views[1]["seg"][v, u]).tolist()) == [1, 2, 3]  # three each, none on the hand
