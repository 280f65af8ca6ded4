"""Representation baselines (beta-VAE, Transporter, MONet) on tiny synthetic scenes of coloured shapes (32 px):
each loss falls; the beta-VAE's latent resolves an object's move; MONet's masks segment a two-object scene; a
Transporter keypoint follows a moving square; the transport formula; exact resume after Ctrl-C; the frozen
encoders read a run, give their features per camera and stay bit-identical through policy training; bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dckp.cli.main import main
from dckp.data import DatasetWriter
from dckp.encoders import build_encoder
from dckp.representations import monet, transporter
from dckp.representations.config import PRESETS, BvaeConfig, MonetConfig, TransporterConfig
from dckp.representations.data import FrameSource, resize_rgb
from dckp.representations.train import METHODS, load_representation, pretrain_representation

SIZE = 32  # camera images
GREY, BLACK = (110, 110, 110), (0, 0, 0)
RED, BLUE = (220, 40, 40), (40, 80, 220)
CAMERAS = ("cam", "flipped")  # the second camera sees the scene mirrored left to right
DISC = (8.0, 24.0)  # where the static disc of the moving-square sequences stands


def draw(centres, background, half: int = 4, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`(size, size, 3)` uint8 image and `(size, size)` segmentation of a red square (label 1) and a blue disc
    (label 2) centred at `centres` (continuous pixel coordinates, pixel i spanning [i, i + 1))."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    seg = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for i, (cx, cy) in enumerate(centres):
        inside = ((np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half) if i == 0
                  else (xx - cx) ** 2 + (yy - cy) ** 2 <= (half + 0.5) ** 2)
        img[inside], seg[inside] = (RED, BLUE)[i], i + 1
    return img, seg


def random_scenes(seed: int, n: int, background) -> tuple[np.ndarray, np.ndarray]:
    """`n` frames of the square and the disc at random places, apart."""
    rng, frames = np.random.default_rng(seed), []
    while len(frames) < n:
        c = rng.uniform(5, SIZE - 5, (2, 2))
        if np.linalg.norm(c[0] - c[1]) > 11:
            frames.append(draw(c, background))
    return np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames])


def moving_square(seed: int, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sequence of a small square (half side 3) moving at constant speed and bouncing off the borders, a disc
    standing still: rgb `(T, H, W, 3)`, seg and the square's centre `(T, 2)` in pixel-index coordinates."""
    rng = np.random.default_rng(seed)
    p, v = rng.uniform(5, SIZE - 5, 2), rng.uniform(-1.5, 1.5, 2)
    rgb, seg, centres = [], [], []
    for _ in range(T):
        v = np.where((p + v < 4) | (p + v > SIZE - 4), -v, v)
        p = p + v
        img, s = draw([p, DISC], GREY, half=3)
        rgb.append(img)
        seg.append(s)
        centres.append(p - 0.5)
    return np.stack(rgb), np.stack(seg), np.stack(centres)


def write(path, episodes, kind: str, cameras=CAMERAS) -> str:
    """A views or demos file of `episodes` [(rgb, seg)], seen by CAMERAS (the second mirrored), with the keys a
    policy needs."""
    with DatasetWriter(path, kind, "synthetic", ["square", "disc"], {}) as w:
        for e, (rgb, seg) in enumerate(episodes):
            T = len(rgb)
            K = np.array([[SIZE, 0, (SIZE - 1) / 2], [0, SIZE, (SIZE - 1) / 2], [0, 0, 1]], np.float32)
            obs = {"object_pose": np.tile(np.eye(4), (T, 2, 1, 1)), "joint_pos": np.zeros((T, 7)),
                   "eef_pos": np.zeros((T, 3)), "eef_quat": np.tile([1.0, 0, 0, 0], (T, 1)),
                   "gripper_qpos": np.zeros((T, 2))}
            for cam, flip in zip(cameras, (False, True)[:len(cameras)], strict=True):
                obs |= {f"{cam}_rgb": rgb[:, :, ::-1] if flip else rgb, f"{cam}_seg": seg[:, :, ::-1] if flip else seg,
                        f"{cam}_depth": np.ones((T, SIZE, SIZE), np.float32), f"{cam}_K": np.tile(K, (T, 1, 1)),
                        f"{cam}_pose": np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))}
            if kind == "demos":
                actions = np.random.default_rng(e).normal(0, 0.1, (T, 7))
                w.add_episode(f"demo_{e}", obs, actions, seed=e, success=True)
            else:
                w.add_episode(f"scene_{e}", obs, seed=e, arm_only=False)
    return str(path)


def read_log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def falls(run, factor: float) -> tuple[bool, float, float]:
    """Whether the loss of the last tenth of the steps is below the first ten steps' by `factor` (and both)."""
    losses = [r["loss"] for r in read_log(run)]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-len(losses) // 10:]))
    return first > factor * last, first, last


def as_images(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255


# --- trained runs, shared by the tests of this file ----------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("representations")
    sequences = [moving_square(seed, 24) for seed in range(8)]
    return {"tmp": tmp,
            "grey": write(tmp / "grey.h5", [random_scenes(0, 64, GREY)], "views"),
            "black": write(tmp / "black.h5", [random_scenes(0, 64, BLACK)], "views"),
            "moving": write(tmp / "moving.h5", [(rgb, seg) for rgb, seg, _ in sequences], "demos")}


@pytest.fixture(scope="module")
def bvae_run(data):
    # beta 0.5, not the preset's 1.5: at this scale (32 px, two small shapes, 1000 steps) 1.5 collapsed the
    # posterior onto the prior (KL ~ 0) for 2 of 4 seeds tried; 0.5 used the latent for all 4
    cfg = BvaeConfig(image_size=32, steps=1000, lr=1e-3, batch=16, conv_channels=16, hidden=64, latent_dim=8,
                     beta=0.5)
    out = data["tmp"] / "bvae"
    return out, pretrain_representation("bvae", [data["grey"]], cfg, out, progress=False)


@pytest.fixture(scope="module")
def transporter_run(data):
    cfg = TransporterConfig(image_size=32, steps=300, lr=5e-4, batch=8, block_channels=[16, 16, 32, 32],
                            keypoints=4, max_gap=4)
    out = data["tmp"] / "transporter"
    return out, pretrain_representation("transporter", [data["moving"]], cfg, out, progress=False)


@pytest.fixture(scope="module")
def monet_run(data):
    # a 2-d latent per slot: with 8, one slot often took both shapes at this length of training (600 steps)
    cfg = MonetConfig(image_size=32, steps=600, lr=2e-3, batch=8, slots=3, latent_dim=2, attention_channels=8,
                      vae_channels=16)
    out = data["tmp"] / "monet"
    return out, pretrain_representation("monet", [data["black"]], cfg, out, progress=False)


# --- the methods ---------------------------------------------------------------------------------------------

def test_frames_are_the_same_with_every_frame_cached_some_or_none(data):
    sources = [FrameSource([data["moving"]], 16, pairs=True, max_gap=2, cache_bytes=c)
               for c in (None, 3 * 16 * 16 * 40, 0)]  # all, 40 frames, none
    try:
        draws = [(s.sample(np.random.default_rng(5), 24), s.sample_pairs(np.random.default_rng(6), 24)) for s in sources
                 for _ in range(2)]
        for frames, pairs in draws[1:]:
            assert torch.equal(frames, draws[0][0]) and all(map(torch.equal, pairs, draws[0][1]))
        assert sources[0].cached > sources[1].cached > 0 == sources[2].cached
    finally:
        for s in sources:
            s.close()


def test_transport_formula_by_hand():
    f_s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    f_t = torch.tensor([[10.0, 20.0], [30.0, 40.0]]).view(1, 1, 2, 2)
    h_s = torch.tensor([[1.0, 0.0], [0.0, 0.5]]).view(1, 1, 2, 2)
    h_t = torch.tensor([[0.0, 1.0], [0.0, 0.5]]).view(1, 1, 2, 2)
    # (1 - H_s)(1 - H_t) F_s + H_t F_t, pixel by pixel: 0*1*1 + 0, 1*0*2 + 20, 1*1*3 + 0, 0.5*0.5*4 + 0.5*40
    expected = torch.tensor([[0.0, 20.0], [3.0, 21.0]]).view(1, 1, 2, 2)
    assert torch.equal(transporter.transport(f_s, h_s, f_t, h_t), expected)
    assert torch.equal(transporter.transport(source_features=f_s, source_heatmap=h_s, target_features=f_t,
                                             target_heatmap=h_t), expected)
    assert not torch.equal(transporter.transport(f_t, h_t, f_s, h_s), expected)  # the order matters
    # Gaussian maps: 1 at the keypoint, exp(-1/2) one std away; their sum is clamped to 1
    maps = transporter.gaussian_maps(torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), 3, 3, std=1.0)
    assert maps[0, 0, 1, 1] == 1 and torch.isclose(maps[0, 0, 1, 2], torch.exp(torch.tensor(-0.5)))
    assert transporter.heatmap(maps).max() == 1
    # the spatial softmax of a sharp peak at cell (row 1, column 3) of a 4 x 5 map is that cell in [-1, 1]
    logits = torch.full((1, 1, 4, 5), -50.0)
    logits[0, 0, 1, 3] = 50.0
    xy, peak = transporter.spatial_softmax(logits)
    assert torch.allclose(xy, torch.tensor([[[0.5, -1 / 3]]])) and torch.isclose(peak, torch.ones(1, 1))


def test_transporter_stops_gradients_through_the_source():
    cfg = TransporterConfig(image_size=16, block_channels=[4, 4, 4, 4], keypoints=2)
    torch.manual_seed(0)
    model = transporter.build(cfg)
    source, target = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16, requires_grad=True)
    model(source, target).square().mean().backward()
    assert source.grad is None and target.grad is not None and target.grad.abs().sum() > 0


def test_documented_feature_sizes():
    for method, size in (("bvae", 32), ("transporter", 20), ("monet", 96)):
        for name, cfg in PRESETS[method].items():
            assert METHODS[method].feature_dim(cfg) == size, (method, name)
    assert PRESETS["bvae"]["paper"].beta == 1.5 and PRESETS["monet"]["paper"].beta == 0.5
    assert (PRESETS["monet"]["paper"].sigma_bg, PRESETS["monet"]["paper"].sigma_fg) == (0.09, 0.12)


def test_bvae_loss_falls_and_its_latent_resolves_a_move(bvae_run):
    run, summary = bvae_run
    ok, first, last = falls(run, 2.0)
    assert ok, (first, last)
    assert (run / "reconstructions.png").stat().st_size > 1000 and (run / "train_curves.png").stat().st_size > 1000
    method, cfg, model = load_representation(run)
    a, _ = draw([(10, 10), (22, 22)], GREY)
    moved, _ = draw([(20, 10), (22, 22)], GREY)  # the square 10 px to the right
    mu, logvar = model.encode(resize_rgb(torch.from_numpy(np.stack([a, moved])), cfg.image_size))
    sd = torch.exp(0.5 * logvar[0])
    # the move shifts some latent mean by several posterior stds: the latent carries the object's position
    assert ((mu[0] - mu[1]).abs() / sd).max() > 2, ((mu[0] - mu[1]).abs() / sd)


def test_transporter_keypoint_follows_a_moving_square(transporter_run):
    run, _ = transporter_run
    ok, first, last = falls(run, 3.0)
    assert ok, (first, last)
    assert (run / "keypoints.png").stat().st_size > 1000
    _, cfg, model = load_representation(run)
    rgb, _, centres = moving_square(seed=118, T=30)  # a sequence not trained on, crossing 19 x 20 px
    uv, _ = transporter.image_keypoints(model, as_images(rgb), SIZE, SIZE)
    apart = np.linalg.norm(centres + 0.5 - DISC, axis=1) > 9  # frames where the square does not touch the disc
    assert apart.sum() >= 20
    distance = (uv - torch.from_numpy(centres).float()[:, None]).norm(dim=-1)[torch.from_numpy(apart)]
    error = distance.mean(0)  # (K,): each keypoint's mean distance to the square's centre, in pixels
    assert error.min() < 3.0, error  # on the square (half side 3.5 px) all along
    assert distance[:, error.argmin()].max() < 5.0, distance[:, error.argmin()]


def test_monet_masks_segment_two_objects(monet_run):
    run, _ = monet_run
    ok, first, last = falls(run, 3.0)
    assert ok, (first, last)
    assert (run / "slots.png").stat().st_size > 1000
    _, cfg, model = load_representation(run)
    rgb, seg = random_scenes(1, 16, BLACK)  # scenes not trained on
    labels = monet.masks(model, as_images(rgb)).argmax(1).numpy()
    ari = np.mean([adjusted_rand_score(s.ravel(), m.ravel()) for s, m in zip(seg, labels, strict=True)])
    assert ari >= 0.8, ari  # every pixel: background and the two shapes (this run also puts each in its own slot,
    # but at this scale that depends on the seed: 2 of 4 seeds tried; the background split held for all)


# --- resume, the CLI, bad input ------------------------------------------------------------------------------

TINY = {"bvae": ["--conv-channels", "4", "--hidden", "8", "--latent-dim", "3"],
        "transporter": ["--block-channels", "4", "4", "4", "4", "--keypoints", "3", "--max-gap", "3"],
        "monet": ["--slots", "3", "--latent-dim", "3", "--attention-channels", "4", "--vae-channels", "4"]}


def cli(method: str, files: str, out, steps: int, *more: str) -> int:
    flag = "--demos" if method == "transporter" else "--views"
    return main(["pretrain-representation", "--method", method, flag, files, "--out", str(out), "--steps",
                 str(steps), "--image-size", "32", "--batch", "3", "--checkpoint-every", "2", *TINY[method], *more])


@pytest.mark.parametrize("method", ["bvae", "transporter", "monet"])
def test_resume_after_ctrl_c_gives_identical_losses(data, method, monkeypatch, capsys):
    files = data["moving"] if method == "transporter" else data["grey"]
    tmp = data["tmp"] / f"resume_{method}"
    assert cli(method, files, tmp / "straight", 5) == 0

    module, calls = METHODS[method], []
    loss = module.loss

    def interrupted_loss(*args):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C during the third step: it finishes, is saved, and the run stops
            os.kill(os.getpid(), signal.SIGINT)
        return loss(*args)

    monkeypatch.setattr(module, "loss", interrupted_loss)
    assert cli(method, files, tmp / "resumed", 5) == 130
    err = capsys.readouterr().err
    assert "at step 3 of 5" in err and "resume with: dckp pretrain-representation" in err, err
    monkeypatch.setattr(module, "loss", loss)
    assert cli(method, files, tmp / "resumed", 5) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 3
    assert read_log(tmp / "straight") == read_log(tmp / "resumed")
    straight, resumed = (load_representation(tmp / d)[2].state_dict() for d in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_loss_that_is_not_finite_stops_before_any_save(data, monkeypatch, capsys):
    # the losses are read from the device every few steps (not at each): a non-finite one still stops the run with
    # its step named, before a checkpoint holds its weights
    loss, calls = METHODS["bvae"].loss, []

    def nan_from_step_2(*args):
        calls.append(1)
        total, stats = loss(*args)
        return (total * float("nan"), {**stats, "loss": stats["loss"] * float("nan")}) if len(calls) > 2 else (
            total, stats)

    monkeypatch.setattr(METHODS["bvae"], "loss", nan_from_step_2)
    out = data["tmp"] / "nan"
    assert cli("bvae", data["grey"], out, 5, "--checkpoint-every", "10") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("lr: the loss became nan at step 2; try a lower --lr"), err
    assert not (out / "last.safetensors").exists()


def test_bad_input_is_one_line_naming_file_or_flag(data, capsys):
    tmp = data["tmp"] / "bad"
    cases = [  # (argv after the method, what the line names)
        (["--method", "transporter", "--views", data["grey"], "--out", str(tmp / "a")], "--demos"),
        (["--method", "bvae", "--views", data["grey"], "--out", str(tmp / "b"), "--slots", "3"], "--slots"),
        (["--method", "bvae", "--views", str(tmp / "missing.h5"), "--out", str(tmp / "c")], "missing.h5"),
        (["--method", "monet", "--views", data["black"], "--out", str(tmp / "d"), "--image-size", "16"],
         "--image-size"),
        (["--method", "bvae", "--out", str(tmp / "e")], "--views"),
    ]
    for argv, names in cases:
        assert main(["pretrain-representation", *argv]) == 2, argv
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and names in lines[0], (argv, lines)
        assert not Path(argv[argv.index("--out") + 1]).exists()
    # resuming a run folder with other settings names the checkpoint
    assert cli("bvae", data["grey"], tmp / "f", 2) == 0
    assert cli("bvae", data["grey"], tmp / "f", 4, "--lr", "0.5") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "last.safetensors" in line and "lr" in line, line
    assert cli("bvae", data["grey"], tmp / "f", 1) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "last.safetensors" in line and "past --steps 1" in line, line


# --- the frozen encoders -------------------------------------------------------------------------------------

def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_frozen_encoders_features_per_camera_and_unchanged_weights(data, bvae_run, transporter_run, monet_run):
    from dckp.learn import train_on_demos
    from dckp.policy import PolicyConfig

    rgb, _, _ = moving_square(seed=7, T=6)
    big = np.repeat(np.repeat(rgb, 2, 1), 2, 2)  # the cameras at 64 px: the encoder resizes to the run's 32
    frames = {"cam_rgb": torch.from_numpy(big), "flipped_rgb": torch.from_numpy(big[:, :, ::-1].copy())}
    for name, (run, summary) in (("bvae", bvae_run), ("transporter", transporter_run), ("monet", monet_run)):
        spec = {"name": name, "artefacts": {"representation": str(run)}}
        enc = build_encoder(spec, list(CAMERAS), 64)
        per_camera = summary["features_per_camera"]
        assert not enc.trainable and enc.inputs == ("rgb",) and enc.output_dim() == 2 * per_camera
        weights = {k: v.clone() for k, v in enc.net[0].state_dict().items()}
        sha = _sha(run / "representation.safetensors")
        enc.train()  # as a policy might: the representation stays in eval mode (BatchNorm statistics untouched)
        features = enc(frames)
        _, _, model = load_representation(run)
        own = METHODS[name].features(model, resize_rgb(frames["cam_rgb"], 32))
        assert features.shape == (6, 2 * per_camera) and torch.allclose(features[:, :per_camera], own)
        assert list(enc.parameters()) == []  # nothing for a policy's optimiser to change
        cfg = PolicyConfig(head_options={"hidden": 8, "layers": 1}, steps=2, batch_size=2)
        train_on_demos(data["moving"], spec, cfg, data["tmp"] / f"policy_{name}", progress=False)
        assert _sha(run / "representation.safetensors") == sha
        assert all(torch.equal(v, weights[k]) for k, v in enc.net[0].state_dict().items())
        if name == "transporter":  # keypoints in the 64 px camera's pixels follow the square there
            uv, peak = enc.image_keypoints(frames)["cam"]
            assert uv.shape == (6, 4, 2) and peak.shape == (6, 4)
            centres = torch.from_numpy(2 * (moving_square(seed=7, T=6)[2] + 0.5) - 0.5).float()
            assert (uv - centres[:, None]).norm(dim=-1).mean(0).min() < 6.0
    with pytest.raises(Exception, match="a bvae representation"):
        build_encoder({"name": "monet", "artefacts": {"representation": str(bvae_run[0])}}, list(CAMERAS), 64)


def test_config_round_trip_names_method_and_config(bvae_run):
    run, _ = bvae_run
    info = json.loads((run / "representation.json").read_text())
    method, cfg, _ = load_representation(run)
    assert info["method"] == method == "bvae" and info["config"] == dataclasses.asdict(cfg)
    assert info["features_per_camera"] == cfg.latent_dim
