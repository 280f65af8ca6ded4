"""`dckp pick-references`: the matplotlib picker driven by synthetic clicks (Agg backend), its files round-tripped
through `dckp keypoints --pixels`, and the headless HTML page.

No test can click in a browser. The page's picking logic (the `picker-logic` script) runs under node where node
is installed, on the page's own data, and must write the same files as the matplotlib picker; the page's drawing
and download code is not run."""

import base64
import json
import re
import shutil
import subprocess

import imageio.v3 as iio
import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backend_bases import MouseEvent
from synthetic_scenes import intrinsics, look_at, make_scene, render

from dckp.cli.main import main
from dckp.data import DatasetWriter
from dckp.keypoints.references import load_pixels
from dckp.keypoints.select import load_references
from dckp.viz.picker import load_frames, open_window, projection_tables

matplotlib.use("Agg")
SIZE, FRAMES = 40, 2
CAMERAS = {"agentview": ([0.45, 0.0, 0.35], 60), "robot0_eye_in_hand": ([0.05, 0.3, 0.4], 55)}


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Two cameras looking at the same two objects from different sides."""
    path = tmp_path_factory.mktemp("picker") / "d.h5"
    scene = make_scene(3, n_objects=2)
    obs = {}
    for cam, (eye, fov) in CAMERAS.items():
        K, pose = intrinsics(SIZE, SIZE, fov), look_at(eye, [0, 0, 0.02])
        fr = render(scene, K, pose, SIZE, SIZE) | {"K": K, "pose": pose}
        obs |= {f"{cam}_{k}": np.stack([fr[k]] * FRAMES) for k in ("rgb", "depth", "seg", "K", "pose")}
    obs["object_pose"] = np.tile(np.eye(4), (FRAMES, 2, 1, 1))
    for key, n in (("joint_pos", 7), ("eef_pos", 3), ("eef_quat", 4), ("gripper_qpos", 2)):
        obs[key] = np.zeros((FRAMES, n))
    with DatasetWriter(path, "demos", "lift", ["a", "b"], {}) as w:
        w.add_episode("demo_0", obs, np.zeros((FRAMES, 7)), seed=0, success=True)
    return path


def click(fig, ax, u, v, button=1):
    x, y = ax.transData.transform((u, v))
    event = MouseEvent("button_press_event", fig.canvas, x, y, button=button)
    fig.canvas.callbacks.process("button_press_event", event)


def seen_by_both(frames, tables):
    """Object pixels of the wrist camera that the overview camera also sees, one per object, and one object pixel
    the overview camera does not see (or None)."""
    wrist, over = frames["robot0_eye_in_hand"], frames["agentview"]
    table = tables["robot0_eye_in_hand"]["agentview"]
    both, hidden = {}, None
    for v, u in zip(*np.nonzero(wrist["seg"] > 0), strict=True):
        b = table[v * SIZE + u]
        if b[0] >= 0 and over["seg"][b[1], b[0]] == wrist["seg"][v, u]:
            both.setdefault(int(wrist["seg"][v, u]), (int(u), int(v)))
        elif b[0] < 0 and hidden is None:
            hidden = (int(u), int(v))
    return list(both.values()), hidden


@pytest.fixture(scope="module")
def picked(demos, tmp_path_factory):
    """Clicks on the matplotlib picker: one point per object on the wrist camera, one the overview camera does
    not see, one on the overview camera, a click on the background beyond the table (no depth: ignored), one
    added and removed with a right click."""
    folder = tmp_path_factory.mktemp("picks")
    _, frames = load_frames(demos)
    tables = projection_tables(frames, tol=0.01)
    both, hidden = seen_by_both(frames, tables)
    assert len(both) == 2 and hidden is not None  # the scene is made so
    changes = []
    fig, picks = open_window(frames, tables, folder, on_change=lambda p: changes.append(len(p.points)))
    axes = dict(zip(frames, fig.axes, strict=True))
    over = axes["agentview"]
    over_px = tuple(int(x) for x in np.argwhere(frames["agentview"]["seg"] > 0)[0][::-1])
    clicks = [("robot0_eye_in_hand", u, v) for u, v in both] + [("robot0_eye_in_hand", *hidden),
                                                                  ("agentview", *over_px)]
    for cam, u, v in clicks:
        click(fig, axes[cam], u + 0.3, v - 0.4)  # rounds to the pixel
    no_depth = tuple(int(x) for x in np.argwhere(frames["agentview"]["depth"] == 0)[0][::-1])
    click(fig, over, *no_depth)
    click(fig, over, *over_px)
    click(fig, over, 0, 0, button=3)  # undo
    assert changes == [1, 2, 3, 4, 4, 5, 4]
    return frames, tables, folder, picks, both, hidden, over_px, clicks


def test_clicks_show_on_every_camera_that_sees_them(picked):
    frames, tables, folder, picks, both, hidden, over_px, _ = picked
    assert len(picks.points) == 4
    for point in picks.points[:2]:  # one surface point: the same object in both cameras
        (u, v), (ub, vb) = point["robot0_eye_in_hand"], point["agentview"]
        assert frames["agentview"]["seg"][vb, ub] == frames["robot0_eye_in_hand"]["seg"][v, u] > 0
    assert [p["robot0_eye_in_hand"] for p in picks.points[:2]] == both
    assert picks.points[2] == {"robot0_eye_in_hand": hidden}
    assert picks.points[3]["agentview"] == over_px
    for cam in frames:
        uv = load_pixels(folder / f"{cam}.json")  # the reader of `dckp keypoints --pixels`
        assert uv.tolist() == [list(p[cam]) for p in picks.points if cam in p]
    assert len(load_pixels(folder / "robot0_eye_in_hand.json")) == 3 + ("robot0_eye_in_hand" in picks.points[3])


def test_picks_round_trip_through_dckp_keypoints(picked, demos, tmp_path):
    from dckp.don.checkpoint import save_checkpoint
    from dckp.don.config import DonConfig
    from dckp.don.model import DenseObjectNet

    frames, _, folder, picks, *_ = picked
    cfg = DonConfig(backbone="resnet18", layers=3, descriptor_dim=3, image_size=SIZE, steps=1)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 1)
    out = tmp_path / "refs.safetensors"
    pixels = [f"{cam}={folder / f'{cam}.json'}" for cam in frames]
    assert main(["keypoints", "--don", str(tmp_path / "don"), "--demos", str(demos), "--out", str(out),
                 "--pixels", *pixels]) == 0
    refs, _ = load_references(out)
    for cam in frames:
        assert refs[cam]["uv"].tolist() == [list(p[cam]) for p in picks.points if cam in p]
        assert refs[cam]["descriptors"].shape == (len(refs[cam]["uv"]), 3)


def test_headless_page(picked, demos, tmp_path, capsys):
    frames, _, folder, picks, *_, clicks = picked
    assert main(["pick-references", str(demos), "--out", str(tmp_path / "p"), "--mode", "html"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'p' / 'pick.html'}")
    assert lines[1].startswith("dckp keypoints --don DON --demos") and "agentview=DOWNLOADS/agentview.json" in lines[1]
    page = (tmp_path / "p" / "pick.html").read_text()
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    data = json.loads(re.search(r'<script id="picker-data">const DATA = (.*?);</script>', page, re.S).group(1))
    assert [c["name"] for c in data["cameras"]] == list(frames)
    for cam in data["cameras"]:  # each camera's image, exactly
        png = base64.b64decode(cam["image"].removeprefix("data:image/png;base64,"))
        np.testing.assert_array_equal(iio.imread(png), frames[cam["name"]]["rgb"])
        assert f'id="c-{cam["name"]}"' in page and f"download {cam['name']}.json" in page
    assert "function pixelsFile(points, camName)" in page and "a.download = camName + '.json'" in page
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the page's picking logic was not run")
    logic = re.search(r'<script id="picker-logic">(.*?)</script>', page, re.S).group(1)
    clicks = [(cam, u + 0.3, v - 0.4) for cam, u, v in clicks]  # as the matplotlib picker got them
    files = ", ".join(f"{json.dumps(c)}: pixelsFile(points, {json.dumps(c)})" for c in frames)
    script = (f"const DATA = {json.dumps(data)};\n{logic}\ndecodeTables(DATA); const points = [];\n"
              f"for (const [c, u, v] of {json.dumps(clicks)}) addPick(DATA, points, c, u, v);\n"
              f"console.log(JSON.stringify({{{files}}}));")
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout
    files = json.loads(out)
    for cam in frames:
        assert json.loads(files[cam]) == json.loads((folder / f"{cam}.json").read_text())


def test_a_display_without_a_gui_toolkit_gets_the_page(demos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")  # matplotlib stays on Agg here
    assert main(["pick-references", str(demos), "--out", str(tmp_path / "p")]) == 0
    assert capsys.readouterr().out.startswith("matplotlib has no interactive backend here: writing the HTML page")
    assert (tmp_path / "p" / "pick.html").is_file()
    assert main(["pick-references", str(demos), "--out", str(tmp_path / "q"), "--mode", "window"]) == 2
    assert "use --mode html" in capsys.readouterr().err


def test_bad_picker_inputs_are_one_line(demos, tmp_path, capsys):
    for argv, message in ((["--frame", "5"], "no frame 5 in demo_0"), (["--episode", "demo_3"], "no episode"),
                          (["--tol", "0"], "must be > 0")):
        assert main(["pick-references", str(demos), "--out", str(tmp_path / "p"), "--mode", "html", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
