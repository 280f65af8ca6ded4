"""DON pretraining end to end on a synthetic two-object scene: the best-match error falls; resume is exact."""

import dataclasses
import json

import numpy as np
import torch
from synthetic_scenes import intrinsics, look_at, make_scene, render

from dckp.data import DatasetWriter
from dckp.don.config import DonConfig
from dckp.don.train import load_don, pretrain
from dckp.geometry.correspondence import find_matches
from dckp.metrics import match, median

SIZE = 32



def views_file(path, seed=0, n=10):
    scene = make_scene(seed, n_objects=2)
    K = intrinsics(SIZE, SIZE, 60)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        a = 2 * np.pi * i / n
        r = rng.uniform(0.25, 0.45)
        pose = look_at([r * np.cos(a), r * np.sin(a), rng.uniform(0.2, 0.4)], [0, 0, 0.02])
        fr = render(scene, K, pose, SIZE, SIZE)
        frames.append({"free_rgb": fr["rgb"], "free_depth": fr["depth"], "free_seg": fr["seg"], "free_K": K,
                       "free_pose": pose, "free_mask": fr["seg"]})  # masks as `dckp fuse` would give them
    obs = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    with DatasetWriter(path, "views", "synthetic", ["a", "b"], {}) as w:
        w.add_episode("scene_0", obs, seed=seed, arm_only=False)
    return obs


CFG = DonConfig(backbone="resnet18", descriptor_dim=8, image_size=SIZE, steps=100, batch_pairs=2, n_matches=64,
                n_non_matches=8, lr=3e-4, lr_decay_every=1000, crop_min=1.0, rotate=False, jitter=0.0,
                random_background=False, arm_fraction=0.0, min_pose_translation=0.05)


def median_error(model, obs, pairs):
    errors = []
    with torch.no_grad():
        for a, b in pairs:
            uv_a, uv_b = find_matches(*(torch.from_numpy(np.asarray(obs[f"free_{k}"][a], np.float64))
                                        for k in ("depth", "K", "pose")),
                                      *(torch.from_numpy(np.asarray(obs[f"free_{k}"][b], np.float64))
                                        for k in ("depth", "K", "pose")),
                                      uv_a=None)
            keep = torch.from_numpy(obs["free_seg"][a])[uv_a[:, 1].round().long(), uv_a[:, 0].round().long()] > 0
            images = torch.from_numpy(obs["free_rgb"][[a, b]]).permute(0, 3, 1, 2).float() / 255
            desc = model(images)
            errors.append(median(match(desc[0], desc[1], uv_a[keep].float(), uv_b[keep].float())["pixel_error"]))
    return float(np.mean(errors))


def test_training_lowers_best_match_error(tmp_path):
    path = tmp_path / "views.h5"
    obs = views_file(path)
    pairs = [(0, 2), (3, 5), (6, 8), (1, 4)]
    from dckp.don.model import DenseObjectNet

    torch.manual_seed(CFG.seed)
    before = median_error(DenseObjectNet(CFG).eval(), obs, pairs)
    summary = pretrain([str(path)], CFG, tmp_path / "run", checkpoint_every=20, progress=False)
    after = median_error(load_don(tmp_path / "run"), obs, pairs)
    assert summary["loss_last"] < summary["loss_first"]
    assert after < 0.6 * before, (before, after)
    assert (tmp_path / "run" / "train_curves.png").stat().st_size > 1000


def test_resume_gives_identical_losses(tmp_path, monkeypatch):
    monkeypatch.setattr("dckp.don.train.READ_EVERY", 3)  # losses read at steps 3 and 4, or 2 and 4 when resumed
    path = tmp_path / "views.h5"
    views_file(path)
    cfg = dataclasses.replace(CFG, steps=4, crop_min=0.7, rotate=True, jitter=0.2, random_background=True)
    pretrain([str(path)], cfg, tmp_path / "straight", checkpoint_every=4, progress=False)
    pretrain([str(path)], dataclasses.replace(cfg, steps=2), tmp_path / "resumed", checkpoint_every=2,
             progress=False)
    summary = pretrain([str(path)], cfg, tmp_path / "resumed", checkpoint_every=2, progress=False)
    assert summary["resumed_from"] == 2
    read = lambda d: [json.loads(x)["loss"] for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert read("straight") == read("resumed") and len(read("straight")) == 4
    for name in ("don.safetensors", "last.safetensors"):  # the same bytes, the saved RNG state included
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()


def test_loaded_don_is_channels_last_and_gives_the_same_descriptors(tmp_path):
    """`load_don` lays the weights out channels-last, as the permuted frames are: the same descriptors, bit for bit,
    as the network loaded as saved."""
    from dckp.don.checkpoint import load_checkpoint
    from dckp.don.model import DenseObjectNet

    obs = views_file(tmp_path / "views.h5", n=2)
    pretrain([str(tmp_path / "views.h5")], dataclasses.replace(CFG, steps=2), tmp_path / "run", checkpoint_every=2,
             progress=False)
    loaded, plain = load_don(tmp_path / "run"), DenseObjectNet(CFG)
    load_checkpoint(tmp_path / "run" / "don.safetensors", plain)
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    images = torch.from_numpy(obs["free_rgb"]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.equal(loaded(images), plain.eval()(images))
