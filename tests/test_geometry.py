"""dckp.geometry on analytic scenes (tests/synthetic_scenes.py): answers are checked against ray casting."""

import numpy as np
import pytest
import torch
from synthetic_scenes import intrinsics, look_at, make_scene, orbit_poses, raycast, render, surface_distance

from dckp.errors import DckpError
from dckp.geometry import (
    MASK_PRESETS,
    CorrespondenceConfig,
    MaskConfig,
    allocate,
    backproject,
    extract_surface_points,
    find_matches,
    integrate,
    make_volume,
    mask_iou_matched,
    pixel_grid,
    project,
    render_instance_masks,
    sample_matches,
    sample_non_matches,
    segment_objects,
    transform,
    warp_pixels,
)

H = W = 96
K = intrinsics(H, W)
TARGET = (0.0, 0.0, 0.03)



def world_points(scene, pose, uv):
    """Analytic world points seen at pixel centres `uv (N, 2)` of a camera, and whether anything is hit."""
    uv = np.asarray(uv, dtype=np.float64)
    rays = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], -1)
    dirs = rays @ pose[:3, :3].T
    t = raycast(scene, pose[:3, 3], dirs)[0]
    return pose[:3, 3] + t[:, None] * dirs, np.isfinite(t)


def project_np(points, pose):
    p = (points - pose[:3, 3]) @ pose[:3, :3]
    return np.stack([K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2], K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]], -1), p[:, 2]


def visible_from(scene, pose, points):
    """Whether each world point is the first surface hit from the camera centre (within 1 mm)."""
    dirs = points - pose[:3, 3]
    t = raycast(scene, pose[:3, 3], dirs)[0]
    return (1 - t) * np.linalg.norm(dirs, axis=1) < 0.001


@pytest.fixture(scope="module")
def pair():
    scene = make_scene(0, 3)
    pose_a, pose_b = look_at((0.5, -0.1, 0.35), TARGET), look_at((-0.45, 0.25, 0.3), (0.05, 0.0, 0.0))
    return scene, pose_a, pose_b, render(scene, K, pose_a, H, W), render(scene, K, pose_b, H, W)


def test_camera_round_trip():
    pose = look_at((0.4, 0.3, 0.5), TARGET)
    uv, z = project(torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64), torch.from_numpy(K))
    assert torch.allclose(uv, torch.tensor([[(W - 1) / 2, (H - 1) / 2]], dtype=torch.float64))
    depth = torch.rand(2, H, W, dtype=torch.float64) + 0.5  # a batch of two
    points = backproject(depth, torch.from_numpy(K))
    world = transform(torch.from_numpy(pose), points.reshape(2, -1, 3))
    cam = transform(torch.linalg.inv(torch.from_numpy(pose)), world)
    uv, z = project(cam, torch.from_numpy(K))
    assert torch.allclose(uv, pixel_grid(H, W, dtype=torch.float64).reshape(1, -1, 2).expand(2, -1, -1))
    assert torch.allclose(z, depth.reshape(2, -1))
    assert np.allclose(project_np(np.array([TARGET]), pose)[0], [[(W - 1) / 2, (H - 1) / 2]])


def test_matches_agree_with_analytic_projection(pair):
    scene, pose_a, pose_b, a, b = pair
    uv_a, uv_b = find_matches(a["depth"], K, pose_a, b["depth"], K, pose_b)
    assert len(uv_a) > 1000
    points, hit = world_points(scene, pose_a, uv_a.numpy())
    assert hit.all()
    expected, _ = project_np(points, pose_b)
    assert np.abs(uv_b.numpy() - expected).max() < 0.5
    assert np.median(np.linalg.norm(uv_b.numpy() - expected, axis=1)) < 0.01
    # Matches are visible from b (but for a few at depth edges), and most visible in-view pixels are matched.
    assert visible_from(scene, pose_b, points).mean() > 0.995
    all_uv = pixel_grid(H, W).reshape(-1, 2).numpy()[a["depth"].ravel() > 0]
    all_points, _ = world_points(scene, pose_a, all_uv)
    uv, z = project_np(all_points, pose_b)
    in_view = (z > 0) & (uv >= -0.5).all(1) & (uv[:, 0] <= W - 0.5) & (uv[:, 1] <= H - 0.5)
    window = neighbourhood(b["depth"], uv)
    off_edges = (window.max(0) - window.min(0)) < 0.02  # pixels at depth edges may be dropped
    expected = in_view & off_edges & visible_from(scene, pose_b, all_points)
    matched_image = np.zeros((H, W), dtype=bool)
    matched_image[uv_a[:, 1].long(), uv_a[:, 0].long()] = True
    matched = matched_image[all_uv[:, 1].astype(int), all_uv[:, 0].astype(int)]
    assert expected.sum() > 1000 and (matched & expected).sum() >= 0.99 * expected.sum()


def neighbourhood(depth, uv):
    """(9, N) depths of the 3x3 pixels around the nearest pixel to each `uv (N, 2)` (clamped to the image)."""
    near = np.clip(np.round(uv).astype(int), 1, [W - 2, H - 2])
    return np.stack([depth[near[:, 1] + dv, near[:, 0] + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)])


def test_occluded_and_out_of_view_points_rejected(pair):
    scene, pose_a, pose_b, a, b = pair
    uv_all = pixel_grid(H, W).reshape(-1, 2)[torch.from_numpy(a["depth"].ravel() > 0)]
    uv_b, valid = warp_pixels(uv_all, a["depth"], K, pose_a, b["depth"], K, pose_b)
    points, _ = world_points(scene, pose_a, uv_all.numpy())
    uv, z = project_np(points, pose_b)
    out_of_view = (z <= 0) | (uv < -0.5).any(1) | (uv[:, 0] > W - 0.5) | (uv[:, 1] > H - 0.5)
    # Deeply occluded: b's 3x3 neighbourhood around the projection all sees something >= 1 cm in front.
    window = neighbourhood(b["depth"], uv)
    occluded = ~out_of_view & (window > 0).all(0) & (window < z - 0.01).all(0)
    near = np.round(uv[occluded]).astype(int)
    occluder_ids = b["seg"][near[:, 1], near[:, 0]]
    assert out_of_view.sum() > 100 and occluded.sum() > 50 and (occluder_ids > 0).all()
    assert not valid[torch.from_numpy(out_of_view)].any()
    assert not valid[torch.from_numpy(occluded)].any()
    assert (uv_b[valid] >= -0.5).all() and (uv_b[valid] <= W - 0.5).all()


def test_invalid_depth_dropped(pair):
    _, pose_a, pose_b, a, b = pair
    depth_a, depth_b = a["depth"].copy(), b["depth"].copy()
    depth_a[30:50, 30:50] = 0
    depth_b[40:60, 20:60] = 0
    uv_a, uv_b = find_matches(depth_a, K, pose_a, depth_b, K, pose_b)
    assert not ((uv_a >= 30) & (uv_a < 50)).all(1).any()
    near_hole = (uv_b[:, 0] > 19) & (uv_b[:, 0] < 60) & (uv_b[:, 1] > 39) & (uv_b[:, 1] < 60)
    assert not near_hole.any()
    _, uv_b_full = find_matches(depth_a, K, pose_a, b["depth"], K, pose_b)
    full_near_hole = (uv_b_full[:, 0] > 19) & (uv_b_full[:, 0] < 60) & (uv_b_full[:, 1] > 39)
    assert (full_near_hole & (uv_b_full[:, 1] < 60)).sum() > 100  # the hole did remove matches


def test_batched_warp_and_sampling(pair):
    scene, pose_a, pose_b, a, b = pair
    uv_a, uv_b = find_matches(a["depth"], K, pose_a, b["depth"], K, pose_b)
    stack = lambda x, y: torch.stack([torch.as_tensor(x), torch.as_tensor(y)])  # noqa: E731
    uv = pixel_grid(H, W).reshape(1, -1, 2).expand(2, -1, -1)
    batch_b, valid = warp_pixels(uv, stack(a["depth"], b["depth"]), K, stack(pose_a, pose_b),
                                 stack(b["depth"], a["depth"]), K, stack(pose_b, pose_a))
    # float32 pixel coordinates: batched and single matrix products round differently by CPU (3e-5 px seen on an
    # AVX-512 machine, where allclose's default rtol fails near the image border), so compare within 1e-4 px
    assert torch.equal(uv[0][valid[0]], uv_a) and torch.allclose(batch_b[0][valid[0]], uv_b, rtol=0, atol=1e-4)
    back_a, back_b = find_matches(b["depth"], K, pose_b, a["depth"], K, pose_a)
    assert torch.equal(uv[1][valid[1]], back_a) and torch.allclose(batch_b[1][valid[1]], back_b, rtol=0, atol=1e-4)

    mask_a = torch.from_numpy(a["seg"] > 0)
    draw = lambda seed: sample_matches(mask_a, a["depth"], K, pose_a, b["depth"], K, pose_b, 50,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))
    (s_a, s_b), (t_a, _) = draw(0), draw(0)
    assert len(s_a) == 50 and torch.equal(s_a, t_a) and not torch.equal(s_a, draw(1)[0])
    assert mask_a[s_a[:, 1].long(), s_a[:, 0].long()].all()

    cfg = CorrespondenceConfig()
    mask_b = torch.from_numpy(b["seg"] > 0)
    non, ok = sample_non_matches(s_b, mask_b, cfg.non_matches_per_match, cfg.exclusion_px,
                                 generator=torch.Generator().manual_seed(0))
    assert non.shape == (50, cfg.non_matches_per_match, 2) and ok.all()
    assert mask_b[non[..., 1].long(), non[..., 0].long()].all()
    assert ((non - s_b[:, None]).norm(dim=-1) > cfg.exclusion_px).all()
    _, none_ok = sample_non_matches(s_b, torch.zeros(H, W, dtype=torch.bool), 3)
    assert not none_ok.any()


POSES = orbit_poses(10, 0.55, 0.4, TARGET) + orbit_poses(8, 0.35, 0.6, TARGET)


def fuse(scene, occluder_in=(), allocate_first=False, cfg=MASK_PRESETS["cpu"]):
    """Surface points and colours of the scene fused from POSES, with the occluder in the frames `occluder_in`."""
    frames = [render(scene, K, pose, H, W, occluder=i in occluder_in) for i, pose in enumerate(POSES)]
    volume = make_volume([-0.25, -0.25, -0.05], [0.25, 0.25, 0.2], cfg.voxel_size, cfg.trunc)
    if allocate_first:
        for frame, pose in zip(frames, POSES, strict=True):
            allocate(volume, frame["depth"], K, pose)
    for frame, pose in zip(frames, POSES, strict=True):
        integrate(volume, frame["depth"], frame["rgb"], K, pose)
    return extract_surface_points(volume)


@pytest.fixture(scope="module")
def fused():
    """A two-object scene fused without the occluder, a three-object one with it in every 4th frame."""
    out = {}
    for seed, n, occluder_in in ((0, 2, ()), (1, 3, range(1, len(POSES), 4))):
        scene = make_scene(seed, n)
        points, colors = fuse(scene, occluder_in)
        out[n] = scene, points, colors, segment_objects(points, MASK_PRESETS["cpu"])
    return out


def test_fused_surface_within_one_voxel(fused):
    scene, points, colors, _ = fused[3]
    assert len(points) > 5000
    assert surface_distance(scene, points.numpy()).max() < MASK_PRESETS["cpu"].voxel_size
    clear = [np.linalg.norm(points.numpy()[:, :2] - o["center"][:2], axis=1) > 0.08 for o in scene["objects"]]
    on_table = (points[:, 2].abs() < 0.001) & torch.from_numpy(np.all(clear, axis=0))
    assert on_table.sum() > 1000
    grey = colors[on_table].int()
    assert (grey.max(1).values - grey.min(1).values).max() <= 2  # the table is grey


@pytest.mark.parametrize("n", [2, 3])
def test_segmentation_finds_objects_and_masks_match(fused, n):
    scene, points, _, labels = fused[n]
    assert labels.max() == n
    centroids = np.array([points.numpy()[labels == k].mean(0) for k in range(1, n + 1)])
    centres = np.array([o["center"] for o in scene["objects"]])
    assert np.linalg.norm(centroids[:, None, :2] - centres[None, :, :2], axis=-1).min(1).max() < 0.02
    for pose in (look_at((0.45, 0.2, 0.3), TARGET), look_at((-0.2, -0.4, 0.45), TARGET)):
        for occluder in (False, True):
            frame = render(scene, K, pose, H, W, occluder=occluder)
            mask = render_instance_masks(points, labels, frame["depth"], K, pose, MASK_PRESETS["cpu"])
            score = mask_iou_matched(mask, frame["seg"])
            assert score["missed"] == 0 and score["spurious"] == 0
            assert min(score["iou"].values()) >= 0.85, score
            assert not mask[frame["seg"] == 255].any()
    assert (frame["seg"] == 255).sum() > 50  # the occluder was in view


def test_allocating_all_frames_first_erases_a_late_occluder():
    scene = make_scene(1, 3)
    points, _ = fuse(scene, occluder_in=range(len(POSES) - 3, len(POSES)), allocate_first=True)
    assert segment_objects(points, MASK_PRESETS["cpu"]).max() == 3
    assert (points[:, 2] > 0.12).sum() == 0  # nothing left of the occluder (0.14..0.26 m high)


def test_mask_iou_matched():
    gt = np.zeros((10, 10), np.uint8)
    gt[:5, :5], gt[6:, 6:], gt[0, 9] = 1, 2, 255
    pred = np.zeros_like(gt)
    pred[:5, :4], pred[7:9, 0:2] = 7, 3
    score = mask_iou_matched(pred, gt)
    assert score["iou"] == {1: 0.8, 2: 0.0} and score["missed"] == 1 and score["spurious"] == 1
    assert score["mean_iou"] == pytest.approx(0.4)


def assert_error(call, field):
    with pytest.raises(DckpError) as e:
        call()
    assert field in str(e.value) and "\n" not in str(e.value)


def test_bad_inputs_raise_one_line_errors(pair):
    _, pose_a, pose_b, a, b = pair
    nan = a["depth"].copy()
    nan[3, 4] = np.nan
    assert_error(lambda: find_matches(nan, K, pose_a, b["depth"], K, pose_b), "depth_a")
    assert_error(lambda: find_matches(a["depth"], K[:2, :2], pose_a, b["depth"], K, pose_b), "K_a")
    assert_error(lambda: find_matches(a["depth"], K, pose_a, b["depth"], K, pose_b[:3]), "pose_b")
    assert_error(lambda: warp_pixels(torch.zeros(5, 3), a["depth"], K, pose_a, b["depth"], K, pose_b), "uv_a")
    volume = make_volume([-0.1] * 3, [0.1] * 3, 0.01, 0.03)
    assert_error(lambda: integrate(volume, nan, a["rgb"], K, pose_a), "depth")
    assert_error(lambda: integrate(volume, a["depth"], a["rgb"][:, :, :2], K, pose_a), "rgb")
    assert_error(lambda: make_volume([0] * 3, [1] * 3, 0.01, 0.005), "trunc")
    assert_error(lambda: segment_objects(np.zeros((0, 3)), MaskConfig()), "points")
    assert_error(lambda: segment_objects(np.zeros((5, 2)), MaskConfig()), "points")
    assert_error(lambda: render_instance_masks(np.zeros((4, 3)), np.ones(3), a["depth"], K, pose_a,
                                               MaskConfig()), "labels")
    assert_error(lambda: MaskConfig(dbscan_eps=0), "dbscan_eps")
    assert_error(lambda: MaskConfig(workspace_max=[-1, 0, 0]), "workspace_max")
    assert_error(lambda: CorrespondenceConfig(n_matches=0), "n_matches")
