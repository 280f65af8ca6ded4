"""dckp.policy: the heads (lstm, rnn-gmm, diffusion) and their registry, training, checkpoints, resume, validation
rollouts and the choice of the kept checkpoint."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dckp.errors import DckpError
from dckp.policy import (
    Policy,
    PolicyConfig,
    load_policy,
    proprioception,
    save_policy,
    train_policy,
)
from dckp.policy.heads.lstm import LSTMOptions, action_std, nll


def lstm(hidden=16, layers=1, **options):
    return {"hidden": hidden, "layers": layers, **options}


def demos(n=3, F=5, seed=0):
    """Random features with actions a fixed smooth function of them, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(F, 7)).astype(np.float32) / math.sqrt(F)
    feats = [rng.normal(size=(rng.integers(8, 20), F)).astype(np.float32) for _ in range(n)]
    return feats, [np.tanh(f @ A) for f in feats]


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_nll_matches_hand_computation():
    std = torch.tensor([0.5, 2.0])
    mean = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [9.0, 9.0]]])
    actions = torch.tensor([[[1.0, 0.0], [1.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    const = math.log(0.5) + math.log(2.0) + math.log(2 * math.pi)  # sum_d log std_d + log(2 pi) / 2
    per_step = [1 / (2 * 0.25) + const, 4 / (2 * 4) + const, 1 / (2 * 4) + const]  # the masked step is left out
    assert nll(mean, actions, mask, std).item() == pytest.approx(sum(per_step) / 3, rel=1e-6)


def test_action_std_in_action_units():
    assert action_std(LSTMOptions()).tolist() == pytest.approx([0.02] * 3 + [0.0087266] * 3 + [0.1], rel=1e-4)


@pytest.mark.parametrize("seq_len", [0, 4])
def test_lstm_head_is_the_paper_policy_of_before(tmp_path, seq_len):
    """The lstm head trains to the weights and acts as the LSTMPolicy before the head seam
    (tests/data/lstm_golden_seq*.safetensors, made by commit d29ad60's code from the same data, config and seed).

    Tensor-equal on a machine like the one that made the files; float rounding differs between CPUs' vector units
    (d29ad60's own code on an AVX-512 Xeon differs from them by up to 3e-8), hence the 1e-6 tolerance: a change of
    what is computed moves them by orders of magnitude more."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 7)).astype(np.float32) / math.sqrt(5)
    feats = [rng.normal(size=(rng.integers(8, 20), 5)).astype(np.float32) for _ in range(3)]
    acts = [np.tanh(f @ A) for f in feats]
    cfg = PolicyConfig(head_options=lstm(layers=2, seq_len=seq_len), steps=30, batch_size=2)
    train_policy(feats, acts, cfg, tmp_path, progress=False)
    policy = load_policy(tmp_path)
    policy.reset()
    obs = torch.from_numpy(feats[0])
    actions = torch.cat([policy.act(obs[t:t + 1]) for t in range(len(obs))])
    golden = load_file(f"tests/data/lstm_golden_seq{seq_len}.safetensors")
    state = policy.state_dict()
    renamed = {k: k if k.startswith("obs_") else "head." + k.replace("head.", "out.") for k in golden if k != "actions"}
    assert len(renamed) == len(state)
    for k, v in renamed.items():
        torch.testing.assert_close(state[v], golden[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(actions, golden["actions"], rtol=0, atol=1e-6)


def test_policy_overfits_one_trajectory(tmp_path):
    feats, acts = demos(n=1, F=6)
    cfg = PolicyConfig(head_options=lstm(64), batch_size=1, steps=300, checkpoint_every=300)  # default lr 3e-4
    result = train_policy(feats, acts, cfg, tmp_path, progress=False)
    floor = action_std(LSTMOptions()).log().sum().item() + 3.5 * math.log(2 * math.pi)  # the NLL of a perfect fit
    assert result["loss_end"] - floor < (result["loss_start"] - floor) / 100
    policy = load_policy(tmp_path)
    mean, _ = policy.head(policy.normalise(torch.from_numpy(feats[0]))[None])
    # the NLL weighs errors by 1 / std^2: the arm dims (std 0.02, 0.0087) fit first, the gripper (std 0.1) later
    # (the actions' mean magnitude is about 0.5)
    assert (mean[0, :, :6] - torch.from_numpy(acts[0][:, :6])).abs().mean() < 0.05
    for name in ("policy.safetensors", "policy.json", "policy_last.safetensors", "policy_loss.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(losses(tmp_path)) == 300


@pytest.mark.parametrize("head,options", [("lstm", lstm(8, 2)), ("rnn-gmm", {"hidden": 8, "seq_len": 3}),
                                          ("diffusion", {"down_dims": [8, 16], "horizon": 8, "action_steps": 4})])
def test_head_round_trip(tmp_path, head, options):
    """Every head saves and loads to the same weights and the same closed-loop actions."""
    cfg = PolicyConfig(head=head, head_options=options)
    torch.manual_seed(0)
    model = Policy(5, 7, cfg)
    model.fit_normalisation(torch.randn(50, 5) * 3 + 1)
    save_policy(model, tmp_path)
    meta = json.loads((tmp_path / "policy.json").read_text())
    assert meta["head"]["name"] == head and meta["head"]["options"] == {**meta["head"]["options"], **options}
    loaded = load_policy(tmp_path)
    state = loaded.state_dict()
    assert loaded.cfg.head == head and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    obs = torch.randn(9, 5)
    acted = []
    for policy in (model.eval(), loaded):
        policy.reset()
        acted.append(torch.cat([policy.act(obs[t:t + 1]) for t in range(len(obs))]))
    assert torch.equal(*acted) and acted[0].shape == (9, 7) and acted[0].abs().max() <= 1


def test_lstm_step_by_step_equals_the_whole_sequence():
    torch.manual_seed(0)
    model = Policy(5, 7, PolicyConfig(head_options=lstm(8, 2))).eval()
    obs = torch.randn(9, 5)
    model.reset()
    steps = torch.cat([model.act(obs[t:t + 1]) for t in range(9)])
    whole = model.head(model.normalise(obs)[None])[0][0].clamp(-1, 1)
    assert torch.allclose(steps, whole, atol=1e-6)


def test_resume_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr("dckp.policy.train.READ_EVERY", 3)  # losses read from the device at steps 3, 4, 7 and 8
    feats, acts = demos()
    cfg = PolicyConfig(head_options=lstm(seq_len=6), batch_size=2, steps=8, checkpoint_every=4)
    train_policy(feats, acts, cfg, tmp_path / "full", progress=False)
    train_policy(feats, acts, PolicyConfig(**{**cfg.__dict__, "steps": 4}), tmp_path / "cut", progress=False)
    with open(tmp_path / "cut" / "train_log.jsonl", "a") as log:  # steps logged after the checkpoint, then killed
        log.write('{"step": 4, "loss": 0.0}\n{"step": 5, "lo')
    torch.set_num_threads(2)  # the resumed stretch on another thread count: recorded as its own stretch
    try:
        result = train_policy(feats, acts, cfg, tmp_path / "cut", progress=False)
    finally:
        torch.set_num_threads(1)
    assert result["resumed_from"] == 4
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")  # too small a net for the sums to differ
    threads = {r: json.loads((tmp_path / r / "policy.json").read_text())["torch_threads"] for r in ("full", "cut")}
    assert threads == {"full": {"0": 1}, "cut": {"0": 1, "4": 2}}
    with pytest.raises(DckpError, match="another config"):
        train_policy(feats, acts, PolicyConfig(**{**cfg.__dict__, "lr": 1e-3}), tmp_path / "cut", progress=False)
    # features of the same size from another encoder (a DON trained again, say): not the training it continues
    with pytest.raises(DckpError, match=r"policy_last\.safetensors: checkpoint was trained on other data"):
        train_policy([f + 1 for f in feats], acts, cfg, tmp_path / "cut", progress=False)


def test_load_errors(tmp_path):
    with pytest.raises(DckpError, match="policy.json: file not found"):
        load_policy(tmp_path)
    save_policy(Policy(3, 7, PolicyConfig(head_options=lstm(4))), tmp_path)
    (tmp_path / "policy.safetensors").write_bytes(b"garbage")
    with pytest.raises(DckpError, match="policy.safetensors: not a readable safetensors file"):
        load_policy(tmp_path)
    (tmp_path / "policy.json").write_text("{")
    with pytest.raises(DckpError, match="policy.json: not a policy description"):
        load_policy(tmp_path)


def test_config_and_data_validation(tmp_path):
    with pytest.raises(DckpError, match="proprio"):
        PolicyConfig(proprio="images")
    with pytest.raises(DckpError, match="std_gripper"):
        PolicyConfig(head_options={"std_gripper": 0.0}).options()
    feats, acts = demos(n=2)
    with pytest.raises(DckpError, match=r"actions\[1\]"):
        train_policy(feats, [acts[0], acts[1][:, :6]], PolicyConfig(steps=1), tmp_path, progress=False)


def test_proprioception():
    T = 4
    obs = {"joint_pos": np.ones((T, 7)), "eef_pos": np.zeros((T, 3)), "gripper_qpos": np.full((T, 2), 0.02),
           "eef_quat": np.array([[-0.5, 0.5, 0.5, 0.5]] * T)}
    assert proprioception(obs, "joint_pos").shape == (T, 7)
    eef = proprioception(obs, "eef_pose")
    assert eef.shape == (T, 9) and eef.dtype == np.float32
    assert np.allclose(eef[0], [0, 0, 0, 0.5, -0.5, -0.5, -0.5, 0.02, 0.02])  # w < 0 flipped to w > 0


def test_encoder_registry(fake_encoder, capsys):
    from dckp.cli.main import main
    from dckp.encoders import Encoder, encoder_class, registry
    from dckp.pipeline import RunConfig

    with pytest.raises(DckpError, match="unknown encoder 'nope'"):
        encoder_class("nope")
    assert encoder_class("test_zeros") is fake_encoder
    assert {"blind", "cnn", "cnnd", "dckp-2d", "dckp-3d", "gt-kp", "resnet-ssm"} < set(registry())
    with pytest.raises(ValueError, match="already registered"):
        type("Again", (Encoder,), {"name": "test_zeros"})
    # registered, it is a choice of the CLI and of dckp run with nothing else edited
    assert main(["train-policy", "--help"]) == 0
    assert "test_zeros" in capsys.readouterr().out
    assert RunConfig(encoder="test_zeros", baselines=[]).encoders() == ["test_zeros"]
    frames = {f"{c}_rgb": torch.zeros(2, 4, 4, 3, dtype=torch.uint8) for c in ("b", "a")}
    enc = fake_encoder(["b", "a"], 4)
    assert enc.cameras == ["a", "b"] and enc(frames).shape == (2, enc.output_dim()) == (2, 6)


def test_an_interrupt_saves_the_step_and_the_rerun_resumes(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI turns into one) during training: the step finishes, policy_last is saved
    at it, and the same call resumes from there to the losses of an uninterrupted run."""
    import contextlib

    import dckp.policy.train as train
    from dckp.errors import Interrupted

    feats, acts = demos()
    cfg = PolicyConfig(head_options=lstm(), batch_size=2, steps=6, checkpoint_every=100)
    train_policy(feats, acts, cfg, tmp_path / "full", progress=False)

    class StopAtThird(list):  # as if Ctrl-C came during the third step
        checks = 0

        def __bool__(self):
            self.checks += 1
            return self.checks >= 3

    monkeypatch.setattr(train, "stop_after_step", lambda: contextlib.nullcontext(StopAtThird()))
    with pytest.raises(Interrupted, match="at step 3 of 6"):
        train_policy(feats, acts, cfg, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert train_policy(feats, acts, cfg, tmp_path / "cut", progress=False)["resumed_from"] == 3
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_a_training_over_its_budget_saves_measures_and_resumes(tmp_path, monkeypatch):
    """With a time budget, the first steps' rate projects the whole training: over the budget it saves its state
    and what it measured, and raises; a larger budget resumes it to the losses of an unbudgeted run."""
    from dckp.errors import OverBudget

    monkeypatch.setattr("dckp.policy.train.BUDGET_PROBE_STEPS", 3)
    feats, acts = demos()
    cfg = PolicyConfig(head_options=lstm(), batch_size=2, steps=6, checkpoint_every=100)
    train_policy(feats, acts, cfg, tmp_path / "full", progress=False)
    with pytest.raises(OverBudget, match=r"6 steps at .* s each, measured over steps 0\.\.3, would take .* h, over "
                                         r"the budget of 0\.00 h; saved .*policy_last\.safetensors at step 3"):
        train_policy(feats, acts, cfg, tmp_path / "cut", progress=False, budget_s=1e-9)
    measured = json.loads((tmp_path / "cut" / "estimate.json").read_text())
    assert measured["head"] == "lstm" and (measured["steps"], measured["at_step"]) == (6, 3)
    assert measured["s_per_step"] > 0 and not (tmp_path / "cut" / "policy.json").exists()
    result = train_policy(feats, acts, cfg, tmp_path / "cut", progress=False, budget_s=3600)  # within it
    assert result["resumed_from"] == 3 and losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert not (tmp_path / "cut" / "estimate.json").exists()  # finished: its own time counts now
