"""The policy heads' own behaviour: the registry, the GMM's likelihood, diffusion on a multimodal toy task, the
action-chunk queue, validation rollouts and the choice of the kept checkpoint, and bad head options."""

import json
import math
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dckp.cli.main import main
from dckp.errors import DckpError
from dckp.evaluation.validation import VAL_SEED_START, Validator, validate_folder
from dckp.policy import Policy, PolicyConfig, train_policy
from dckp.policy.heads.base import Head, head_class, registry, unregister
from dckp.policy.heads.rnn_gmm import gmm_nll
from dckp.policy.kept import best_step, kept_folder


def test_registry_lists_the_heads_and_a_new_one_registers_itself(capsys):
    from dataclasses import dataclass

    assert {"lstm", "rnn-gmm", "diffusion"} <= set(registry())
    with pytest.raises(DckpError, match="unknown head 'nope'"):
        head_class("nope")

    @dataclass
    class NoOptions:
        pass

    class Zero(Head):
        name = "test-zero"
        options = NoOptions

    try:
        assert head_class("test-zero") is Zero
        with pytest.raises(ValueError, match="already registered"):
            type("Again", (Head,), {"name": "test-zero", "options": NoOptions})
        assert main(["train-policy", "--help"]) == 0
        assert "test-zero" in capsys.readouterr().out  # a choice of --head with nothing else edited
    finally:
        unregister("test-zero")


def test_gmm_nll_matches_hand_computation():
    # two components in 1D: weights softmax([0, log 3]) = [1/4, 3/4], N(0, 1) and N(2, 0.5)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    means, stds = torch.tensor([[[0.0], [2.0]]]), torch.tensor([[[1.0], [0.5]]])
    a = 1.0

    def normal(x, mu, s):
        return math.exp(-((x - mu) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))

    expected = -math.log(0.25 * normal(a, 0, 1) + 0.75 * normal(a, 2, 0.5))
    assert gmm_nll(logits, means, stds, torch.tensor([[a]])).item() == pytest.approx(expected, rel=1e-6)


def test_rnn_gmm_loss_is_the_masked_mean_of_the_mixture_nll():
    torch.manual_seed(0)
    policy = Policy(4, 7, PolicyConfig(head="rnn-gmm", head_options={"hidden": 8, "modes": 3}))
    obs, act = torch.randn(2, 5, 4), torch.rand(2, 5, 7) * 2 - 1
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    logits, means, stds, _ = policy.head(policy.normalise(obs))
    per_step = gmm_nll(logits, means, stds, act)
    loss = policy.loss({"obs": obs, "action": act, "mask": mask})
    assert loss.item() == pytest.approx(per_step[mask].mean().item(), rel=1e-6)
    assert means.abs().max() < 1 and stds.min() >= 1e-4  # tanh-squashed means, std above min_std


def test_diffusion_head_learns_both_modes_of_a_bimodal_task(tmp_path):
    """Identical observations, and in half of the demonstrations the first action dimension is +0.8, in the other
    half -0.8: a head that predicts one action averages them to 0; diffusion samples both."""
    feats = [np.zeros((12, 1), np.float32) for _ in range(8)]
    acts = [np.zeros((12, 7), np.float32) for _ in range(8)]
    for i, a in enumerate(acts):
        a[:, 0] = 0.8 if i % 2 else -0.8
    cfg = PolicyConfig(head="diffusion", head_options={"down_dims": [16, 32], "horizon": 8, "action_steps": 4},
                       steps=250, batch_size=32, lr=3e-3, weight_decay=0.0, checkpoint_every=250)
    train_policy(feats, acts, cfg, tmp_path, progress=False)
    from dckp.policy import load_policy

    head = load_policy(tmp_path).head
    head.generator.manual_seed(1)
    executed = head.plan(torch.zeros(200, 2))[:, 1, 0]  # 200 plans' first executed action (obs_horizon 2), dim 0
    near = {mode: ((executed - mode).abs() < 0.25).float().mean().item() for mode in (-0.8, 0.8)}
    assert min(near.values()) > 0.3 and sum(near.values()) > 0.75, near  # both modes, few samples between


def test_diffusion_planning_through_the_frozen_network_gives_the_eager_numbers():
    """Planning runs the EMA network as frozen TorchScript; its plans equal, bit for bit, those of the module itself,
    and a change of the weights (a training step, a load) is planned with the new weights."""
    torch.manual_seed(0)
    head = Policy(3, 7, PolicyConfig(head="diffusion", head_options={"down_dims": [8, 16], "horizon": 8,
                                                                     "action_steps": 4})).head.eval()

    def eager(cond):
        x = torch.randn((len(cond), 7, 8), generator=head.generator)
        for t in head.sample_schedule.timesteps:
            x = head.sample_schedule.step(head.ema(x, torch.full((len(cond),), int(t)), cond), t, x).prev_sample
        return (x.transpose(1, 2).clamp(-1, 1) + 1) / 2 * (head.action_high - head.action_low) + head.action_low

    cond = torch.randn(3, 6)
    for change in (None, "step", "load"):
        if change == "step":
            torch.nn.init.normal_(head.net.final[1].weight)
            head.after_step()
        if change == "load":
            state = {k: v + 0.01 if k.startswith("ema.") else v for k, v in head.state_dict().items()}
            head.load_state_dict(state)
        head.generator.manual_seed(5)
        with torch.no_grad():
            planned = head.plan(cond)
            head.generator.manual_seed(5)
            assert torch.equal(planned, eager(cond)), change
    assert list(head.frozen) == [(3, torch.device("cpu"))]


def test_action_chunk_queue_empties_then_plans_again():
    torch.manual_seed(0)
    policy = Policy(3, 7, PolicyConfig(head="diffusion", head_options={"down_dims": [8, 16], "horizon": 8,
                                                                       "action_steps": 3})).eval()
    head, plans = policy.head, []
    original = head.plan
    head.plan = lambda cond: plans.append(cond.clone()) or original(cond)
    policy.reset()
    obs = torch.arange(21.0).view(7, 3)
    for t in range(7):
        policy.act(obs[t:t + 1])
        assert len(head.queue) == 2 - t % 3  # 3 actions per plan: popped one per step
    assert len(plans) == 3  # at steps 0, 3 and 6
    # each plan is conditioned on the last two observations (the first repeated at the episode's start)
    normal = policy.normalise(obs)
    assert torch.equal(plans[0], torch.cat([normal[0:1], normal[0:1]], -1))
    assert torch.equal(plans[1], torch.cat([normal[2:3], normal[3:4]], -1))
    policy.reset()
    assert head.queue == [] and head.history == []


def _fake_rollouts(folder: str, episodes: int, workers: int = 1) -> dict:
    """Validation stand-in (run in a spawned worker): step 4 is the best checkpoint."""
    step = int(folder.rsplit("_", 1)[1])
    successes = {2: 1, 4: 3, 6: 2}[step]
    return {"successes": successes, "episodes": episodes, "rate": successes / episodes}


def test_the_kept_policy_is_the_best_on_validation(tmp_path):
    feats, acts = [np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)], [np.zeros((10, 7), np.float32)]
    cfg = PolicyConfig(head_options={"hidden": 8, "layers": 1}, steps=6, batch_size=2, val_every=2, val_episodes=4)
    with pytest.raises(DckpError, match="val_every"):
        train_policy(feats, acts, cfg, tmp_path, progress=False)
    prepared = []
    validator = Validator(tmp_path, cfg.val_episodes, 1, prepared.append, run=_fake_rollouts)
    result = train_policy(feats, acts, cfg, tmp_path, progress=False, validator=validator)
    assert result["best_step"] == 4 and prepared == [kept_folder(tmp_path, s) for s in (2, 4, 6)]
    records = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [(r["step"], r["successes"]) for r in records] == [(2, 1), (4, 3), (6, 2)]
    kept, best = load_file(tmp_path / "policy.safetensors"), load_file(kept_folder(tmp_path, 4) / "policy.safetensors")
    assert kept.keys() == best.keys() and all(torch.equal(kept[k], best[k]) for k in kept)
    assert not torch.equal(kept["head.out.weight"], load_file(kept_folder(tmp_path, 6) / "policy.safetensors")
                           ["head.out.weight"])
    assert json.loads((tmp_path / "policy.json").read_text())["best_step"] == 4
    # a kept checkpoint without a record (the run was killed before its rollouts ended) is rolled out again
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    again = Validator(tmp_path, cfg.val_episodes, 1, prepared.append, run=_fake_rollouts)
    assert list(again.pending) == [6] and best_step(again.close()) == 4


def _rollouts_by_workers(folder: str, episodes: int, workers: int = 1) -> dict:
    """Validation stand-in: in the pool's one process it is still rolling out when the training ends."""
    if workers == 1:
        time.sleep(600)
    return {"successes": workers, "episodes": episodes, "rate": workers / episodes}


def test_rollouts_left_when_the_training_ends_take_its_processes(tmp_path):
    folder = kept_folder(tmp_path, 2)
    folder.mkdir(parents=True)
    validator = Validator(tmp_path, 4, 1, lambda f: None, run=_rollouts_by_workers)
    validator.submit(2, folder)
    assert validator.close(workers=2) == {2: {"step": 2, "successes": 2, "episodes": 4, "rate": 0.5}}
    assert [json.loads(line)["successes"] for line in (tmp_path / "validation.jsonl").read_text().splitlines()] == [2]


def test_validation_rollouts_use_the_validation_seeds_only(monkeypatch, tmp_path):
    from dckp.evaluation import rollout

    assert VAL_SEED_START >= rollout.EVAL_SEED_START + 1_000_000  # the ranges never meet
    calls = []

    def fake_evaluate(folder, episodes, seed_start, **kwargs):
        calls.append(range(seed_start, seed_start + episodes))
        return {"success_rate": 0.5, "episodes": episodes}

    monkeypatch.setattr("dckp.evaluation.rollout.evaluate_policy", fake_evaluate)
    assert validate_folder(str(tmp_path), 6) == {"successes": 3, "episodes": 6, "rate": 0.5}
    assert calls == [range(VAL_SEED_START, VAL_SEED_START + 6)]
    validate_folder(str(tmp_path), 2, seed_start=VAL_SEED_START + 10_000)  # another block of validation seeds
    assert calls[-1] == range(VAL_SEED_START + 10_000, VAL_SEED_START + 10_002)
    with pytest.raises(ValueError, match="validation seeds start at"):
        validate_folder(str(tmp_path), 2, seed_start=rollout.EVAL_SEED_START)


def test_validation_rolls_out_in_worker_processes(tiny_lift, tmp_path):
    """train_on_demos with val_every: real rollouts of each kept checkpoint in a spawned worker, seeds 2,000,000 on."""
    from dckp.learn import train_on_demos

    demos, _ = tiny_lift
    cfg = PolicyConfig(head="rnn-gmm", head_options={"hidden": 8, "seq_len": 3}, steps=4, batch_size=2,
                       val_every=2, val_episodes=1)
    result = train_on_demos(demos, {"name": "blind"}, cfg, tmp_path, progress=False)
    assert result["best_step"] in (2, 4)
    for step in (2, 4):
        records = json.loads((kept_folder(tmp_path, step) / "validation" / "episodes.json").read_text())
        assert [e["seed"] for e in records["episodes"]] == [VAL_SEED_START]
    assert (tmp_path / "checkpoints" / "step_0000002" / "run.json").exists()


@pytest.mark.parametrize("flags,message", [
    (["--head", "nope"], "--head"),
    (["--head", "rnn-gmm", "--modes", "0"], "modes"),
    (["--head", "lstm", "--modes", "3"], "--modes: is an option of the rnn-gmm head, not of lstm"),
    (["--head", "diffusion", "--horizon", "10"], "horizon"),
    (["--head", "diffusion", "--action-steps", "20"], "action_steps"),
])
def test_bad_head_options_give_one_line(tiny_lift, tmp_path, capsys, flags, message):
    demos, _ = tiny_lift
    rc = main(["train-policy", "--demos", str(demos), "--encoder", "blind", "--out", str(tmp_path / "p"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_gt_kp_from_the_command_line_without_a_don(tiny_lift, tmp_path, capsys):
    """`dckp keypoints` without --don writes references for gt-kp, which trains a policy (rnn-gmm) from the CLI."""
    from dckp.keypoints.select import load_references

    demos, _ = tiny_lift
    refs = tmp_path / "refs.safetensors"
    assert main(["keypoints", "--demos", str(demos), "--out", str(refs), "--per-camera", "4"]) == 0
    tensors, _ = load_references(refs)
    assert not any(k.endswith(".descriptors") for k in tensors)  # no DON: pixels and object points alone
    out = tmp_path / "policy"
    assert main(["train-policy", "--demos", str(demos), "--encoder", "gt-kp", "--references", str(refs),
                 "--head", "rnn-gmm", "--hidden", "8", "--steps", "2", "--out", str(out)]) == 0
    meta = json.loads((out / "policy.json").read_text())
    assert meta["head"] == {"name": "rnn-gmm", "options": {**meta["head"]["options"], "hidden": 8, "seq_len": 10}}
    capsys.readouterr()
    assert main(["train-policy", "--demos", str(demos), "--encoder", "dckp-3d", "--references", str(refs),
                 "--out", str(tmp_path / "p3d")]) == 2
    assert "--don" in capsys.readouterr().err
