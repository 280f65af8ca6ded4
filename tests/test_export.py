"""`dckp export --format robomimic`: the documented robomimic layout, checked always (the recording formats,
folder and tum, are tested in test_import); and, when robomimic is importable, robomimic 0.3.0's own
`SequenceDataset` and dataset metadata reading the file.

robomimic is not a dependency of dckp (it pulls `egl_probe`, a source package compiled at install, and unpinned
numpy, torch and torchvision, which could move dckp's numpy 1.26.4). To run the robomimic part:
`pip install --no-deps --target /tmp/robomimic_pkg robomimic==0.3.0`, then
`PYTHONPATH=/tmp/robomimic_pkg pytest tests/test_export.py` (its other imports, h5py, torch, tqdm and termcolor,
are in dckp's environment)."""

import json

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_bad_inputs import WRIST, _frames, _views

from dckp.cli.main import main
from dckp.data import Dataset, DatasetWriter
from dckp.io.robomimic import metres, zbuffer

LENGTHS = (4, 6, 3)
PROPRIO = {"joint_pos": 7, "eef_pos": 3, "eef_quat": 4, "gripper_qpos": 2}


def write_demos(path, task="lift"):
    rng = np.random.default_rng(0)
    with DatasetWriter(path, "demos", task, ["cube", "plate"], {}) as w:
        for i, n in enumerate(LENGTHS):
            obs = _frames(WRIST, n, seed=i) | {k: rng.normal(size=(n, d)) for k, d in PROPRIO.items()}
            poses = np.tile(np.eye(4), (n, 2, 1, 1))
            poses[..., :3, :3] = Rotation.random(n * 2, random_state=i).as_matrix().reshape(n, 2, 3, 3)
            poses[..., :3, 3] = rng.normal(size=(n, 2, 3))
            w.add_episode(f"demo_{i}", obs | {"object_pose": poses}, rng.uniform(-1, 1, (n, 7)), seed=i,
                          success=i != 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    write_demos(folder / "d.h5")
    assert main(["export", str(folder / "d.h5"), "--format", "robomimic", "--out", str(folder / "rm.hdf5"),
                 "--valid-fraction", "0.34"]) == 0
    return folder / "d.h5", folder / "rm.hdf5"


def test_the_documented_layout(exported):
    demos, out = exported
    with h5py.File(out, "r") as f, Dataset(demos) as ds:
        data = f["data"]
        assert data.attrs["total"] == sum(LENGTHS)
        env = json.loads(data.attrs["env_args"])
        assert env["env_name"] == "Lift" and env["type"] == 1 and env["env_kwargs"]["camera_names"] == [WRIST]
        assert env["env_kwargs"]["camera_depths"] is True and env["env_kwargs"]["camera_heights"] == 32
        near, far = data.attrs["depth_near"], data.attrs["depth_far"]
        assert sorted(data) == ["demo_0", "demo_1", "demo_2"]
        for i, n in enumerate(LENGTHS):
            ep, demo = f"demo_{i}", data[f"demo_{i}"]
            assert demo.attrs["num_samples"] == n
            obs = demo["obs"]
            assert obs[f"{WRIST}_image"].dtype == np.uint8 and obs[f"{WRIST}_image"].shape == (n, 32, 32, 3)
            np.testing.assert_array_equal(obs[f"{WRIST}_image"][()], ds.frames(ep, WRIST, "rgb", 0, n))
            depth = obs[f"{WRIST}_depth"][()]
            assert depth.dtype == np.float32 and depth.shape == (n, 32, 32, 1) and 0 <= depth.min() <= depth.max() <= 1
            source = ds.frames(ep, WRIST, "depth", 0, n)
            seen = source > 0
            np.testing.assert_allclose(metres(depth[..., 0], near, far)[seen], source[seen], atol=1e-4)
            assert np.all(depth[..., 0][~seen] == 1)  # nothing seen: the far plane, as robosuite gives it
            quat = ds.array(ep, "eef_quat")
            np.testing.assert_allclose(obs["robot0_eef_quat"][()], quat[:, [1, 2, 3, 0]], atol=1e-7)  # x y z w
            np.testing.assert_allclose(obs["robot0_joint_pos"][()], ds.array(ep, "joint_pos"))
            poses = ds.array(ep, "object_pose")
            objects = obs["object"][()].reshape(n, 2, 7)
            np.testing.assert_allclose(objects[..., :3], poses[..., :3, 3], atol=1e-6)
            rotations = Rotation.from_quat(objects[..., 3:].reshape(-1, 4)).as_matrix().reshape(n, 2, 3, 3)
            np.testing.assert_allclose(rotations, poses[..., :3, :3], atol=1e-5)
            for key in obs:
                np.testing.assert_array_equal(demo["next_obs"][key][:-1], obs[key][1:])
                np.testing.assert_array_equal(demo["next_obs"][key][-1], obs[key][-1])
            np.testing.assert_allclose(demo["actions"][()], ds.actions(ep))
            assert demo["rewards"][()].tolist() == [0] * (n - 1) + [float(i != 1)]  # demo_1 is not a success
            assert demo["dones"][()].tolist() == [0] * (n - 1) + [1]
        train, valid = ([x.decode() for x in f[f"mask/{k}"][()]] for k in ("train", "valid"))
        assert len(valid) == 1 and sorted(train + valid) == ["demo_0", "demo_1", "demo_2"]


def test_zbuffer_round_trip():
    depth = np.array([0.0, 0.05, 0.4, 1.3, 4.0], np.float32)
    d = zbuffer(depth, 0.01, 50.0)
    assert d[0] == 1 and np.all(np.diff(d[1:]) > 0) and d.max() <= 1
    np.testing.assert_allclose(metres(d[1:], 0.01, 50.0), depth[1:], rtol=1e-4)


def test_robomimic_sequence_dataset_reads_it(exported):
    dataset = pytest.importorskip("robomimic.utils.dataset", reason="robomimic is not installed (see the docstring)")
    import robomimic.utils.file_utils as file_utils
    import robomimic.utils.obs_utils as obs_utils

    _, out = exported
    low_dim = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
    obs_utils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": low_dim, "rgb": [f"{WRIST}_image"],
                                                           "depth": [f"{WRIST}_depth"]}})
    keys = [*low_dim, f"{WRIST}_image", f"{WRIST}_depth"]
    meta = file_utils.get_shape_metadata_from_dataset(str(out), all_obs_keys=keys)
    assert meta["ac_dim"] == 7 and meta["use_images"]
    assert meta["all_shapes"][f"{WRIST}_image"] == [3, 32, 32] and meta["all_shapes"][f"{WRIST}_depth"] == [1, 32, 32]
    assert meta["all_shapes"]["object"] == [14]
    assert file_utils.get_env_metadata_from_dataset(str(out))["env_name"] == "Lift"
    for split, demos in (("train", 2), ("valid", 1)):
        ds = dataset.SequenceDataset(str(out), obs_keys=keys, dataset_keys=["actions", "rewards", "dones"],
                                     seq_length=5, filter_by_attribute=split, hdf5_cache_mode="low_dim")
        assert ds.n_demos == demos
        assert len(ds) == sum(n for i, n in enumerate(LENGTHS) if f"demo_{i}" in ds.demos)
        item = ds[0]
        assert item["obs"][f"{WRIST}_image"].shape == (5, 32, 32, 3) and item["actions"].shape == (5, 7)
        assert item["next_obs"][f"{WRIST}_depth"].shape == (5, 32, 32, 1)
        processed = obs_utils.process_obs_dict(item["obs"])
        assert processed[f"{WRIST}_image"].shape == (5, 3, 32, 32) and processed[f"{WRIST}_image"].max() <= 1
        assert processed[f"{WRIST}_depth"].shape == (5, 1, 32, 32)
        assert processed[f"{WRIST}_depth"].min() < 1  # surfaces, not clipped to robomimic's [0, 1]


def test_bad_export_inputs_are_one_line(tmp_path, capsys):
    _views(tmp_path / "v.h5", masks=False)
    write_demos(tmp_path / "own.h5", task="recording")
    cases = [(["export", str(tmp_path / "v.h5")], "expected a demos file"),
             (["export", str(tmp_path / "own.h5")], "--depth-planes NEAR FAR"),
             (["export", str(tmp_path / "own.h5"), "--depth-planes", "2", "1"], "0 < near < far"),
             (["export", str(tmp_path / "missing.h5")], "file not found"),
             (["export", str(tmp_path / "v.h5"), "--format", "mp4"], "unknown format 'mp4'"),
             (["export", str(tmp_path / "v.h5"), "--format", "tum", "--stream", "nope"], "no stream 'nope'"),
             (["export-recording", str(tmp_path / "v.h5")], "invalid choice: 'export-recording'")]  # one command
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "new" / "rm.hdf5")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "new").exists()
    assert main(["export", str(tmp_path / "own.h5"), "--depth", "false", "--out", str(tmp_path / "rm.hdf5")]) == 0
    with h5py.File(tmp_path / "rm.hdf5") as f:
        assert f"{WRIST}_depth" not in f["data/demo_0/obs"] and "depth_near" not in f["data"].attrs
