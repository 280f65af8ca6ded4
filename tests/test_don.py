import dataclasses
import logging

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from dckp.config import from_dict, load_json
from dckp.don import (
    BATCH_KEYS,
    DON_PRESETS,
    DenseObjectNet,
    DonConfig,
    collate_pairs,
    contrastive_loss,
    load_backbone_weights,
    load_checkpoint,
    load_checkpoint_config,
    make_optimizer,
    save_checkpoint,
    train_step,
)
from dckp.errors import DckpError
from dckp.metrics import match, median, summarise

# lr_decay_every=3: resuming after step 2 of 4, a scheduler that was not restored would skip the decay after
# step 3 (StepLR's chainable form hides a lost state when the lr decays every step).
TINY = DonConfig(backbone="resnet18", descriptor_dim=3, image_size=32, lr=1e-3, lr_decay=0.5, lr_decay_every=3)



# --- config -------------------------------------------------------------------------------------------------

def test_presets_and_validation(tmp_path):
    assert (DON_PRESETS["paper"].backbone, DON_PRESETS["paper"].descriptor_dim, DON_PRESETS["paper"].image_size) \
        == ("resnet50", 16, 256)
    assert DON_PRESETS["cpu"].backbone in ("resnet18", "resnet34") and DON_PRESETS["cpu"].image_size == 128
    with pytest.raises(DckpError, match="backbone.*unknown backbone 'vgg16'"):
        DonConfig(backbone="vgg16")
    with pytest.raises(DckpError, match="descriptor_dim.*>= 1"):
        DonConfig(descriptor_dim=0)
    with pytest.raises(DckpError, match="lr_decay"):
        DonConfig(lr_decay=1.5)
    with pytest.raises(DckpError, match="layers: must be 3 or 4"):
        DonConfig(layers=2)
    with pytest.raises(DckpError, match="device: must be 'cpu', 'cuda'"):
        DonConfig(device="gpu")
    with pytest.raises(DckpError, match=r"cfg\.json.*unknown field"):
        from_dict(DonConfig, {"descriptor_size": 3}, source="cfg.json")
    with pytest.raises(DckpError, match="margin_object: expected float"):
        from_dict(DonConfig, {"margin_object": "big"})


# --- model --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,layers,channels", [("resnet18", 4, 512), ("resnet18", 3, 256),
                                                     ("resnet50", 4, 2048), ("resnet50", 3, 1024)])
def test_model_output_size_and_stride_8(backbone, layers, channels):
    model = DenseObjectNet(DonConfig(backbone=backbone, layers=layers, descriptor_dim=5)).eval()
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        assert model.features(x).shape == (2, channels, 8, 6)
        assert model(x).shape == (2, 5, 64, 48)


def test_load_backbone_weights(tmp_path, caplog):
    reference = torchvision.models.resnet18(weights=None)
    save_file(reference.state_dict(), tmp_path / "r18.safetensors")
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    for name in ("r18.safetensors", "r18.pt"):
        model = DenseObjectNet(TINY)
        load_backbone_weights(model, tmp_path / name)
        state = model.backbone.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items() if not k.startswith("fc."))
    three = DenseObjectNet(dataclasses.replace(TINY, layers=3))  # without layer4: its keys are left out
    load_backbone_weights(three, tmp_path / "r18.safetensors")
    assert torch.equal(three.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert not hasattr(three.backbone, "layer4")
    save_file(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.safetensors")
    with pytest.raises(DckpError, match="r50.safetensors.*do not fit"):
        load_backbone_weights(DenseObjectNet(TINY), tmp_path / "r50.safetensors")
    with pytest.raises(DckpError, match="missing.safetensors.*not found"):
        load_backbone_weights(DenseObjectNet(TINY), tmp_path / "missing.safetensors")
    with caplog.at_level(logging.INFO, logger="dckp.don.model"):
        load_backbone_weights(DenseObjectNet(TINY), None)
    assert "random initialisation" in caplog.text  # an INFO line: random initialisation is the usual case
    assert [r.levelno for r in caplog.records] == [logging.INFO]


# --- loss ---------------------------------------------------------------------------------------------------

def _uv(cols):
    """Pixel coordinates (col, row 0) of a 1-row image."""
    cols = torch.tensor(cols, dtype=torch.float64)
    return torch.stack([cols, torch.zeros_like(cols)], -1)[None]


def test_loss_matches_hand_computed_value():
    # D = 4, so d = ||f_a - f_b|| / 2. Image I_a is all zeros; I_b is 1 x 8 with these descriptors:
    f_b = torch.tensor([
        [0.2, 0, 0, 0],  # match 0:      d = 0.1 -> d^2 = 0.01
        [0, 0.6, 0, 0],  # match 1:      d = 0.3 -> d^2 = 0.09        L_match = 0.05
        [0, 0, 0.2, 0],  # object nm:    d = 0.1 -> (0.25 - 0.1)^2 = 0.0225
        [1.0, 0, 0, 0],  # object nm:    d = 0.5 -> 0 (outside the margin)
        [0, 0, 0, 0],  # object nm:      d = 0 -> 0.0625, but only used by invalid entries
        [0, 0, 0, 1.0],  # background:   d = 0.5 -> (0.75 - 0.5)^2 = 0.0625
        [0, 0.4, 0, 0],  # background:   d = 0.2 -> (0.75 - 0.2)^2 = 0.3025
        [9.0, 9, 9, 9],  # the padded (invalid) third match
    ], dtype=torch.float64)
    desc_a = torch.zeros(1, 4, 1, 8, dtype=torch.float64)
    desc_b = f_b.T.reshape(1, 4, 1, 8)
    uv_a, uv_b = _uv([0, 1, 2]), _uv([0, 1, 7])
    match_valid = torch.tensor([[True, True, False]])
    nm_object = _uv([2, 3, 4, 2, 4, 4]).view(1, 3, 2, 2)
    nm_object_valid = torch.tensor([[[True, True], [False, True], [True, True]]])
    nm_background = _uv([5, 6, 5, 6, 4, 4]).view(1, 3, 2, 2)
    nm_background_valid = torch.ones(1, 3, 2, dtype=torch.bool)
    args = (desc_a, desc_b, uv_a, uv_b, match_valid, nm_object, nm_object_valid, nm_background, nm_background_valid)

    # object: hinges 0.0225, 0, 0.0225 over 3 valid (2 hard); background: 2 x (0.0625 + 0.3025) over 4 (all hard)
    loss, parts = contrastive_loss(*args, dataclasses.replace(TINY, normalise_hard_negatives=False))
    assert parts["match"] == pytest.approx(0.05, abs=1e-12)
    assert parts["object"] == pytest.approx(0.045 / 3, abs=1e-12)
    assert parts["background"] == pytest.approx(0.73 / 4, abs=1e-12)
    assert loss.item() == pytest.approx(0.05 + 0.015 + 0.1825, abs=1e-12)
    assert parts["hard_object"] == pytest.approx(2 / 3) and parts["hard_background"] == 1.0

    loss, parts = contrastive_loss(*args, dataclasses.replace(TINY, normalise_hard_negatives=True))
    assert parts["object"] == pytest.approx(0.045 / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.05 + 0.0225 + 0.1825, abs=1e-12)


def _per_pair_loss(desc_a, desc_b, batch, cfg):
    """The loss of loss.py's docstring, written out pair by pair and match by match (integer pixels)."""
    D = desc_a.shape[1]
    sums, counts = [0.0, 0.0, 0.0], [0, 0, 0]
    for p in range(len(desc_a)):
        for i in torch.nonzero(batch["match_valid"][p]).flatten().tolist():
            (ua, va), (ub, vb) = batch["uv_a"][p, i].long().tolist(), batch["uv_b"][p, i].long().tolist()
            f_a = desc_a[p, :, va, ua]
            sums[0] += ((f_a - desc_b[p, :, vb, ub]) ** 2).sum().item() / D
            counts[0] += 1
            for term, kind, margin in ((1, "object", cfg.margin_object), (2, "background", cfg.margin_background)):
                for j in torch.nonzero(batch[f"nm_{kind}_valid"][p, i]).flatten().tolist():
                    u, v = batch[f"nm_{kind}"][p, i, j].long().tolist()
                    hinge = max(0.0, margin - (f_a - desc_b[p, :, v, u]).norm().item() / D**0.5) ** 2
                    sums[term] += hinge
                    counts[term] += hinge > 0 if cfg.normalise_hard_negatives else 1
    return sum(s / max(c, 1) for s, c in zip(sums, counts, strict=True))


@pytest.mark.parametrize("hard", [False, True])
def test_batched_loss_equals_the_per_pair_loss(hard):
    """The loss of a whole batch, in batched tensor operations with no loop over pairs or matches, equals the
    per-pair, per-match sums (relative 1e-5) on a fixed batch of 3 pairs padded to the same number of matches."""
    cfg = dataclasses.replace(TINY, normalise_hard_negatives=hard)
    g = torch.Generator().manual_seed(0)
    B, m, n, H, W, D = 3, 12, 5, 9, 11, 4
    desc_a, desc_b = torch.rand(B, D, H, W, generator=g) * 0.4, torch.rand(B, D, H, W, generator=g) * 0.4

    def uv(*shape):
        return torch.stack([torch.randint(0, W, shape, generator=g), torch.randint(0, H, shape, generator=g)],
                           -1).float()

    batch = {"uv_a": uv(B, m), "uv_b": uv(B, m), "match_valid": torch.arange(m) < torch.tensor([[12], [7], [3]]),
             "nm_object": uv(B, m, n), "nm_object_valid": torch.rand(B, m, n, generator=g) < 0.7,
             "nm_background": uv(B, m, n), "nm_background_valid": torch.rand(B, m, n, generator=g) < 0.9}
    loss, parts = contrastive_loss(desc_a, desc_b, *(batch[k] for k in BATCH_KEYS), cfg)
    expected = _per_pair_loss(desc_a, desc_b, batch, cfg)
    assert 0 < parts["hard_object"].item() < 1  # both hinged and free non-matches in the batch
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert (parts["match"] + parts["object"] + parts["background"]).item() == pytest.approx(expected, rel=1e-5)


def test_loss_gradient_pulls_matches_and_pushes_non_matches():
    # D = 2, 1 x 4 images; one match (a:0 -> b:0), one object (b:1) and one background (b:2) non-match, both
    # inside their margins and on the far side of f_a from the match (so every term moves f_a the same way):
    # f_a(0) = (0, 0), f_b(0) = (0.2, 0), f_b(1) = (-0.1, 0.05), f_b(2) = (-0.2, -0.1).
    desc_a = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    desc_b = torch.tensor([[0.2, -0.1, -0.2, 0.0], [0.0, 0.05, -0.1, 0.0]], dtype=torch.float64).view(1, 2, 1, 4)
    desc_a.requires_grad_(True)
    desc_b.requires_grad_(True)
    uv_a, uv_b = _uv([0]), _uv([0])
    batch = (uv_a, uv_b, torch.ones(1, 1, dtype=torch.bool), _uv([1]).view(1, 1, 1, 2),
             torch.ones(1, 1, 1, dtype=torch.bool), _uv([2]).view(1, 1, 1, 2), torch.ones(1, 1, 1, dtype=torch.bool))

    def distances():
        f_a, f_b = desc_a[0, :, 0, 0], desc_b[0, :, 0, :3].T
        return [(f_a - f).norm().item() for f in f_b]  # match, object, background

    before = distances()
    assert before[1] / 2**0.5 < TINY.margin_object and before[2] / 2**0.5 < TINY.margin_background
    optimizer = torch.optim.SGD([desc_a, desc_b], lr=0.1)
    loss, _ = contrastive_loss(desc_a, desc_b, *batch, TINY)
    loss.backward()
    optimizer.step()
    after = distances()
    assert after[0] < before[0]
    assert after[1] > before[1] and after[2] > before[2]


# --- metrics ------------------------------------------------------------------------------------------------

def test_metrics_exact_descriptors_give_zero_error():
    # Descriptor = normalised pixel coordinates in I_a; I_b is I_a rotated by 180 degrees.
    H, W = 12, 16
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    desc_a = torch.stack([u / (W - 1), v / (H - 1)])
    desc_b = torch.stack([(W - 1 - u) / (W - 1), (H - 1 - v) / (H - 1)])
    uv_a = torch.stack([u.flatten(), v.flatten()], -1)
    uv_b = torch.stack([W - 1 - uv_a[:, 0], H - 1 - uv_a[:, 1]], -1)
    seg_b = (u.long() // 4).to(torch.uint8)
    points = match(desc_a, desc_b, uv_a, uv_b, seg_b=seg_b, max_elements=1000)  # 2 points a chunk
    assert torch.equal(points["best_uv"], uv_b.long())
    out = summarise(points, max(H, W))
    assert out["median_px"] == 0 and out["fraction_closer"] == 0 and out["wrong_object_rate"] == 0
    assert out["pck@1%"] == out["pck@2%"] == out["pck@5%"] == out["pck@10%"] == 1.0 and out["points"] == H * W

    # Only valid pixels may be matched: without its true match (15, 11), point (0, 0) finds the pixel one column
    # over, (14, 11), whose descriptor is 1/15 away (the next row is 1/11 away).
    valid_b = torch.ones(H, W, dtype=torch.bool)
    valid_b[11, 15] = False
    points = match(desc_a, desc_b, uv_a[:1], uv_b[:1], valid_b=valid_b)
    assert points["best_uv"].tolist() == [[14, 11]] and points["pixel_error"].tolist() == [1.0]
    assert "wrong_object" not in points and "wrong_object_rate" not in summarise(points, max(H, W))


def test_metrics_mirrored_descriptors_hand_computed():
    # 1 x 8 images, D = 1: f_a(u) = u, f_b(u) = 7 - u, but the true match of u is u. So the best match of u is
    # 7 - u, with pixel error |7 - 2u| = 7 5 3 1 1 3 5 7 (an even count: median 4, the midpoint of 3 and 5; torch's
    # median would say 3; all above 10 % of 8 px).
    desc_a = torch.arange(8.0).view(1, 1, 8)
    desc_b = (7 - torch.arange(8.0)).view(1, 1, 8)
    uv = torch.stack([torch.arange(8.0), torch.zeros(8)], -1)
    seg_b = torch.tensor([[0, 2, 2, 1, 1, 3, 3, 255]], dtype=torch.uint8)
    for max_elements in (3, 2**24):
        points = match(desc_a, desc_b, uv, uv, seg_b=seg_b, max_elements=max_elements)
        assert points["best_uv"][:, 0].tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
        assert points["pixel_error"].tolist() == [7, 5, 3, 1, 1, 3, 5, 7]
        out = summarise(points, 8)
        assert out["median_px"] == 4.0 and out["pck@10%"] == 0.0
        # ids: true 0 2 2 1 1 3 3 255, found 255 3 3 1 1 2 2 0 -> only u = 3, 4 right; u = 0 landed on the arm
        assert points["wrong_object"].tolist() == [True, True, True, False, False, True, True, True]
        assert out["wrong_object_rate"] == 6 / 8 and out["arm_rate"] == 1 / 8
        # pixels u' with |u' - (7 - u)| < |7 - 2u|: 7 6 5 1 1 5 6 7 of 8
        assert points["fraction_closer"].tolist() == [n / 8 for n in (7, 6, 5, 1, 1, 5, 6, 7)]
        assert out["fraction_closer"] == 38 / 64


def test_metrics_count_a_landing_on_the_background_as_a_wrong_object():
    # 1 x 4 image b: background, object 1, object 1, object 2. Two query points, both truly at u = 1 (object 1):
    # the first finds u = 2 (the same object: right, 1 px off), the second u = 0 (the background: wrong).
    desc_a = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]])
    desc_b = torch.tensor([[[0.0, 9.0, 2.0, 5.0]]])
    uv_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    uv_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    seg_b = torch.tensor([[0, 1, 1, 2]], dtype=torch.uint8)
    points = match(desc_a, desc_b, uv_a, uv_b, seg_b=seg_b)
    assert points["best_uv"][:, 0].tolist() == [2, 0]
    assert points["wrong_object"].tolist() == [False, True] and not points["on_arm"].any()
    out = summarise(points, 4)
    assert out["wrong_object_rate"] == 0.5 and out["arm_rate"] == 0 and out["median_px"] == 1.0
    assert out["pck@10%"] == 0 and summarise(points, 20)["pck@5%"] == 1.0  # 1 px <= 5 % of 20 px


def test_median_is_the_midpoint_for_an_even_count():
    assert median(torch.tensor([10.0, 1.0, 3.0, 2.0])) == 2.5  # torch.median: 2.0
    assert median(torch.tensor([[5.0, 1.0], [3.0, 9.0]])) == 4.0  # any shape
    assert median(torch.tensor([3.0, 1.0, 2.0])) == 2.0
    assert median(torch.tensor([])) is None


# --- training step and checkpoints --------------------------------------------------------------------------

def _pair(m, size=32, n=4):
    """A random pair (uses torch's global RNG, so resuming must restore it)."""
    def uv(*shape):
        return torch.randint(0, size, (*shape, 2)).float()

    return {"image_a": torch.rand(3, size, size), "image_b": torch.rand(3, size, size), "uv_a": uv(m),
            "uv_b": uv(m), "nm_object": uv(m, n), "nm_object_valid": torch.rand(m, n) < 0.8,
            "nm_background": uv(m, n), "nm_background_valid": torch.ones(m, n, dtype=torch.bool)}


def _train(model, optimizer, scheduler, steps):
    losses = []
    for _ in range(steps):
        losses.append(train_step(model, optimizer, collate_pairs([_pair(20), _pair(13)]), TINY)["loss"].item())
        scheduler.step()
    return losses


def test_collate_pads_matches():
    batch = collate_pairs([_pair(5), _pair(3)])
    assert batch["image_a"].shape == (2, 3, 32, 32) and batch["nm_object"].shape == (2, 5, 4, 2)
    assert batch["match_valid"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert not batch["nm_object_valid"][1, 3:].any()


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = DenseObjectNet(TINY)
    optimizer, scheduler = make_optimizer(model, TINY)
    _train(model, optimizer, scheduler, 2)
    np_rng, torch_gen = np.random.default_rng(5), torch.Generator().manual_seed(7)
    np_rng.random(3)
    save_checkpoint(tmp_path / "ck.safetensors", model, TINY, 2, optimizer, scheduler,
                    generators={"pairs": np_rng, "noise": torch_gen})
    rng_state = torch.get_rng_state()

    torch.manual_seed(1)
    model2 = DenseObjectNet(TINY)
    optimizer2, scheduler2 = make_optimizer(model2, TINY)
    np_rng2, torch_gen2 = np.random.default_rng(0), torch.Generator()
    step = load_checkpoint(tmp_path / "ck.safetensors", model2, optimizer2, scheduler2, TINY,
                           generators={"pairs": np_rng2, "noise": torch_gen2})
    assert step == 2
    a, b = model.state_dict(), model2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    oa, ob = optimizer.state_dict(), optimizer2.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i])
    assert scheduler.state_dict() == scheduler2.state_dict()
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert np_rng.random() == np_rng2.random()
    assert torch.equal(torch.rand(3, generator=torch_gen), torch.rand(3, generator=torch_gen2))
    assert load_json(DonConfig, tmp_path / "ck.json") == TINY
    assert load_checkpoint_config(tmp_path / "ck.safetensors") == TINY


def test_resume_gives_identical_next_losses(tmp_path):
    # The losses after resuming depend on the weights and the batches (torch's RNG), the weights after it also
    # on Adam's state and the scheduled lr.
    torch.manual_seed(0)
    model = DenseObjectNet(TINY)
    optimizer, scheduler = make_optimizer(model, TINY)
    uninterrupted = _train(model, optimizer, scheduler, 4)
    final = model.state_dict()

    torch.manual_seed(0)
    model = DenseObjectNet(TINY)
    optimizer, scheduler = make_optimizer(model, TINY)
    assert _train(model, optimizer, scheduler, 2) == uninterrupted[:2]
    save_checkpoint(tmp_path / "ck.safetensors", model, TINY, 2, optimizer, scheduler)

    torch.manual_seed(123)  # as in a fresh process: other weights, other RNG state
    model = DenseObjectNet(TINY)
    optimizer, scheduler = make_optimizer(model, TINY)
    longer = dataclasses.replace(TINY, steps=TINY.steps * 2)  # allowed to change on resume
    assert load_checkpoint(tmp_path / "ck.safetensors", model, optimizer, scheduler, longer) == 2
    assert _train(model, optimizer, scheduler, 2) == uninterrupted[2:]
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


def test_checkpoint_errors(tmp_path):
    model = DenseObjectNet(TINY)
    with pytest.raises(DckpError, match="nope.safetensors: file not found"):
        load_checkpoint(tmp_path / "nope.safetensors", model)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DckpError, match="junk.safetensors: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors", model)
    save_checkpoint(tmp_path / "ck.safetensors", model, TINY, 0)
    data = (tmp_path / "ck.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DckpError, match="cut.safetensors: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.safetensors", model)
    other = dataclasses.replace(TINY, descriptor_dim=4)
    with pytest.raises(DckpError, match=r"ck.safetensors: config differs .* \['descriptor_dim'\]"):
        load_checkpoint(tmp_path / "ck.safetensors", DenseObjectNet(other), cfg=other)
    with pytest.raises(DckpError, match="ck.safetensors: model does not fit"):
        load_checkpoint(tmp_path / "ck.safetensors", DenseObjectNet(other))
    with pytest.raises(DckpError, match="no optimizer state"):
        load_checkpoint(tmp_path / "ck.safetensors", model, make_optimizer(model, TINY)[0])
