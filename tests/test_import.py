"""`dckp import` and `dckp export --format folder|tum`: a simulator views file out to both recording layouts and
back, fused alike; TUM association and quaternions on hand-made files; the workspace estimate; one line per bad
input."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from synthetic_scenes import intrinsics, make_scene, orbit_poses, render

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.errors import DckpError
from dckp.geometry.masks import mask_iou_matched
from dckp.io.recordings import associate, tum_pose
from dckp.keypoints.select import select_references
from dckp.sim.collect import collect_views
from dckp.sim.config import ViewsConfig


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """A stack views file (one scene, one arm-only sequence), exported to both layouts and imported back with its
    own workspace box and image size."""
    tmp = tmp_path_factory.mktemp("import")
    views = tmp / "views.h5"
    collect_views(ViewsConfig(task="stack", scenes=1, arm_only=1, image_size=96, free_views=10, sweep_waypoints=1,
                              record_every=25), str(views), progress=False)
    with Dataset(views) as ds:
        lo, hi = ds.workspace
    box = ["--workspace-min", *map(str, lo), "--workspace-max", *map(str, hi)]
    imported = {}
    for layout in ("folder", "tum"):
        assert main(["export", str(views), "--out", str(tmp / layout), "--format", layout]) == 0
        imported[layout] = tmp / f"{layout}.h5"
        assert main(["import", str(tmp / layout / "scene_0"), "--arm-only", str(tmp / layout / "arm_0"),
                     "--out", str(imported[layout]), "--height", "0", "--objects", "a", "b", *box]) == 0
    return tmp, views, imported


def test_export_and_import_give_the_same_cameras_and_depth(round_trip):
    _, views, imported = round_trip
    with Dataset(views) as a:
        for layout, path in imported.items():
            with Dataset(path) as b:
                assert b.kind == "views" and b.episodes == ["scene_0", "arm_0"] == a.episodes
                assert b.workspace == a.workspace and b.num_objects == 2 == a.num_objects
                assert b.episode_attrs("arm_0")["arm_only"]
                for ep in a.episodes:
                    n = a.num_frames(ep, "free")
                    x, y = ({k: d.frames(ep, "free", k, 0, n) for k in ("rgb", "depth", "K", "pose")} for d in (a, b))
                    assert np.array_equal(x["rgb"], y["rgb"]) and np.array_equal(x["K"], y["K"])
                    if layout == "folder":
                        assert np.array_equal(x["pose"], y["pose"])
                    else:  # through quaternions
                        assert np.abs(x["pose"] - y["pose"]).max() < 1e-6
                    step = 1e-3 if layout == "folder" else 1 / 5000  # the PNG's depth unit (metres)
                    assert np.abs(x["depth"] - y["depth"]).max() <= step / 2 + 1e-6
                    assert np.array_equal(x["depth"] > 0, y["depth"] > 0)


def test_fusing_the_import_matches_fusing_the_original(round_trip):
    tmp, views, imported = round_trip
    original = tmp / "original.h5"
    shutil.copyfile(views, original)
    summaries = {}
    for name, path in (("original", original), ("imported", imported["tum"])):
        assert main(["fuse", str(path)]) == 0
        with Dataset(path) as ds:
            summaries[name] = ds.f["data/scene_0/fused/labels"][()].max(), ds.f["data/scene_0/obs/free_mask"][()]
    (n_a, masks_a), (n_b, masks_b) = summaries["original"], summaries["imported"]
    assert n_a == n_b == 2
    ious = [iou for a, b in zip(masks_a, masks_b, strict=True)
            for iou in mask_iou_matched(b, a)["iou"].values()]
    assert np.mean(ious) >= 0.95, ious


def test_references_on_an_imported_recording_need_no_ground_truth(round_trip, tmp_path):
    _, _, imported = round_trip
    summary = select_references(None, imported["folder"], tmp_path / "refs.safetensors", per_camera=6, frame=2)
    assert summary["free"]["references"] == 6 and summary["free"]["objects_hit"] == [-1]
    with pytest.raises(DckpError, match="no object found"):  # the user's box, here one beside the scene
        select_references(None, imported["folder"], tmp_path / "r.safetensors", workspace=([2, 2, 0], [3, 3, 1]))


def _write_tum(root, stamps_rgb, stamps_depth, gt_rows, size=(16, 12)):
    """A TUM sequence of flat frames (depth 1 m) at the given timestamps, and its intrinsics.json."""
    W, H = size
    for kind, stamps in (("rgb", stamps_rgb), ("depth", stamps_depth)):
        (root / kind).mkdir(parents=True)
        lines = [f"# {kind}"]
        for t in stamps:
            image = np.full((H, W, 3), 100, np.uint8) if kind == "rgb" else np.full((H, W), 5000, np.uint16)
            iio.imwrite(root / kind / f"{t:.6f}.png", image)
            lines.append(f"{t:.6f} {kind}/{t:.6f}.png")
        (root / f"{kind}.txt").write_text("\n".join(lines) + "\n")
    (root / "groundtruth.txt").write_text("# timestamp tx ty tz qx qy qz qw\n" + "".join(
        " ".join(f"{x:.6f}" for x in row) + "\n" for row in gt_rows))
    (root / "intrinsics.json").write_text(json.dumps({"fx": 20, "fy": 20, "cx": 7.5, "cy": 5.5, "width": W,
                                                      "height": H}))


def test_associate_takes_the_closest_pairs_first():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    b = np.array([0.015, 0.99, 1.005, 2.5, 3.019])
    assert associate(a, b, 0.02) == [(0, 0), (1, 2), (3, 4)]  # 1.005 beats 0.99; 2.0 has none within 0.02
    assert associate(a, b, 0.012) == [(1, 2)]


def test_tum_association_and_quaternions(tmp_path):
    rgb = [10.0, 10.1, 10.2, 10.3]
    depth = [10.004, 10.098, 10.301, 10.35]  # none within 0.02 s of frame 2: dropped
    rotations = Rotation.from_euler("xyz", [[0, 0, 90], [180, 0, 0], [30, -40, 120], [0, 0, 0]], degrees=True)
    gt = [[t + 0.003, i, 2 * i, 0.5, *q] for i, (t, q) in enumerate(zip(rgb, rotations.as_quat(), strict=True))]
    gt.insert(1, [10.05, 9, 9, 9, 0, 0, 0, 1])  # between frames: never the closest
    _write_tum(tmp_path / "seq", rgb, depth, gt)
    out = tmp_path / "t.h5"
    assert main(["import", str(tmp_path / "seq"), "--out", str(out), "--height", "0",
                 "--workspace-min", "-1", "-1", "-1", "--workspace-max", "1", "1", "1"]) == 0
    with Dataset(out) as ds:
        poses = ds.array("scene_0", "free_pose")
        K = ds.array("scene_0", "free_K")[0]
        assert ds.num_frames("scene_0", "free") == 3 and ds.task == "recording" and ds.num_objects == 0
        assert np.allclose(ds.frames("scene_0", "free", "depth", 0, 3), 1.0)
    expected = [0, 1, 3]
    assert np.allclose(poses[:, :3, 3], [[i, 2 * i, 0.5] for i in expected])
    assert np.allclose(poses[:, :3, :3], rotations.as_matrix()[expected], atol=1e-6)
    assert np.allclose(poses[0, :3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)  # 90 deg about z, by hand
    assert np.allclose(tum_pose([0, 0, 0, 1, 0, 0, 0])[:3, :3], np.diag([1, -1, -1]))  # qx = 1: 180 deg about x
    assert np.allclose(K, [[20, 0, 7.5], [0, 20, 5.5], [0, 0, 1]])


def _write_folder(root, scene, poses, K, size, occluder=False):
    """A plain-folder sequence of a synthetic scene: PNG colour, .npy depth (metres), poses.npy, intrinsics.json."""
    W, H = size
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i, pose in enumerate(poses):
        frame = render(scene, K, pose, H, W, occluder=occluder)
        iio.imwrite(root / "rgb" / f"{i:04d}.png", frame["rgb"])
        np.save(root / "depth" / f"{i:04d}.npy", frame["depth"])
    np.save(root / "poses.npy", np.stack(poses))
    (root / "intrinsics.json").write_text(json.dumps({"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
                                                      "width": W, "height": H}))


def test_estimated_workspace_holds_the_objects_not_the_floating_arm(tmp_path):
    scene = make_scene(3, n_objects=3)
    K = intrinsics(96, 128, 60)
    poses = orbit_poses(8, 0.45, 0.35) + orbit_poses(4, 0.2, 0.5)
    _write_folder(tmp_path / "seq", scene, poses, K, (128, 96), occluder=True)  # a box floating 14-26 cm up
    out = tmp_path / "e.h5"
    assert main(["import", str(tmp_path / "seq"), "--out", str(out), "--height", "48"]) == 0
    with Dataset(out) as ds:
        lo, hi = np.array(ds.workspace)
        assert ds.frames("scene_0", "free", "rgb", 0, 1).shape == (1, 48, 64, 3)
        K2 = ds.array("scene_0", "free_K")[0]
    assert np.allclose(K2[0], [K[0, 0] / 2, 0, (K[0, 2] + 0.5) / 2 - 0.5])  # resized to half: K scaled to match
    for obj in scene["objects"]:
        reach = obj["size"]  # radius, or half extents
        assert (obj["center"] - reach >= lo - 0.03).all() and (obj["center"] + reach <= hi + 0.03).all(), obj
    assert lo[2] < 0 < hi[2] < 0.14  # the table top inside; the floating box (from 0.14 m up) outside


@pytest.fixture
def folder_seq(tmp_path):
    scene = make_scene(0, n_objects=2)
    K = intrinsics(12, 16, 60)
    root = tmp_path / "seq"
    _write_folder(root, scene, orbit_poses(4, 0.4, 0.3), K, (16, 12))
    for i, name in enumerate(sorted((root / "depth").iterdir())):  # as 16-bit millimetre PNGs
        iio.imwrite(root / "depth" / f"{i:04d}.png", np.rint(np.load(name) * 1000).astype(np.uint16))
        name.unlink()
    np.savetxt(root / "poses.txt", np.load(root / "poses.npy").reshape(-1, 16))
    (root / "poses.npy").unlink()
    return root


def _poses(root, change):
    poses = np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)
    np.savetxt(root / "poses.txt", change(poses).reshape(-1, 16))


def _poses_npy(root, change):
    np.save(root / "poses.npy", change(np.loadtxt(root / "poses.txt").reshape(-1, 4, 4)))
    (root / "poses.txt").unlink()


def _poses_text(root, change):
    (root / "poses.txt").write_text("\n".join(change((root / "poses.txt").read_text().splitlines())) + "\n")


def _scale_depth(root, frame: int, factor: float):
    """One frame's depth PNG in other units (x 1000, clipped at the PNG's 65.5 m) or empty (x 0)."""
    path = root / "depth" / f"{frame:04d}.png"
    depth = iio.imread(path).astype(np.float64) * factor
    iio.imwrite(path, np.minimum(depth, 65535).astype(np.uint16))


def _non_rigid(poses):
    poses[2, :3, :3] *= 1.2
    return poses


def _mixed_sizes(root):
    iio.imwrite(root / "rgb" / "0001.png", np.zeros((10, 16, 3), np.uint8))


def _non_monotonic(root):
    """The folder turned into a TUM sequence whose rgb.txt has two timestamps swapped."""
    names = sorted(p.stem for p in (root / "rgb").iterdir())
    for kind in ("rgb", "depth"):
        order = [0, 2, 1, 3] if kind == "rgb" else [0, 1, 2, 3]
        (root / f"{kind}.txt").write_text("".join(f"{i}.0 {kind}/{names[i]}.png\n" for i in order))
    (root / "groundtruth.txt").write_text("".join(f"{i}.0 0 0 0 0 0 0 1\n" for i in range(4)))


BAD = {  # name: (change to the sequence, file named in the error, what the line says, extra flags)
    "missing-pose": (lambda r: _poses(r, lambda p: p[:3]), "poses.txt:frame 3", "has no pose", []),
    "extra-pose": (lambda r: _poses(r, lambda p: np.concatenate([p, p[:1]])), "poses.txt:frame 4", "has no frame",
                   []),
    "count-mismatch": (lambda r: (r / "depth" / "0003.png").unlink(), "seq:frame 3", "has no depth image", []),
    "non-monotonic": (_non_monotonic, "rgb.txt:line 3", "not after the previous", []),
    "depth-scale": (lambda r: None, "seq/depth", "give --depth-scale", ["--depth-scale", "10"]),
    "bad-frame": (lambda r: _scale_depth(r, 2, 1000), "depth/0002.png:frame 2",
                  "median depth 65.5 m is outside 0.005-20.0 m; leave such frames out with --skip-bad-frames", []),
    "empty-frame": (lambda r: _scale_depth(r, 1, 0), "depth/0001.png:frame 1", "depth is 0 (invalid) everywhere; "
                    "leave such frames out with --skip-bad-frames", []),
    "poses-3x4": (lambda r: _poses_npy(r, lambda p: p[:, :3]), "poses.npy",
                  "poses of shape (4, 3, 4): give (T, 4, 4) matrices (append the row 0 0 0 1 to each 3x4)", []),
    "pose-15-columns": (lambda r: _poses_text(r, lambda lines: [lines[0].rsplit(" ", 1)[0], *lines[1:]]),
                        "poses.txt:line 1", "15 numbers: give 16 per line", []),
    "pose-not-numbers": (lambda r: _poses_text(r, lambda lines: [*lines[:2], "1 2 three 4", *lines[3:]]),
                         "poses.txt:line 3", "not numbers: '1 2 three 4'", []),
    "non-rigid": (lambda r: _poses(r, _non_rigid), "poses.txt:frame 2", "not a rigid", []),
    "mixed-sizes": (_mixed_sizes, "rgb/0001.png:frame 1", "mixed image sizes", []),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recordings_give_one_line(case, folder_seq, tmp_path, capsys):
    change, where, says, flags = BAD[case]
    change(folder_seq)
    capsys.readouterr()
    rc = main(["import", str(folder_seq), "--out", str(tmp_path / "new" / "x.h5"), "--height", "0", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert where in err and says in err and "usecols" not in err, err
    assert not (tmp_path / "new").exists()


def test_skip_bad_frames_leaves_them_out_with_a_warning(folder_seq, tmp_path, capsys):
    _scale_depth(folder_seq, 1, 0)
    out = tmp_path / "x.h5"
    assert main(["import", str(folder_seq), "--out", str(out), "--height", "0", "--skip-bad-frames", *BOX]) == 0
    err = capsys.readouterr().err
    assert f"warning: {folder_seq / 'depth' / '0001.png'}:frame 1: depth is 0 (invalid) everywhere; left out" in err
    poses = np.loadtxt(folder_seq / "poses.txt").reshape(-1, 4, 4)
    with Dataset(out) as ds:
        assert ds.num_frames("scene_0", "free") == 3
        assert np.allclose(ds.array("scene_0", "free_pose"), poses[[0, 2, 3]], atol=1e-6)


BOX = ["--workspace-min", "-1", "-1", "-1", "--workspace-max", "1", "1", "1"]


def test_opengl_poses_are_turned_and_sequences_share_one_size(folder_seq, tmp_path, capsys):
    gl = tmp_path / "gl"
    shutil.copytree(folder_seq, gl)
    _poses(gl, lambda p: p @ np.diag([1.0, -1.0, -1.0, 1.0]))  # the same cameras with OpenGL axes
    assert main(["import", str(folder_seq), "--out", str(tmp_path / "cv.h5"), "--height", "0", *BOX]) == 0
    assert main(["import", str(gl), "--out", str(tmp_path / "gl.h5"), "--height", "0", "--pose-axes", "opengl",
                 *BOX]) == 0
    with Dataset(tmp_path / "cv.h5") as a, Dataset(tmp_path / "gl.h5") as b:
        assert np.allclose(a.array("scene_0", "free_pose"), b.array("scene_0", "free_pose"), atol=1e-6)
    small = tmp_path / "small"
    _write_folder(small, make_scene(0, n_objects=2), orbit_poses(3, 0.4, 0.3), intrinsics(18, 24, 60), (24, 18))
    capsys.readouterr()
    assert main(["import", str(folder_seq), str(small), "--out", str(tmp_path / "x.h5"), "--height", "0", *BOX]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(small) in err and "one image size" in err, err
    assert main(["import", str(folder_seq), str(small), "--out", str(tmp_path / "x.h5"), "--height", "16", *BOX]) == 0
    with Dataset(tmp_path / "x.h5") as ds:
        assert [ds.num_frames(ep, "free") for ep in ds.episodes] == [4, 3]
        assert ds.frames("scene_0", "free", "rgb", 0, 1).shape == (1, 16, 21, 3)  # both resized: 16x12, 24x18


def test_keypoint_error_on_a_recording_says_it_needs_simulator_data(folder_seq, tmp_path, capsys):
    rec = tmp_path / "rec.h5"
    assert main(["import", str(folder_seq), "--out", str(rec), "--height", "0", *BOX]) == 0
    capsys.readouterr()
    assert main(["eval-keypoints", "--don", str(tmp_path / "don"), "--references", str(tmp_path / "r.safetensors"),
                 "--demos", str(rec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(rec) in err and "only simulator data has" in err, err
    assert "imported recording (task 'recording')" in err


@pytest.fixture(scope="module")
def simulator_files(tmp_path_factory, tiny_lift):
    """Every kind of file the simulator writes: views with an arm-only sequence (whose free cameras come within
    1.3 cm of the arm), held-out views and demonstrations."""
    from dckp.pipeline import HELDOUT_SEED

    tmp = tmp_path_factory.mktemp("simulator_files")
    views, heldout = tmp / "views.h5", tmp / "heldout.h5"
    collect_views(ViewsConfig(task="lift", scenes=1, arm_only=1, image_size=64), str(views), progress=False)
    collect_views(ViewsConfig(task="lift", scenes=1, arm_only=0, image_size=64, sweep_waypoints=1, record_every=25,
                              seed=HELDOUT_SEED), str(heldout), progress=False)
    return tmp, {"views": (views, "free"), "heldout": (heldout, "free"), "demos": (tiny_lift[0], "robot0_eye_in_hand")}


@pytest.mark.parametrize("layout", ["folder", "tum"])
@pytest.mark.parametrize("kind", ["views", "heldout", "demos"])
def test_every_simulator_file_reads_back_with_no_flags(simulator_files, kind, layout):
    from dckp.io.recordings import DEPTH_RANGE

    tmp, files = simulator_files
    path, stream = files[kind]
    out = tmp / f"{kind}_{layout}"
    assert main(["export", str(path), "--format", layout, "--stream", stream, "--out", str(out)]) == 0
    with Dataset(path) as ds:
        episodes = ds.episodes
        medians = [np.median(z[z > 0]) for ep in episodes for z in ds.frames(ep, stream, "depth", 0,
                                                                               ds.num_frames(ep, stream))]
    if kind == "views":  # the frame the import once refused
        assert "arm_0" in episodes and min(medians) < DEPTH_RANGE[0]
    for ep in episodes:
        arm = ["--arm-only", str(out / ep)] if ep.startswith("arm_") else []
        scene = [str(out / episodes[0])] if arm else [str(out / ep)]
        assert main(["import", *scene, *arm, "--out", str(tmp / f"{kind}_{layout}_{ep}.h5")]) == 0, ep
