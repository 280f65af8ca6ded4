"""Dataset round-trip, atomic writes and one-line errors for bad files."""

import json

import h5py
import numpy as np
import pytest

from dckp.data import DEPTH_SCALE, Dataset, DatasetWriter
from dckp.errors import DckpError


def episode(T=3, H=8, W=10, seed=0):
    rng = np.random.default_rng(seed)
    obs = {
        "cam_rgb": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        "cam_depth": rng.uniform(0.2, 3.0, (T, H, W)).astype(np.float32),
        "cam_seg": rng.integers(0, 3, (T, H, W), dtype=np.uint8),
        "cam_K": np.tile(np.array([[50.0, 0, 4.5], [0, 50.0, 3.5], [0, 0, 1]]), (T, 1, 1)),
        "cam_pose": np.tile(np.eye(4), (T, 1, 1)),
        "joint_pos": rng.normal(size=(T, 7)),
    }
    obs["cam_depth"][:, 0, 0] = 0.0  # invalid pixels stay 0
    return obs, rng.uniform(-1, 1, (T, 7))


def write(path, **overrides):
    obs, actions = episode()
    obs.update(overrides)
    with DatasetWriter(path, "demos", "lift", ["cube"], {"a": 1}) as w:
        w.add_episode("demo_0", obs, actions, seed=3, success=True)
    return obs, actions


def test_round_trip(tmp_path):
    path = tmp_path / "d.h5"
    obs, actions = write(path)
    with Dataset(path) as ds:
        ds.validate()
        assert ds.episodes == ["demo_0"] and ds.streams("demo_0") == ["cam"]
        assert ds.objects == ["cube"] and ds.config == {"a": 1} and ds.episode_attrs("demo_0")["seed"] == 3
        for t in range(3):
            fr = ds.frame("demo_0", "cam", t)
            np.testing.assert_array_equal(fr["rgb"], obs["cam_rgb"][t])
            np.testing.assert_array_equal(fr["seg"], obs["cam_seg"][t])
            np.testing.assert_allclose(fr["depth"], obs["cam_depth"][t], atol=DEPTH_SCALE / 2 + 1e-6)
            assert fr["depth"][0, 0] == 0
            np.testing.assert_allclose(fr["K"], obs["cam_K"][t])
        np.testing.assert_allclose(ds.actions("demo_0"), actions, rtol=1e-6)
        np.testing.assert_allclose(ds.array("demo_0", "joint_pos"), obs["joint_pos"], rtol=1e-6)
        assert ds.f["data/demo_0/obs/cam_rgb"].chunks == (1, 8, 10, 3)


def test_interrupted_write_leaves_no_file(tmp_path):
    path = tmp_path / "d.h5"
    with pytest.raises(RuntimeError):
        with DatasetWriter(path, "demos", "lift", ["cube"], {}) as w:
            w.add_episode("demo_0", episode()[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_truncated_file(tmp_path):
    path = tmp_path / "d.h5"
    write(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DckpError, match=r"d\.h5.*(truncated|corrupt)"):
        Dataset(path).validate()


def test_missing_file(tmp_path):
    with pytest.raises(DckpError, match="file not found"):
        Dataset(tmp_path / "nope.h5")


def test_missing_key(tmp_path):
    path = tmp_path / "d.h5"
    write(path)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/cam_K"]
    with pytest.raises(DckpError, match=r"d\.h5:data/demo_0/obs/cam_K: missing key"):
        Dataset(path).validate()


def test_wrong_shape(tmp_path):
    path = tmp_path / "d.h5"
    write(path, cam_K=np.zeros((3, 2, 3)))
    with pytest.raises(DckpError, match=r"cam_K: expected shape \(3, 3\)"):
        Dataset(path).validate()


def test_depth_size_mismatch(tmp_path):
    path = tmp_path / "d.h5"
    write(path, cam_depth=np.ones((3, 8, 9), np.float32))
    with pytest.raises(DckpError, match="cam_depth: depth shape"):
        Dataset(path).validate()


def test_nan_depth_refused_when_writing(tmp_path):
    depth = np.ones((3, 8, 10), np.float32)
    depth[1, 2, 2] = np.nan
    with pytest.raises(DckpError, match="demo_0/obs/cam_depth: depth contains NaN"):
        write(tmp_path / "d.h5", cam_depth=depth)
    assert not (tmp_path / "d.h5").exists()


def test_nan_depth_in_float_file(tmp_path):
    path = tmp_path / "d.h5"
    write(path)
    with h5py.File(path, "a") as f:
        depth = np.ones((3, 8, 10), np.float32)
        depth[2, 0, 0] = np.nan
        del f["data/demo_0/obs/cam_depth"]
        f["data/demo_0/obs/cam_depth"] = depth
    with pytest.raises(DckpError, match="cam_depth: depth contains NaN"):
        Dataset(path).validate()
    with Dataset(path) as ds:  # a run's check on each start: each stream up to its first frame with depth
        ds.validate(every_frame=False)


@pytest.mark.parametrize("every_frame", [True, False])
def test_a_stream_without_depth_in_any_frame_is_refused(tmp_path, every_frame):
    path = tmp_path / "d.h5"
    write(path, cam_depth=np.zeros((3, 8, 10), np.float32))
    with pytest.raises(DckpError, match=r"d\.h5:data/demo_0/obs/cam_depth: depth is 0 \(invalid\) in every frame"):
        Dataset(path).validate(every_frame=every_frame)


def test_wrong_schema_version(tmp_path):
    path = tmp_path / "d.h5"
    write(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DckpError, match="schema_version: schema version 99"):
        Dataset(path)


def test_config_saved_in_file(tmp_path):
    path = tmp_path / "d.h5"
    write(path)
    with h5py.File(path) as f:
        assert json.loads(f.attrs["config"]) == {"a": 1}
