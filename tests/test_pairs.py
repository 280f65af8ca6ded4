"""DON training pairs: never empty, far enough apart, other objects as background; augmentation keeps matches; the
frame cache and its size change nothing but speed."""

import numpy as np
import pytest
import torch
from test_pretrain import views_file

from dckp.don.augment import augment_pair
from dckp.don.pairs import PairSampler
from dckp.errors import DckpError


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "views.h5"
    obs = views_file(path, n=10)
    return path, obs


def test_pairs_are_valid(views):
    path, obs = views
    sampler = PairSampler([str(path)], n_matches=50, n_object=5, n_background=20, min_translation=0.1,
                          min_rotation_deg=20, arm_fraction=0.0, seed=1)
    background_hits_other_object = 0
    for _ in range(30):
        p = sampler.sample()
        obj = int(p["object"])
        assert obj in (1, 2) and len(p["uv_a"]) >= 10
        ua, va = p["uv_a"].round().long().T
        assert (p["mask_a"][va, ua] == obj).all()  # matches come from the sampled object in I_a
        ub, vb = p["nm_object"][p["nm_object_valid"]].round().long().T
        assert (p["mask_b"][vb, ub] == obj).all()
        ub, vb = p["nm_background"][p["nm_background_valid"]].round().long().T
        labels = p["mask_b"][vb, ub]
        assert (labels != obj).all()
        background_hits_other_object += int(((labels != 0) & (labels != obj)).sum())
    assert background_hits_other_object > 0  # the other object is background for this pair
    poses = obs["free_pose"]
    for a in range(len(poses)):  # the pose rule: every candidate partner differs enough
        far = [sampler.far_apart(poses[a], poses[b]) for b in range(len(poses))]
        assert not far[a]


def test_pose_rule_and_empty_masks(tmp_path):
    path = tmp_path / "views.h5"
    views_file(path, n=4)
    strict = PairSampler([str(path)], 20, 2, 2, min_translation=10.0, min_rotation_deg=180, max_tries=5)
    with pytest.raises(DckpError, match="no valid pair"):
        strict.sample()


def test_rotation_keeps_matches_on_the_same_pixels(views):
    path, _ = views
    sampler = PairSampler([str(path)], 40, 3, 3, min_translation=0.1, arm_fraction=0.0, seed=2)
    pair = sampler.sample()
    rng = np.random.default_rng(0)
    while True:  # a draw that rotates image a by 180 degrees
        out = augment_pair(pair, np.random.default_rng(rng.integers(1 << 30)), crop_min=1.0, rotate=True,
                           jitter=0.0, background=False)
        if not torch.equal(out["image_a"], pair["rgb_a"].permute(2, 0, 1).float() / 255):
            break
    before = pair["rgb_a"].permute(2, 0, 1).float() / 255
    u, v = pair["uv_a"].round().long().T
    u2, v2 = out["uv_a"].round().long().T
    assert torch.allclose(out["image_a"][:, v2, u2], before[:, v, u])


def test_pairs_are_the_same_with_every_frame_cached_some_or_none(views):
    path, _ = views
    samplers = [PairSampler([str(path)], 30, 3, 3, min_translation=0.1, arm_fraction=0.0, seed=4, cache_bytes=c)
                for c in (None, 40_000, 0)]  # all, 4 of 10 frames, none
    for _ in range(12):
        pairs = [s.sample() for s in samplers]
        for other in pairs[1:]:
            assert pairs[0].keys() == other.keys()
            assert all(torch.equal(pairs[0][k], other[k]) if torch.is_tensor(other[k]) else pairs[0][k] == other[k]
                       for k in other)
    assert samplers[0].cached_bytes > samplers[1].cached_bytes > 0 == samplers[2].cached_bytes


def test_frame_cache_takes_half_the_memory_in_proportion_to_the_cores_used(monkeypatch):
    import os

    from dckp import training

    half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    monkeypatch.setattr(training.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(training.torch, "get_num_threads", lambda: 2)
    assert training.memory_share() == int(half / 8)
    monkeypatch.setattr(training.torch, "get_num_threads", lambda: 32)
    assert training.memory_share() == int(half)
