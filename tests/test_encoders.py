"""Reference selection, keypoint encoders and policy training through them, on a tiny simulated demo."""

import json

import pytest
import torch

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.don.checkpoint import save_checkpoint
from dckp.don.config import DonConfig
from dckp.don.model import DenseObjectNet
from dckp.encoders import build_encoder
from dckp.errors import DckpError
from dckp.keypoints.select import load_references, select_references
from dckp.policy.demos import frames_of
from dckp.sim.collect import collect_demos
from dckp.sim.config import CollectConfig

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enc")
    demos = tmp / "lift.h5"
    collect_demos(CollectConfig(task="lift", demos=2, image_size=SIZE), str(demos), progress=False)
    cfg = DonConfig(backbone="resnet18", descriptor_dim=4, image_size=SIZE)
    torch.manual_seed(0)
    save_checkpoint(tmp / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 0)
    refs = tmp / "refs.safetensors"
    summary = select_references(DenseObjectNet(cfg).eval(), demos, refs, per_camera=8)
    return tmp, demos, refs, summary


def test_references_lie_on_the_object(setup):
    _, demos, refs_path, summary = setup
    refs, meta = load_references(refs_path)
    cam = "robot0_eye_in_hand"
    assert meta["task"] == "lift" and summary[cam]["references"] == 8
    with Dataset(demos) as ds:
        seg = ds.frame(ds.episodes[0], cam, 0)["seg"]
    u, v = refs[cam]["uv"].round().long().T
    assert (seg[v, u] == 1).mean() >= 0.75  # label-free masks from one view: mostly on the cube
    assert refs[cam]["descriptors"].shape == (8, 4)


def test_ground_truth_keypoints_follow_the_object(setup):
    _, demos, refs_path, _ = setup
    enc = build_encoder({"name": "gt-kp", "kwargs": {"references": str(refs_path), "form": "camera"}})
    refs, _ = load_references(refs_path)
    cam = "robot0_eye_in_hand"
    with Dataset(demos) as ds:
        ep = ds.episodes[0]
        T = len(ds.actions(ep))
        frames = frames_of(ds, ep, [cam], 0, T)
    uv, _ = enc.keypoints(frames)[cam]
    assert torch.allclose(uv[0], refs[cam]["uv"], atol=1e-3)  # the reference frame itself
    points = enc.encode(frames).reshape(T, -1, 3)  # camera frame
    K = frames[f"{cam}_K"].float()
    checked = 0
    for t in range(T):  # where the keypoint is visible, the depth image sees the moved point within a pixel
        u, v = uv[t].round().long().T
        inside = (u >= 0) & (u < SIZE) & (v >= 0) & (v < SIZE)
        d = frames[f"{cam}_depth"][t][v.clamp(0, SIZE - 1), u.clamp(0, SIZE - 1)]
        z = points[t, :, 2]
        visible = inside & ((d - z).abs() < 0.004)
        pixel_size = z / K[t, 0, 0]
        seen_x = (u - K[t, 0, 2]) * d / K[t, 0, 0]
        err = (seen_x - points[t, :, 0]).abs()
        assert (err[visible] <= 1.0 * pixel_size[visible] + 1e-4).all()
        checked += int(visible.sum())
    assert checked > T  # the cube moves (lifted) and keypoints stay on it


def test_dckp_encoders_shapes_and_errors(setup):
    tmp, demos, refs_path, _ = setup
    cam = "robot0_eye_in_hand"
    with Dataset(demos) as ds:
        frames = frames_of(ds, ds.episodes[0], [cam], 0, 3)
    for name, per_kp in (("dckp-3d", 3), ("dckp-2d", 2)):
        enc = build_encoder({"name": name, "kwargs": {"run": str(tmp / "don"), "references": str(refs_path)}})
        f = enc.encode(frames)
        assert f.shape == (3, 8 * per_kp) == (3, enc.feature_dim([cam]))
        if name == "dckp-2d":
            assert f.abs().max() <= 1.0
    with pytest.raises(DckpError, match="unknown encoder"):
        build_encoder({"name": "nope", "kwargs": {}})
    with pytest.raises(DckpError, match="file not found"):
        build_encoder({"name": "gt-kp", "kwargs": {"references": str(tmp / "missing.safetensors")}})


def test_train_policy_cli_caches_encodings(setup):
    tmp, demos, refs_path, _ = setup
    out = tmp / "policy"
    args = ["train-policy", "--demos", str(demos), "--encoder", "gt-kp", "--references", str(refs_path),
            "--out", str(out), "--steps", "5", "--hidden", "16", "--threads", "1"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "lift" and run["cameras"] == ["robot0_eye_in_hand"] and run["encoder"]["name"] == "gt-kp"
    stamp = (out / "features.h5").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "features.h5").stat().st_mtime_ns == stamp  # reused, not re-encoded
    assert main(["train-policy", "--demos", str(demos), "--encoder", "dckp-3d", "--references", str(refs_path),
                 "--out", str(out)]) == 2  # no DON run given


def test_smoke_policy_to_evaluation_record(setup):
    tmp, demos, refs_path, _ = setup
    out = tmp / "policy_dckp"
    assert main(["train-policy", "--demos", str(demos), "--encoder", "dckp-3d", "--don", str(tmp / "don"),
                 "--references", str(refs_path), "--out", str(out), "--steps", "3", "--hidden", "16"]) == 0
    assert main(["evaluate", str(out), "--episodes", "1", "--workers", "1", "--videos", "1", "--max-steps", "3"]) == 0
    record = json.loads((out / "eval" / "eval.json").read_text())
    assert record["episodes"] == 1 and 0 <= record["success_rate"] <= 1 and record["per_episode"][0]["steps"] <= 3
    assert list((out / "eval").glob("rollout_*.mp4"))


def test_blind_policy_sees_proprioception_alone(setup):
    tmp, demos, _, _ = setup
    cam = "robot0_eye_in_hand"
    with Dataset(demos) as ds:
        frames = frames_of(ds, ds.episodes[0], [cam], 0, 3)
    enc = build_encoder({"name": "blind", "kwargs": {}})
    assert enc.encode(frames).shape == (3, 0) == (3, enc.feature_dim([cam])) and not enc.needs_images
    out = tmp / "policy_blind"
    assert main(["train-policy", "--demos", str(demos), "--encoder", "blind", "--out", str(out), "--steps", "3",
                 "--hidden", "16"]) == 0  # no references needed
    assert json.loads((out / "policy.json").read_text())["obs_dim"] == 9  # eef_pos 3 + eef_quat 4 + gripper 2
    assert main(["evaluate", str(out), "--episodes", "1", "--workers", "1", "--videos", "0", "--max-steps", "3"]) == 0


def test_observation_without_images_has_the_rendered_camera_geometry():
    import numpy as np

    from dckp.sim.env import SimEnv
    from dckp.sim.tasks import get_task

    env = SimEnv(get_task("lift"), SIZE)
    try:
        env.reset(0)
        full, geometry_only = env.observe(), env.observe(images=False)
    finally:
        env.close()
    for key in ("robot0_eye_in_hand_K", "robot0_eye_in_hand_pose", "object_pose", "eef_pos"):
        np.testing.assert_array_equal(geometry_only[key], full[key])
    assert geometry_only["robot0_eye_in_hand_depth"].shape == full["robot0_eye_in_hand_depth"].shape
    assert not geometry_only["robot0_eye_in_hand_rgb"].any()
