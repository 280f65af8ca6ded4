"""`dckp fuse` on simulated pretraining views: masks against ground truth, arm-only episodes, atomic rewrite."""

import dataclasses

import numpy as np
import pytest

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.geometry.fuse import fuse_file
from dckp.geometry.masks import MASK_PRESETS, mask_iou_matched
from dckp.sim.collect import collect_views
from dckp.sim.config import ViewsConfig
from dckp.sim.tasks import get_task


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuse") / "stack_views.h5"
    collect_views(ViewsConfig(task="stack", scenes=1, arm_only=1, image_size=96, free_views=12,
                              sweep_waypoints=2, record_every=5), str(path), progress=False)
    lo, hi = get_task("stack").workspace
    cfg = dataclasses.replace(MASK_PRESETS["cpu"], workspace_min=list(lo), workspace_max=list(hi))
    summary = fuse_file(path, cfg, progress=False)
    return path, summary


def test_fused_masks_match_ground_truth(fused):
    path, summary = fused
    assert summary["scene_0"]["objects"] == 2
    with Dataset(path) as ds:
        for stream in ds.streams("scene_0"):
            ious = []
            for t in range(ds.num_frames("scene_0", stream)):
                r = mask_iou_matched(ds.f[f"data/scene_0/obs/{stream}_mask"][t], ds.frame("scene_0", stream, t)["seg"])
                ious += list(r["iou"].values())
            assert np.mean(ious) > 0.8, (stream, np.mean(ious))


def test_arm_only_free_views_mask_the_arm(fused):
    path, _ = fused
    with Dataset(path) as ds:
        masks = ds.f["data/arm_0/obs/free_mask"][()]
        gt = np.stack([ds.frame("arm_0", "free", t)["seg"] for t in range(len(masks))])
        robot = gt == 255
        assert (masks[robot] == 1).mean() > 0.5  # most of the arm that the free cameras see
        assert (masks[~robot] == 1).mean() < 0.05
        assert "data/arm_0/obs/robot0_eye_in_hand_mask" not in ds.f  # the arm moves there: no masks


def test_cli_fuse_rewrites_and_draws(fused, tmp_path, capsys):
    path, _ = fused
    copy = tmp_path / "v.h5"
    copy.write_bytes(path.read_bytes())
    copy.chmod(0o640)
    assert main(["fuse", str(copy), "--dbscan-eps", "0.015"]) == 0
    assert copy.stat().st_mode & 0o777 == 0o640  # rewritten with the mode it had
    assert (tmp_path / "v_masks.png").stat().st_size > 1000
    assert '"dbscan_eps": 0.015' in (tmp_path / "v.fuse.config.json").read_text()
    assert main(["fuse", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5: file not found" in capsys.readouterr().err
