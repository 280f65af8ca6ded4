"""`--device`: DON pretraining, demonstration encoding through a frozen DON, a whole policy and its encoder on a
device, give what the CPU gives. Each test runs on the CPU, and again on cuda where a GPU is present; bf16 autocast
of the DON and the device flags' checks."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_bad_inputs import WRIST, _demos
from test_ddp import TINY
from test_pretrain import views_file

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.don.checkpoint import save_checkpoint
from dckp.don.config import DonConfig
from dckp.don.loss import make_optimizer, train_step
from dckp.don.model import DenseObjectNet
from dckp.encoders import build_encoder
from dckp.errors import DckpError
from dckp.evaluation.config import EvalConfig
from dckp.keypoints.select import select_references
from dckp.pipeline import RunConfig
from dckp.policy.demos import frames_of
from dckp.policy.folder import load_visuomotor_policy
from dckp.policy.model import PROPRIO_KEYS

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A tiny demonstrations file, a DON and references at hand-picked pixels."""
    tmp = tmp_path_factory.mktemp("device")
    _demos(tmp / "demos.h5")
    cfg = DonConfig(backbone="resnet18", layers=3, descriptor_dim=4, image_size=32)
    torch.manual_seed(0)
    save_checkpoint(tmp / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 0)
    select_references(DenseObjectNet(cfg).eval(), tmp / "demos.h5", tmp / "refs.safetensors",
                      pixels={WRIST: np.array([[8.0, 8.0], [20.0, 16.0], [25.0, 5.0]])})
    return tmp


@pytest.mark.parametrize("device", DEVICES)
def test_pretrain_on_device_saves_a_checkpoint_that_loads_on_the_cpu(tmp_path, device):
    views_file(tmp_path / "views.h5", n=6)
    pretrain_args = dataclasses.replace(TINY, steps=2, device=device)
    from dckp.don.train import load_don, pretrain

    summary = pretrain([str(tmp_path / "views.h5")], pretrain_args, tmp_path / "don", progress=False)
    assert np.isfinite(summary["loss_last"])
    assert all(t.device.type == "cpu" for t in load_file(tmp_path / "don" / "don.safetensors").values())
    assert next(load_don(tmp_path / "don").parameters()).device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_don_encoder_moves_with_its_references(artefacts, device):
    spec = {"name": "dckp-3d", "artefacts": {"don": str(artefacts / "don"),
                                             "references": str(artefacts / "refs.safetensors")}}
    encoder = build_encoder(spec, [WRIST], 32).eval()
    with Dataset(artefacts / "demos.h5") as ds:
        frames = frames_of(ds, "demo_0", [WRIST], 0, 4, encoder.inputs)
    on_cpu = encoder(frames)
    encoder.to(device)
    assert next(encoder.don[0].parameters()).device.type == device
    assert encoder.refs[WRIST]["descriptors"].device.type == device
    there = encoder({k: v.to(device) for k, v in frames.items()})
    assert there.device.type == device
    torch.testing.assert_close(there.cpu(), on_cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_policy_trains_encodes_and_acts_on_device(artefacts, tmp_path, device):
    demos, out = artefacts / "demos.h5", tmp_path / "policy"
    assert main(["train-policy", "--demos", demos, "--encoder", "dckp-3d", "--don", artefacts / "don", "--references",
                 artefacts / "refs.safetensors", "--out", out, "--steps", "2", "--hidden", "8",
                 "--device", device]) == 0
    policy = load_visuomotor_policy(out, device)
    assert policy.policy.obs_mean.device.type == device
    assert next(policy.encoder.don[0].parameters()).device.type == device
    with Dataset(demos) as ds:
        fr = ds.frame("demo_0", WRIST, 0)
        observation = {f"{WRIST}_{k}": fr[k] for k in ("rgb", "depth", "K", "pose")}
        observation |= {k: ds.array("demo_0", k)[0] for k in PROPRIO_KEYS}
    action = policy.act(observation)
    assert action.shape == (7,) and np.isfinite(action).all()
    np.testing.assert_allclose(action, load_visuomotor_policy(out).act(observation), atol=1e-4)


def test_bf16_autocast_trains_with_nearly_the_losses_of_fp32():
    """One step on the same batch: bf16 autocast (on the CPU here) changes the loss by little, and training runs."""
    from test_don import _pair

    from dckp.don.loss import collate_pairs

    losses = {}
    for bf16 in (False, True):
        cfg = dataclasses.replace(TINY, bf16=bf16)
        torch.manual_seed(0)
        model = DenseObjectNet(cfg)
        optimizer, _ = make_optimizer(model, cfg)
        batch = collate_pairs([_pair(20, size=32), _pair(16, size=32)])
        losses[bf16] = [train_step(model, optimizer, batch, cfg)["loss"].item() for _ in range(2)]
    assert np.isfinite(losses[True]).all()
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.05)
    assert losses[True][0] != losses[False][0]  # autocast did run in bf16


def test_device_flags_are_checked():
    for make in (lambda d: DonConfig(device=d), lambda d: EvalConfig(device=d), lambda d: RunConfig(device=d)):
        assert make("cuda:1").device == "cuda:1"
        with pytest.raises(DckpError, match="device"):
            make("gpu")


@pytest.mark.parametrize("device", DEVICES)
def test_keypoints_on_device_give_the_references_of_the_cpu(artefacts, tmp_path, device, capsys):
    """`dckp keypoints --device`: the DON runs there, the references file holds what the CPU gives."""
    from dckp.don.train import load_don

    pixels = np.array([[8.0, 8.0], [20.0, 16.0]])
    (tmp_path / "pixels.json").write_text(f'{{"uv": {pixels.tolist()}}}')
    argv = ["keypoints", "--don", str(artefacts / "don"), "--demos", str(artefacts / "demos.h5"), "--pixels",
            f"{WRIST}={tmp_path / 'pixels.json'}", "--out", str(tmp_path / "refs.safetensors")]
    assert main([*argv, "--device", device]) == 0
    select_references(load_don(artefacts / "don"), artefacts / "demos.h5", tmp_path / "cpu.safetensors",
                      pixels={WRIST: pixels})
    refs, cpu = load_file(tmp_path / "refs.safetensors"), load_file(tmp_path / "cpu.safetensors")
    assert refs[f"{WRIST}.descriptors"].shape == (2, 4) and refs[f"{WRIST}.descriptors"].device.type == "cpu"
    # cuDNN convolutions run in TF32 (10-bit mantissa) on Ampere and newer unless turned off: the descriptors then
    # agree to about 1e-3 relative (0.0016 seen on an H100); in full fp32 to 1e-4.
    tf32 = device == "cuda" and torch.backends.cudnn.allow_tf32
    tol = {"rtol": 5e-3, "atol": 1e-3} if tf32 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(refs[f"{WRIST}.descriptors"], cpu[f"{WRIST}.descriptors"], **tol)
    assert main([*argv, "--device", "gpu"]) == 2
    assert "--device" in capsys.readouterr().err
