"""`dckp.KeypointTracker`: the policy encoder's keypoints, exactly, for one camera or all, without the simulator."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save
from synthetic_scenes import intrinsics, look_at, make_scene, render

from dckp import KeypointTracker
from dckp.don.checkpoint import save_checkpoint
from dckp.don.config import DonConfig
from dckp.don.model import DenseObjectNet
from dckp.encoders import build_encoder
from dckp.errors import DckpError

CAMERAS = ("front", "wrist")
SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A randomly initialised DON, references on two cameras and three frames of a synthetic scene per camera."""
    tmp = tmp_path_factory.mktemp("tracker")
    cfg = DonConfig(backbone="resnet18", layers=3, descriptor_dim=4, image_size=SIZE)
    torch.manual_seed(0)
    save_checkpoint(tmp / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 0)
    refs = {}
    for i, cam in enumerate(CAMERAS):
        refs[f"{cam}.descriptors"] = torch.randn(5 + i, 4)
        refs[f"{cam}.uv"] = torch.zeros(5 + i, 2)
        refs[f"{cam}.object"] = torch.full((5 + i,), -1)
        refs[f"{cam}.local"] = torch.zeros(5 + i, 3)
    (tmp / "refs.safetensors").write_bytes(save(refs, metadata={"dckp": "{}"}))
    scene, K = make_scene(1, n_objects=2), intrinsics(SIZE, SIZE, 60)
    frames = {}
    for c, cam in enumerate(CAMERAS):
        poses = [look_at([0.4 * np.cos(a + c), 0.4 * np.sin(a + c), 0.3], [0, 0, 0.02]) for a in (0, 0.4, 0.8)]
        shots = [render(scene, K, pose, SIZE, SIZE) for pose in poses]
        frames[f"{cam}_rgb"] = torch.from_numpy(np.stack([s["rgb"] for s in shots]))
        frames[f"{cam}_depth"] = torch.from_numpy(np.stack([s["depth"] for s in shots]))
        frames[f"{cam}_K"] = torch.from_numpy(np.stack([K] * 3)).float()
        frames[f"{cam}_pose"] = torch.from_numpy(np.stack(poses)).float()
    return tmp / "don", tmp / "refs.safetensors", frames


@pytest.mark.parametrize("form", ["depth", "world", "2d"])
def test_tracker_gives_the_policy_encoders_keypoints(setup, form):
    don, refs, frames = setup
    name, options = ("dckp-2d", {}) if form == "2d" else ("dckp-3d", {"form": form})
    encoder = build_encoder({"name": name, "options": options, "artefacts": {"don": str(don),
                                                                              "references": str(refs)}}, CAMERAS, SIZE)
    tracker = KeypointTracker.load(don, refs, form=form)
    assert tracker.cameras == list(CAMERAS)
    for t in range(3):  # one frame at a time, as in the control loop
        expected = encoder({key: value[t:t + 1] for key, value in frames.items()})[0]  # what the policy sees
        one = {key: {cam: frames[f"{cam}_{key}"][t].numpy() for cam in CAMERAS}
               for key in ("rgb", "depth", "K", "pose")}
        kps = tracker.track(one["rgb"], one["depth"], one["K"], one["pose"])  # every camera at once
        assert torch.equal(torch.cat([kps[cam].points.flatten() for cam in CAMERAS]), expected)
        single = tracker.track(one["rgb"]["wrist"], one["depth"]["wrist"], one["K"]["wrist"], one["pose"]["wrist"],
                               camera="wrist")
        assert torch.equal(single.points, kps["wrist"].points) and single.confidence.shape == (6,)
        assert ((single.confidence > 0) & (single.confidence <= 1)).all()
    batched = tracker.track(*(frames[f"front_{key}"] for key in ("rgb", "depth", "K", "pose")), camera="front")
    expected = encoder(frames)  # the same batch of 3 frames
    assert torch.equal(batched.points.flatten(1), expected[:, :batched.points[0].numel()])


def test_tracker_errors(setup):
    don, refs, frames = setup
    tracker = KeypointTracker.load(don, refs, form="world")
    rgb, depth, K = (frames[f"front_{key}"][0] for key in ("rgb", "depth", "K"))
    with pytest.raises(DckpError, match="name the camera"):
        tracker.track(rgb, depth, K, torch.eye(4))
    with pytest.raises(DckpError, match="need the camera pose"):
        tracker.track(rgb, depth, K, camera="front")
    with pytest.raises(DckpError, match="no references for camera"):
        tracker.track(rgb, depth, K, torch.eye(4), camera="side")
    with pytest.raises(DckpError, match="expected depth"):
        tracker.track(rgb, depth[:-1], K, torch.eye(4), camera="front")
    with pytest.raises(DckpError, match="unknown keypoint form"):
        KeypointTracker.load(don, refs, form="3d")


def test_tracker_refuses_garbage_and_masks_missing_depth(setup):
    """The misuses a control loop meets: millimetre depth, NaN in a pose, a zero K, no valid depth, a pose that is
    not rigid; each one line naming the camera's input. Depth with holes is allowed, its holes invalid (0)."""
    don, refs, frames = setup
    tracker = KeypointTracker.load(don, refs, form="world")
    rgb, depth, K, pose = (frames[f"front_{key}"][0].numpy() for key in ("rgb", "depth", "K", "pose"))
    nan_pose, stretched = pose.copy(), pose.copy()
    nan_pose[0, 3] = np.nan
    stretched[:3, :3] *= 1.1
    cases = [((rgb, (depth * 1000).astype(np.uint16), K, pose), "front_depth: depth is uint16"),
             ((rgb, depth * 1000, K, pose), "front_depth: the nearest depth is"),
             ((rgb, -depth, K, pose), "front_depth: negative depth"),
             ((rgb, np.full_like(depth, np.nan), K, pose), "front_depth: no valid depth"),
             ((rgb, depth, np.zeros((3, 3)), pose), "front_K: not camera intrinsics"),
             ((rgb, depth, K * np.nan, pose), "front_K: K contains NaN"),
             ((rgb, depth, K, nan_pose), "front_pose: pose contains NaN"),
             ((rgb, depth, K, stretched), "front_pose: not a rigid camera-to-world transform"),
             ((rgb.astype(np.float32), depth, K, pose), "front_rgb: expected rgb uint8")]
    for inputs, message in cases:
        with pytest.raises(DckpError, match=re.escape(message)) as e:
            tracker.track(*inputs, camera="front")
        assert "\n" not in str(e.value)
    holes, zeros = depth.copy(), depth.copy()
    holes[::2, ::3], zeros[::2, ::3] = np.nan, 0
    assert np.isnan(holes).any()
    with_holes, with_zeros = (tracker.track(rgb, d, K, pose, camera="front") for d in (holes, zeros))
    assert torch.isfinite(with_holes.points).all() and torch.equal(with_holes.points, with_zeros.points)


def test_importing_the_tracker_leaves_the_simulator_out():
    code = ("import sys, dckp.tracker; from dckp import KeypointTracker; "
            "print([m for m in sys.modules if m.split('.')[0] in ('robosuite', 'mujoco')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_dckp_stays_light():
    code = "import sys, dckp; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tracker_on_cuda_matches_cpu(setup):
    don, refs, frames = setup
    inputs = [frames[f"front_{key}"] for key in ("rgb", "depth", "K", "pose")]
    cpu = KeypointTracker.load(don, refs).track(*inputs, camera="front")
    gpu = KeypointTracker.load(don, refs, device="cuda").track(*inputs, camera="front")
    assert gpu.points.is_cuda
    assert torch.allclose(gpu.confidence.cpu(), cpu.confidence, atol=1e-4)
    assert (gpu.uv.cpu() == cpu.uv).float().mean() > 0.9  # the mode may move to a near-tie pixel
