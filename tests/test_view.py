"""`dckp view`: the .rrd it writes, read back with rerun's own `rerun.dataframe.load_recording`, holds the
expected entities with the file's camera poses, point clouds, masks and keypoints, for a views file, a demos file
with DON keypoints and a policy's rollout in the simulator."""

import numpy as np
import pytest
import torch
from rerun.dataframe import load_recording
from test_bad_inputs import FRAMES, WRIST, _demos, _frames, _views

from dckp.cli.main import main
from dckp.data import Dataset, DatasetWriter


def columns(rrd, contents: dict) -> dict:
    """{`entity:component`: list of values per frame} of a recording, on the `frame` timeline."""
    table = load_recording(rrd).view(index="frame", contents=contents).select().read_all()
    return {name: table.column(name).to_pylist() for name in table.column_names if ":" in name} | {
        "frame": table.column("frame").to_pylist()}


def entities(rrd) -> set[str]:
    return {c.entity_path for c in load_recording(rrd).schema().component_columns()}


def test_views_file_poses_clouds_masks_and_object_positions(tmp_path, capsys):
    views = tmp_path / "v.h5"
    _views(views, masks=True)
    assert main(["view", str(views), "--point-stride", "1"]) == 0
    rrd = tmp_path / "v.rrd"
    assert "no display: open it with" in capsys.readouterr().out  # the tests run without DISPLAY
    root = "/world/scene_0"
    assert {f"{root}/free", f"{root}/free/image", f"{root}/free/image/rgb", f"{root}/free/image/mask",
            f"{root}/free/points", f"{root}/free/objects", f"{root}/keypoints", f"{root}/keypoints/tracks"} <= \
        entities(rrd)
    cols = columns(rrd, {f"{root}/free": ["Translation3D", "TransformMat3x3"], f"{root}/free/points": ["Position3D"],
                         f"{root}/free/objects": ["Position3D", "ClassId"], f"{root}/keypoints": ["Position3D"]})
    assert cols["frame"] == list(range(FRAMES))
    with Dataset(views) as ds:
        for t in range(FRAMES):
            fr = ds.frame("scene_0", "free", t)
            mask = ds.f["data/scene_0/obs/free_mask"][t]
            np.testing.assert_allclose(cols[f"{root}/free:Translation3D"][t][0], fr["pose"][:3, 3], atol=1e-6)
            rotation = np.array(cols[f"{root}/free:TransformMat3x3"][t][0]).reshape(3, 3).T  # stored column-major
            np.testing.assert_allclose(rotation, fr["pose"][:3, :3], atol=1e-6)
            points = np.array(cols[f"{root}/free/points:Position3D"][t])  # camera frame (OpenCV axes)
            assert len(points) == (fr["depth"] > 0).sum()
            u = fr["K"][0, 0] * points[:, 0] / points[:, 2] + fr["K"][0, 2]  # they project back onto their pixels
            v = fr["K"][1, 1] * points[:, 1] / points[:, 2] + fr["K"][1, 2]
            np.testing.assert_allclose(fr["depth"][np.rint(v).astype(int), np.rint(u).astype(int)], points[:, 2],
                                       rtol=1e-5)
            assert np.all(np.abs(u - np.rint(u)) < 1e-3) and np.all(np.abs(v - np.rint(v)) < 1e-3)
            on = (fr["depth"] > 0) & (mask > 0)
            assert len(cols[f"{root}/free/objects:Position3D"][t]) == on.sum() > 0
            assert sorted(set(cols[f"{root}/free/objects:ClassId"][t])) == sorted(set(mask[on].tolist()))
            # no DON given: the objects' true positions (here at the origin)
            np.testing.assert_allclose(cols[f"{root}/keypoints:Position3D"][t], [[0, 0, 0]], atol=1e-6)


def test_a_recording_without_ground_truth_has_no_keypoints(tmp_path):
    path = tmp_path / "recording.h5"
    frames = {k: v for k, v in _frames("camera", FRAMES).items() if not k.endswith("_seg")}
    with DatasetWriter(path, "views", "recording", [], {}) as w:  # as `dckp import` writes: no object poses
        w.add_episode("scene_0", frames, seed=0, arm_only=False)
    assert main(["view", str(path)]) == 0
    found = entities(tmp_path / "recording.rrd")
    assert {"/world/scene_0/camera", "/world/scene_0/camera/image/rgb", "/world/scene_0/camera/points"} <= found
    assert not {e for e in found if "keypoints" in e or "gripper" in e or "mask" in e or "objects" in e}


@pytest.fixture
def don_and_references(tmp_path):
    from dckp.don.checkpoint import save_checkpoint
    from dckp.don.config import DonConfig
    from dckp.don.model import DenseObjectNet
    from dckp.keypoints.select import select_references

    demos = tmp_path / "d.h5"
    _demos(demos)
    cfg = DonConfig(backbone="resnet18", layers=3, descriptor_dim=3, image_size=32, steps=1)
    torch.manual_seed(0)
    model = DenseObjectNet(cfg).eval()
    save_checkpoint(tmp_path / "don" / "don.safetensors", model, cfg, 1)
    pixels = {WRIST: np.array([[10.0, 12.0], [16.0, 16.0], [20.0, 9.0]])}
    select_references(model, demos, tmp_path / "refs.safetensors", pixels=pixels)
    return demos, tmp_path / "don", tmp_path / "refs.safetensors"


def test_demos_with_don_keypoints_on_the_depth_surface(don_and_references, tmp_path):
    demos, don, refs = don_and_references
    out = tmp_path / "out" / "d.rrd"
    assert main(["view", str(demos), "--don", str(don), "--references", str(refs), "--out", str(out)]) == 0
    root = "/world/demo_0"
    cols = columns(out, {f"{root}/keypoints": ["Position3D", "Color"], f"{root}/gripper": ["Position3D"]})
    assert cols["frame"] == list(range(FRAMES))
    with Dataset(demos) as ds:
        for t in range(FRAMES):
            fr = ds.frame("demo_0", WRIST, t)
            world = np.array(cols[f"{root}/keypoints:Position3D"][t])
            assert world.shape == (3, 3)  # the three references, every one on valid depth here
            cam = (world - fr["pose"][:3, 3]) @ fr["pose"][:3, :3]  # into the camera frame
            u = np.rint(fr["K"][0, 0] * cam[:, 0] / cam[:, 2] + fr["K"][0, 2]).astype(int)
            v = np.rint(fr["K"][1, 1] * cam[:, 1] / cam[:, 2] + fr["K"][1, 2]).astype(int)
            np.testing.assert_allclose(cam[:, 2], fr["depth"][v, u], rtol=1e-4)  # a seen surface point
            assert len(cols[f"{root}/keypoints:Color"][t]) == 3
    assert {f"{root}/keypoints/tracks", f"{root}/{WRIST}/points"} <= entities(out)


def test_tracked_and_ground_truth_keypoints(don_and_references, tmp_path):
    from dckp.keypoints.select import load_references

    demos, don, refs = don_and_references
    out = tmp_path / "f.rrd"
    assert main(["view", str(demos), "--don", str(don), "--references", str(refs), "--encoder", "dckp-filter",
                 "--out", str(out)]) == 0
    cols = columns(out, {"/world/demo_0/keypoints": ["Position3D"]})
    assert cols["frame"] == list(range(FRAMES))
    tracked = np.array(cols["/world/demo_0/keypoints:Position3D"])
    assert tracked.shape == (FRAMES, 3, 3) and np.isfinite(tracked).all()
    assert main(["view", str(demos), "--references", str(refs), "--out", str(out), "--force"]) == 0  # truth
    truth = np.array(columns(out, {"/world/demo_0/keypoints": ["Position3D"]})["/world/demo_0/keypoints:Position3D"])
    local = load_references(refs)[0][WRIST]["local"].numpy()  # the object stands at the origin, unturned
    np.testing.assert_allclose(truth, np.broadcast_to(local, truth.shape), atol=1e-6)


def test_bad_view_inputs_are_one_line(don_and_references, tmp_path, capsys):
    demos, don, refs = don_and_references
    cases = [(["--don", str(don)], "--don needs --references"),
             (["--episodes", "demo_9"], "no episode 'demo_9'"),
             (["--point-stride", "0"], "must be >= 1"),
             (["--don", str(don), "--references", str(refs), "--encoder", "cnn"], "must be dckp-3d")]
    for flags, message in cases:
        assert main(["view", str(demos), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["view", str(tmp_path / "missing.h5")]) == 2
    assert not list(tmp_path.glob("*.rrd")) and not list(tmp_path.glob(".*.tmp"))


def test_a_policy_rollout(tmp_path, fake_encoder):
    from test_evaluation import _policy_dir

    policy = _policy_dir(tmp_path)
    assert main(["view", str(policy), "--max-steps", "2", "--seed", "5"]) == 0
    out = policy / "rollout_5.rrd"
    root = "/world/seed_5_failure"
    assert {f"{root}/{WRIST}", f"{root}/{WRIST}/image/rgb", f"{root}/{WRIST}/points", f"{root}/gripper",
            f"{root}/keypoints"} <= entities(out)
    cols = columns(out, {f"{root}/keypoints": ["Position3D"], f"{root}/{WRIST}/points": ["Position3D"]})
    assert cols["frame"] == [0, 1]  # the two observations acted on
    assert all(len(k) == 1 for k in cols[f"{root}/keypoints:Position3D"])  # the fake encoder's one keypoint
    assert all(len(p) > 100 for p in cols[f"{root}/{WRIST}/points:Position3D"])
