"""report.html from a run folder's files (no simulation), and the ground-truth matches marked on heatmaps."""


import numpy as np
import pytest

from dckp.config import save_json
from dckp.evaluation import summarise
from dckp.pipeline import RUN_PRESETS, write_report
from dckp.viz.descriptors import true_matches


def _eval(out, encoder, outcomes, videos=()):
    results = [{"seed": 1_000_000 + i, "success": ok, "steps": steps, "time_encoder_s": 0.1, "time_policy_s": 0.1,
                "time_sim_s": 0.1} for i, (ok, steps) in enumerate(outcomes)]
    ev = summarise(results, "lift")
    ev.update(videos=list(videos), horizon=120)
    save_json(ev, out / f"policy_{encoder}" / "eval" / "eval.json")


def test_report_from_run_folder(tmp_path):
    out = tmp_path
    cfg = RUN_PRESETS["demo"]
    save_json({"preset": "demo", **cfg.__dict__}, out / "run.config.json")
    (out / "policy_dckp-3d" / "eval").mkdir(parents=True)
    (out / "policy_dckp-3d" / "eval" / "rollout_1000001.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    _eval(out, "dckp-3d", [(True, 40), (False, 120), (True, 55)], videos=["rollout_1000001.mp4"])
    _eval(out, "gt-kp", [(True, 30), (True, 35), (True, 33)])
    save_json({"views": "heldout.h5", "pairs_per_type": 20, "results": {"same_camera": {
        "pck@5%": 0.875, "median_px": 2.25, "wrong_object_rate": 0.0125, "pairs": 20, "points": 2000}}},
        out / "heldout_correspondence.json")
    split = {"keypoints": 40, "median_px": 12.25, "median_px_sym": 3.75, "median_mm": 21.0, "median_mm_sym": 6.0,
             "pck@5%": 0.5}
    save_json({"config": {"near": 0.2}, "episodes": 2, "image_size": 128, "in_image": {"robot0_eye_in_hand": 0.875},
               "by_method": {"mode": {"robot0_eye_in_hand": {
                   "all": split, "visible_near": split, "visible_far": {**split, "median_px": None},
                   "occluded": split, "occluded_after_seen": split}}}}, out / "keypoint_error.json")
    save_json({"pretrain": 100.0, "demonstrations": 20.5, "evaluate dckp-3d": 30.0, "policy dckp-3d": None},
              out / "stage_seconds.json")  # the policy's training resumed after an interrupt: its time unknown
    page = write_report(out).read_text()
    assert "Preset <b>demo</b>" in page
    assert "2 / 3" in page and "3 / 3" in page and "[0.21, 0.94]" in page  # Wilson interval of 2 of 3
    assert "Seed 1000001: <span class=\"fail\">failure</span>\nafter 120 steps" in page
    assert page.count("data:video/mp4;base64,") == 1
    assert "0.88" in page and "2.2 px" in page and "0.013" in page  # held-out correspondence
    don = page[page.index("<h2>Dense Object Net</h2>"):]  # beside it, the keypoint error on the demonstrations
    assert don.index("held-out scenes") < don.index("Keypoint error on the demonstrations' frames")
    assert "<td>mode</td><td class=\"num\">0.88</td>" in don and "12.2 / 12.2 / - / 12.2" in don
    assert "3.8 / 3.8 / 3.8 / 3.8" in don and "21 / 21 / 21 / 21" in don and "6 / 6 / 6 / 6" in don
    rows = page[page.index("<h2>Episodes</h2>"):page.index("<h2>Dense Object Net</h2>")]
    assert rows.count("<tr><td class=\"num\">100000") == 3 and rows.count("success</span>, 3") == 3
    timings = page[page.index("<h2>Stage timings</h2>"):]
    assert timings.index("demonstrations") < timings.index("pretrain") < timings.index("evaluate dckp-3d")
    assert "150.5" in timings  # total
    assert "<tr><td>policy dckp-3d</td><td class=\"num\">-</td></tr>" in timings
    assert "&lt;" not in page.split("<body>")[0]  # the template's own markup is not escaped


def _frame(depth, seg, x=0.0):
    K = np.array([[50.0, 0, 15.5], [0, 50.0, 15.5], [0, 0, 1]])
    pose = np.eye(4)
    pose[0, 3] = x
    return {"depth": np.full((32, 32), depth, np.float32), "seg": seg, "K": K, "pose": pose}


def test_true_matches_follow_the_object():
    seg = np.ones((32, 32), np.uint8)
    fa, fb = _frame(1.0, seg), _frame(1.0, seg)
    uv = np.array([[10.0, 12.0], [20.0, 5.0]])
    still, moved = np.eye(4)[None], np.eye(4)[None].copy()
    moved[0, 0, 3] = 0.1  # the object moves 0.1 m along the camera's x axis: 5 px at 1 m
    uv_b, state = true_matches(uv, fa, fb, still, still)
    assert uv_b == pytest.approx(uv) and list(state) == ["visible", "visible"]
    fb_behind = _frame(1.0, seg)
    fb_behind["depth"][:] = 0.5  # something nearer covers the whole view
    uv_b, state = true_matches(uv, fa, fb_behind, still, moved)
    assert uv_b == pytest.approx(uv + [5.0, 0.0]) and list(state) == ["hidden", "hidden"]
    moved[0, 0, 3] = 1.0  # 50 px: out of view
    assert list(true_matches(uv, fa, fb, still, moved)[1]) == ["outside", "outside"]


def test_report_template_is_packaged():
    from importlib import resources

    assert (resources.files("dckp") / "templates" / "report.html.j2").is_file()
