"""Keypoint error on the demonstrations' frames (`dckp eval-keypoints`): the symmetry-aware error on hand-made
object poses, and the command on a tiny lift run with an untrained DON."""

import json
import math

import pytest
import torch
from safetensors.torch import save

from dckp.cli.main import main
from dckp.config import atomic_write_bytes
from dckp.data import Dataset
from dckp.encoders.keypoints import DonKeypoints, GroundTruthKeypoints
from dckp.evaluation.keypoint_error import SPLITS, symmetric_twins
from dckp.keypoints.select import load_references, select_references
from dckp.metrics import error_mm, median, pixel_error, symmetric_error
from dckp.policy.demos import frames_of
from dckp.sim.tasks import get_task

CAM = "robot0_eye_in_hand"
SIZE = 64


def _references(path, task: str, objects: list[int], local: list[list[float]]) -> GroundTruthKeypoints:
    K = len(objects)
    tensors = {f"{CAM}.descriptors": torch.zeros(K, 3), f"{CAM}.uv": torch.zeros(K, 2),
               f"{CAM}.object": torch.tensor(objects), f"{CAM}.local": torch.tensor(local, dtype=torch.float32)}
    atomic_write_bytes(path, save(tensors, metadata={"dckp": json.dumps({"task": task})}))
    return GroundTruthKeypoints([CAM], SIZE, references=str(path))


def _frames(n_objects: int, yaw: float) -> dict:
    """One frame: every object at (0.02, -0.01, 0.8) turned by `yaw` about z, seen from 0.4 m straight above."""
    pose = torch.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    pose[:2, :2] = torch.tensor([[c, -s], [s, c]])
    pose[:3, 3] = torch.tensor([0.02, -0.01, 0.8])
    camera = torch.eye(4)
    camera[:3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # looking down (OpenCV: z forward)
    camera[:3, 3] = torch.tensor([0.0, 0.0, 1.2])
    K = torch.tensor([[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]])
    return {"object_pose": pose.expand(1, n_objects, 4, 4), f"{CAM}_pose": camera[None], f"{CAM}_K": K[None]}


def _errors(gt, twins, frames, found_local):
    """Raw and symmetry-aware (px, mm) errors `(K,)` of keypoints found at `found_local` (K, 3) on their objects."""
    uv, _, world = gt.points(frames, CAM)
    found_uv, _, found_world = gt.points(frames, CAM, local=torch.tensor(found_local)[:, None])
    uv_twins, _, world_twins = gt.points(frames, CAM, local=twins[CAM])
    found_uv, found_world = found_uv[:, :, 0], found_world[:, :, 0]
    return ((pixel_error(found_uv, uv)[0], error_mm(found_world, world)[0]),
            (symmetric_error(found_uv, uv_twins)[0], symmetric_error(found_world, world_twins, error_mm)[0]))


def test_symmetry_aware_error_is_zero_for_a_cube_keypoint_at_a_symmetric_corner(tmp_path):
    h = 0.02
    gt = _references(tmp_path / "refs.safetensors", "lift", [0, 0], [[h, h, h], [h, 0, 0.5 * h]])
    twins = symmetric_twins(gt.refs, ["cube"], get_task("lift"))
    assert twins[CAM].shape == (2, 24, 3) and torch.equal(twins[CAM][:, 0], gt.refs[CAM]["local"])
    # the corner found at the opposite bottom corner, the face point on another face: wrong raw, right by symmetry
    (px, mm), (px_sym, mm_sym) = _errors(gt, twins, _frames(1, 0.3), [[-h, -h, -h], [0, 0.5 * h, -h]])
    assert (px > 2).all() and (mm > 20).all()
    assert (px_sym < 1e-3).all() and (mm_sym < 1e-3).all()
    # a point off the object's symmetric twins keeps an error
    (px, mm), (px_sym, mm_sym) = _errors(gt, twins, _frames(1, 0.3), [[0, 0, h], [h, h, h]])
    assert (mm_sym > 10).all() and (px_sym > 1).all() and (mm_sym <= mm).all()


def test_symmetry_groups_of_the_square_nut_and_the_can(tmp_path):
    # nut_assembly: the square nut turns by 90 degrees onto itself, not by 45
    gt = _references(tmp_path / "nut.safetensors", "nut_assembly", [0, 0], [[0.03, 0.03, 0.0], [0.03, 0.03, 0.0]])
    twins = symmetric_twins(gt.refs, ["nut", "peg"], get_task("nut_assembly"))
    assert twins[CAM].shape == (2, 4, 3)
    (_, mm), (_, mm_sym) = _errors(gt, twins, _frames(2, -0.4), [[-0.03, 0.03, 0.0], [0.03 * 2**0.5, 0.0, 0.0]])
    assert mm[0] > 50 and mm_sym[0] < 1e-3 and mm_sym[1] > 20
    # pick_place_clutter: the can is a body of revolution about z (every degree), the milk carton has no symmetry
    angle = math.radians(37.3)
    gt = _references(tmp_path / "can.safetensors", "pick_place_clutter", [3, 0], [[0.03, 0, 0], [0.01, 0, 0]])
    twins = symmetric_twins(gt.refs, ["milk", "bread", "cereal", "can"], get_task("pick_place_clutter"))
    assert twins[CAM].shape == (2, 360, 3)
    turned = [[0.03 * math.cos(angle), 0.03 * math.sin(angle), 0], [0.01 * math.cos(angle), 0.01 * math.sin(angle), 0]]
    (_, mm), (_, mm_sym) = _errors(gt, twins, _frames(4, 0.2), turned)
    assert mm[0] > 15 and mm_sym[0] < 0.3  # the nearest degree: 0.3 degrees at 3 cm
    assert mm_sym[1] == pytest.approx(mm[1].item())  # the milk: the raw error


@pytest.fixture(scope="module")
def tiny_run(tiny_lift, tmp_path_factory):
    demos, don = tiny_lift
    refs = tmp_path_factory.mktemp("keypoint_error") / "refs.safetensors"
    from dckp.don.train import load_don

    select_references(load_don(don).eval(), demos, refs, per_camera=8)
    return demos, don, refs


def test_eval_keypoints_on_a_tiny_run(tiny_run, tmp_path, capsys):
    demos, don, refs = tiny_run
    out = tmp_path / "ke.json"
    assert main(["eval-keypoints", "--don", str(don), "--references", str(refs), "--demos", str(demos),
                 "--episodes", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{CAM} filter: in image" in printed and printed.strip().endswith(f"wrote {out}")
    result = json.loads(out.read_text())
    assert result["task"] == "lift" and result["episodes"] == 1 and result["image_size"] == SIZE
    assert result["config"]["methods"] == ["mode", "gate", "filter"] and result["metrics"] == 2
    assert 0.5 < result["in_image"][CAM] <= 1
    for m in ("mode", "gate", "filter"):
        r = result["by_method"][m][CAM]
        assert set(r) == set(SPLITS)
        assert r["all"]["keypoints"] == sum(r[s]["keypoints"] for s in ("visible_near", "visible_far", "occluded"))
        assert r["occluded_after_seen"]["keypoints"] <= r["occluded"]["keypoints"]
        for s in SPLITS:
            e = r[s]
            assert set(e) == {"keypoints", "median_px", "median_mm", "median_px_sym", "median_mm_sym", "pck@5%"}
            if e["keypoints"]:
                assert 0 <= e["median_px_sym"] <= e["median_px"] and 0 <= e["median_mm_sym"] <= e["median_mm"]
    assert result["by_method"]["mode"][CAM]["all"]["median_px_sym"] < result["by_method"]["mode"][CAM]["all"][
        "median_px"]  # the cube's symmetry forgives part of an untrained DON's error

    # the mode is dckp-3d's keypoint, and the ground truth gt-kp's, over the keypoints inside the image
    with Dataset(demos) as ds:
        frames = frames_of(ds, "demo_0", [CAM], 0, len(ds.actions("demo_0")))
    found = DonKeypoints([CAM], SIZE, don=str(don), references=str(refs)).image_keypoints(frames)[CAM][0]
    uv, p, _ = GroundTruthKeypoints([CAM], SIZE, references=str(refs)).points(frames, CAM)
    inside = ((uv >= 0) & (uv < SIZE)).all(-1) & (p[..., 2] > 0)
    assert result["by_method"]["mode"][CAM]["all"]["median_px"] == pytest.approx(
        median(pixel_error(found, uv)[inside]), abs=1e-9)
    assert result["in_image"][CAM] == pytest.approx(inside.double().mean().item())


def test_eval_keypoints_names_what_is_wrong(tiny_run, tmp_path, capsys):
    demos, don, refs = tiny_run
    argv = ["eval-keypoints", "--don", str(don), "--references", str(refs), "--demos", str(demos)]
    for extra, names in ((["--episodes", "0"], "--episodes"), (["--methods", "mode", "kalman"], "--methods"),
                         (["--near", "0"], "--near")):
        assert main([*argv, *extra, "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: {names}:"), err
    tensors, meta = load_references(refs)
    other = tmp_path / "stack_refs.safetensors"
    atomic_write_bytes(other, save({f"{cam}.{k}": v for cam, r in tensors.items() for k, v in r.items()},
                                   metadata={"dckp": json.dumps({**meta, "task": "stack"})}))
    assert main(["eval-keypoints", "--don", str(don), "--references", str(other), "--demos", str(demos)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and "references of task 'stack'" in err, err
    assert not (tmp_path / "x.json").exists() and not (don / "keypoint_error.json").exists()


def test_declared_symmetries_are_rotation_groups_of_the_tasks_objects():
    from dckp.sim.tasks import TASKS
    from dckp.sim.tasks.base import symmetry_rotations

    declared = {name: kind for t in TASKS.values() for name, kind in t.symmetry.items()}
    assert declared == {"cube": "cube", "cubeA": "cube", "cubeB": "cube", "nut": "square", "peg": "square",
                        "can": "revolution"}
    assert all(set(t.symmetry) <= set(t.objects) for t in TASKS.values())
    for kind, size in (("cube", 24), ("square", 4), ("revolution", 360), (None, 1)):
        R = torch.from_numpy(symmetry_rotations(kind))
        assert R.shape == (size, 3, 3) and torch.equal(R[0], torch.eye(3, dtype=R.dtype))
        assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(size, 3, 3), atol=1e-12)
        assert torch.allclose(torch.linalg.det(R), torch.ones(size, dtype=R.dtype))
        if size <= 24:  # closed under composition, and no rotation twice
            products = (R[:, None] @ R[None]).reshape(-1, 1, 9)
            nearest = (products - R.reshape(1, -1, 9)).abs().amax(-1).amin(-1)
            assert nearest.max() < 1e-9 and len({tuple(r.round().flatten().tolist()) for r in R}) == size
    with pytest.raises(ValueError, match="unknown symmetry"):
        symmetry_rotations("sphere")
