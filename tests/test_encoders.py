"""Reference selection, keypoint encoders and policy training through them, on a tiny simulated demo."""

import dataclasses
import functools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.don.train import load_don
from dckp.encoders import build_encoder
from dckp.errors import DckpError
from dckp.evaluation.validation import Validator
from dckp.keypoints.select import load_references, select_references
from dckp.learn import cached_features, train_on_demos
from dckp.policy.config import PolicyConfig
from dckp.policy.demos import frames_of
from dckp.policy.kept import kept_folder

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lift):
    demos, don = tiny_lift
    tmp = tmp_path_factory.mktemp("enc")
    (tmp / "don").symlink_to(don, target_is_directory=True)  # the shared untrained DON as this module's run folder
    refs = tmp / "refs.safetensors"
    summary = select_references(load_don(don).eval(), demos, refs, per_camera=8)
    return tmp, demos, refs, summary


def test_references_lie_on_the_object(setup):
    _, demos, refs_path, summary = setup
    refs, meta = load_references(refs_path)
    cam = "robot0_eye_in_hand"
    assert meta["task"] == "lift" and summary[cam]["references"] == 8
    with Dataset(demos) as ds:
        seg = ds.frame(ds.episodes[0], cam, 0)["seg"]
    u, v = refs[cam]["uv"].round().long().T
    assert (seg[v, u] == 1).mean() >= 0.75  # label-free masks from one view: mostly on the cube
    assert refs[cam]["descriptors"].shape == (8, 4)


def test_ground_truth_keypoints_follow_the_object(setup):
    _, demos, refs_path, _ = setup
    cam = "robot0_eye_in_hand"
    enc = build_encoder({"name": "gt-kp", "options": {"form": "camera"}, "artefacts": {"references": str(refs_path)}},
                        [cam], SIZE)
    refs, _ = load_references(refs_path)
    with Dataset(demos) as ds:
        ep = ds.episodes[0]
        T = len(ds.actions(ep))
        frames = frames_of(ds, ep, [cam], 0, T)
    uv, _ = enc.image_keypoints(frames)[cam]
    assert torch.allclose(uv[0], refs[cam]["uv"], atol=1e-3)  # the reference frame itself
    points = enc(frames).reshape(T, -1, 3)  # camera frame
    K = frames[f"{cam}_K"].float()
    checked = 0
    for t in range(T):  # where the keypoint is visible, the depth image sees the moved point within a pixel
        u, v = uv[t].round().long().T
        inside = (u >= 0) & (u < SIZE) & (v >= 0) & (v < SIZE)
        d = frames[f"{cam}_depth"][t][v.clamp(0, SIZE - 1), u.clamp(0, SIZE - 1)]
        z = points[t, :, 2]
        visible = inside & ((d - z).abs() < 0.004)
        pixel_size = z / K[t, 0, 0]
        seen_x = (u - K[t, 0, 2]) * d / K[t, 0, 0]
        err = (seen_x - points[t, :, 0]).abs()
        assert (err[visible] <= 1.0 * pixel_size[visible] + 1e-4).all()
        checked += int(visible.sum())
    assert checked > T  # the cube moves (lifted) and keypoints stay on it


def test_dckp_encoders_shapes_and_errors(setup):
    tmp, demos, refs_path, _ = setup
    cam = "robot0_eye_in_hand"
    with Dataset(demos) as ds:
        frames = frames_of(ds, ds.episodes[0], [cam], 0, 3)
    for name, per_kp in (("dckp-3d", 3), ("dckp-2d", 2)):
        enc = build_encoder({"name": name, "artefacts": {"don": str(tmp / "don"), "references": str(refs_path)}},
                            [cam], SIZE)
        f = enc(frames)
        assert f.shape == (3, 8 * per_kp) == (3, enc.output_dim())
        if name == "dckp-2d":
            assert f.abs().max() <= 1.0
    with pytest.raises(DckpError, match="unknown encoder"):
        build_encoder({"name": "nope"}, [cam], SIZE)
    with pytest.raises(DckpError, match="file not found"):
        build_encoder({"name": "gt-kp", "artefacts": {"references": str(tmp / "missing.safetensors")}}, [cam], SIZE)
    with pytest.raises(DckpError, match="no references for camera"):
        build_encoder({"name": "gt-kp", "artefacts": {"references": str(refs_path)}}, ["agentview"], SIZE)


def test_train_policy_cli_caches_encodings(setup, capsys):
    tmp, demos, refs_path, _ = setup
    out, refs = tmp / "policy", tmp / "policy_refs.safetensors"
    shutil.copy(refs_path, refs)
    args = ["train-policy", "--demos", str(demos), "--encoder", "gt-kp", "--references", str(refs),
            "--out", str(out), "--steps", "5", "--hidden", "16", "--threads", "1"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "lift" and run["cameras"] == ["robot0_eye_in_hand"] and run["encoder"]["name"] == "gt-kp"
    stamp = (out / "features.h5").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "features.h5").stat().st_mtime_ns == stamp  # reused, not re-encoded
    # references chosen again at the same path (other points): encoded again, and the policy trained on the old
    # features is not continued on the new ones
    tensors, meta = load_file(refs), safe_open(refs, "pt").metadata()
    save_file({k: v.flip(0) if k.endswith(".local") else v for k, v in tensors.items()}, refs, metadata=meta)
    before = cached_features(out / "features.h5")
    capsys.readouterr()
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out / 'policy_last.safetensors'}: checkpoint was trained on other data (the demonstrations or the "
        "encoder's features changed); delete it to train from the start")  # after the encoding's progress bar
    assert (out / "features.h5").stat().st_mtime_ns != stamp
    assert not all(np.array_equal(a, b) for a, b in zip(before, cached_features(out / "features.h5"), strict=True))
    (out / "policy_last.safetensors").unlink()
    assert main(args) == 0
    assert main(["train-policy", "--demos", str(demos), "--encoder", "dckp-3d", "--references", str(refs_path),
                 "--out", str(out)]) == 2  # no DON run given


def test_smoke_policy_to_evaluation_record(setup):
    tmp, demos, refs_path, _ = setup
    out = tmp / "policy_dckp"
    assert main(["train-policy", "--demos", str(demos), "--encoder", "dckp-3d", "--don", str(tmp / "don"),
                 "--references", str(refs_path), "--out", str(out), "--steps", "3", "--hidden", "16"]) == 0
    assert main(["evaluate", str(out), "--episodes", "1", "--workers", "1", "--videos", "1", "--max-steps", "3"]) == 0
    record = json.loads((out / "eval" / "eval.json").read_text())
    assert record["episodes"] == 1 and 0 <= record["success_rate"] <= 1 and record["per_episode"][0]["steps"] <= 3
    assert list((out / "eval").glob("rollout_*.mp4"))


def test_blind_policy_sees_proprioception_alone(setup):
    tmp, demos, _, _ = setup
    cam = "robot0_eye_in_hand"
    with Dataset(demos) as ds:
        frames = frames_of(ds, ds.episodes[0], [cam], 0, 3)
    enc = build_encoder({"name": "blind"}, [cam], SIZE)
    assert enc(frames).shape == (3, 0) == (3, enc.output_dim()) and not enc.needs_images()
    out = tmp / "policy_blind"
    assert main(["train-policy", "--demos", str(demos), "--encoder", "blind", "--out", str(out), "--steps", "3",
                 "--hidden", "16"]) == 0  # no references needed
    assert json.loads((out / "policy.json").read_text())["obs_dim"] == 9  # eef_pos 3 + eef_quat 4 + gripper 2
    assert main(["evaluate", str(out), "--episodes", "1", "--workers", "1", "--videos", "0", "--max-steps", "3"]) == 0


def test_observation_without_images_has_the_rendered_camera_geometry():
    import numpy as np

    from dckp.sim.env import SimEnv
    from dckp.sim.tasks import get_task

    env = SimEnv(get_task("lift"), SIZE)
    try:
        env.reset(0)
        full, geometry_only = env.observe(), env.observe(images=False)
    finally:
        env.close()
    for key in ("robot0_eye_in_hand_K", "robot0_eye_in_hand_pose", "object_pose", "eef_pos"):
        np.testing.assert_array_equal(geometry_only[key], full[key])
    assert geometry_only["robot0_eye_in_hand_depth"].shape == full["robot0_eye_in_hand_depth"].shape
    assert not geometry_only["robot0_eye_in_hand_rgb"].any()


def _frames_batch(demos, cameras, inputs, steps=4):
    import numpy as np

    from dckp.policy.demos import FrameWindows

    with FrameWindows(demos, cameras, inputs) as windows:
        return windows.batch(np.array([0, 1]), np.array([0, 2]), np.array([steps, steps - 1]), steps)


def test_cnn_trains_end_to_end_and_a_frozen_encoder_does_not(setup):
    import hashlib

    from dckp.encoders import encoder_class
    from dckp.learn import train_on_demos
    from dckp.policy import Policy, PolicyConfig

    tmp, demos, refs_path, _ = setup
    cam = "robot0_eye_in_hand"
    # one NLL step through the CNN: its first convolution receives gradients
    enc = encoder_class("cnn")([cam], SIZE)
    frames = _frames_batch(demos, [cam], enc.inputs)
    assert frames[f"{cam}_rgb"].shape == (8, SIZE, SIZE, 3) and f"{cam}_depth" not in frames  # rgb only: read lazily
    head = Policy(enc.output_dim(), 7, PolicyConfig(head_options={"hidden": 8, "layers": 1}))
    loss = head.loss({"obs": enc(frames).view(2, 4, -1), "action": torch.zeros(2, 4, 7),
                      "mask": torch.ones(2, 4, dtype=torch.bool)})
    loss.backward()
    first = enc.net[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    # trained with the policy, its weights change (the initial ones depend on the seed alone)
    cfg = PolicyConfig(head_options={"hidden": 16, "layers": 1}, steps=3, checkpoint_every=3, batch_size=2)
    train_on_demos(demos, {"name": "cnn"}, cfg, tmp / "policy_cnn", progress=False)
    torch.manual_seed(cfg.seed)
    initial = encoder_class("cnn")([cam], SIZE).net[0].weight.detach()
    from safetensors.torch import load_file

    saved = load_file(tmp / "policy_cnn" / "policy.safetensors")
    assert not torch.equal(saved["encoder.net.0.weight"], initial)
    # a frozen encoder (dckp-3d's DON) is left bit for bit as it was, and its weights are not in the policy
    don_file = tmp / "don" / "don.safetensors"
    digest = hashlib.sha256(don_file.read_bytes()).hexdigest()
    spec = {"name": "dckp-3d", "artefacts": {"don": str(tmp / "don"), "references": str(refs_path)}}
    train_on_demos(demos, spec, cfg, tmp / "policy_frozen", progress=False)
    assert hashlib.sha256(don_file.read_bytes()).hexdigest() == digest
    assert not any(k.startswith("encoder.") for k in load_file(tmp / "policy_frozen" / "policy.safetensors"))


def test_end_to_end_training_resumed_is_bit_identical(setup, tmp_path, monkeypatch):
    """A cnnd policy trained 4 steps straight, and 2 steps then resumed for 2 more (losses read from the device
    every 3 steps), gives the same log and the same weights, bit for bit."""
    from dckp.learn import train_on_demos
    from dckp.policy import PolicyConfig

    monkeypatch.setattr("dckp.policy.train.READ_EVERY", 3)
    _, demos, _, _ = setup
    cfg = PolicyConfig(head_options={"hidden": 8, "layers": 1}, steps=4, checkpoint_every=4, batch_size=2)
    train_on_demos(demos, {"name": "cnnd", "options": {"shift": 2}}, cfg, tmp_path / "straight", progress=False)
    cut = dataclasses.replace(cfg, steps=2, checkpoint_every=2)
    train_on_demos(demos, {"name": "cnnd", "options": {"shift": 2}}, cut, tmp_path / "resumed", progress=False)
    result = train_on_demos(demos, {"name": "cnnd", "options": {"shift": 2}}, cfg, tmp_path / "resumed",
                            progress=False)
    assert result["resumed_from"] == 2
    for name in ("train_log.jsonl", "policy.safetensors"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_compiled_encoder_trains_as_the_plain_one(setup, tmp_path):
    """--compile (here dynamo's `eager` backend: the graph capture, without inductor's code generation, minutes on
    this CPU) trains the end-to-end encoder to the same weights; the config records it."""
    from dckp.learn import train_on_demos
    from dckp.policy import PolicyConfig

    _, demos, _, _ = setup
    cfg = PolicyConfig(head_options={"hidden": 8, "layers": 1}, steps=2, checkpoint_every=2, batch_size=2)
    for name, backend in (("plain", ""), ("compiled", "eager")):
        train_on_demos(demos, {"name": "cnn"}, dataclasses.replace(cfg, compile=backend), tmp_path / name,
                       progress=False)
    assert (tmp_path / "plain" / "policy.safetensors").read_bytes() == \
        (tmp_path / "compiled" / "policy.safetensors").read_bytes()
    assert json.loads((tmp_path / "compiled" / "policy.json").read_text())["config"]["compile"] == "eager"
    from dckp.don import DonConfig

    for config in (PolicyConfig, DonConfig):
        with pytest.raises(DckpError, match="compile: must be one of"):
            config(compile="fast")


def test_end_to_end_policy_overfits_one_trajectory(setup, tmp_path):
    import math

    from dckp.data import DatasetWriter
    from dckp.learn import train_on_demos
    from dckp.policy import PolicyConfig
    from dckp.policy.heads.lstm import LSTMOptions, action_std

    _, demos, _, _ = setup
    one = tmp_path / "one.h5"  # the first demonstration alone, cut to 20 steps
    with Dataset(demos) as ds, DatasetWriter(one, "demos", ds.task, ds.objects, ds.config) as writer:
        ep = ds.episodes[0]
        obs = {k: ds.f[f"data/{ep}/obs/{k}"][:20] for k in ds.keys(ep)}
        writer.add_episode("demo_0", obs, ds.actions(ep)[:20])
    cfg = PolicyConfig(head_options={"hidden": 64, "layers": 1}, batch_size=1, steps=250, checkpoint_every=250,
                       lr=1e-3)
    result = train_on_demos(one, {"name": "cnn"}, cfg, tmp_path / "policy", progress=False)
    floor = action_std(LSTMOptions()).log().sum().item() + 3.5 * math.log(2 * math.pi)  # the NLL of a perfect fit
    assert result["loss_end"] - floor < (result["loss_start"] - floor) / 20, result


@pytest.mark.parametrize("head,options", [("lstm", {"hidden": 16, "layers": 1}),
                                          ("rnn-gmm", {"hidden": 16, "layers": 1, "seq_len": 3})])
def test_trainable_encoder_round_trip_gives_the_same_actions(setup, head, options):
    """An end-to-end encoder trains with the lstm and rnn-gmm heads, and the saved policy acts as the trained one."""
    import numpy as np

    from dckp.encoders import build_encoder
    from dckp.policy import PolicyConfig, VisuomotorPolicy, load_policy, load_visuomotor_policy, train_policy
    from dckp.policy.demos import FrameWindows
    from dckp.policy.model import proprioception

    tmp, demos, _, _ = setup
    cam = "robot0_eye_in_hand"
    out = tmp / f"policy_cnnd_{head}"
    spec = {"name": "cnnd", "options": {"shift": 2}}
    enc = build_encoder(spec, [cam], SIZE)
    with Dataset(demos) as ds:
        proprio = [proprioception({k: ds.array(ep, k) for k in ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")},
                                  "eef_pose") for ep in ds.episodes]
        actions = [ds.actions(ep) for ep in ds.episodes]
        observations = []
        for t in range(5):
            fr = ds.frame(ds.episodes[1], cam, t)
            observations.append({**{f"{cam}_{k}": fr[k] for k in ("rgb", "depth", "K", "pose")},
                                 **{k: ds.array(ds.episodes[1], k)[t] for k in
                                    ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")}})
    from dckp.policy.folder import write_run

    write_run(out, "lift", SIZE, [cam], spec, demos)
    with FrameWindows(demos, [cam], enc.inputs) as windows:
        train_policy(proprio, actions, PolicyConfig(head=head, head_options=options, steps=4, batch_size=2), out,
                     progress=False, encoder=enc, frames=windows)
    trained = VisuomotorPolicy(enc, load_policy(out)).eval()
    loaded = load_visuomotor_policy(out)
    assert loaded.encoder.opts.shift == 2 and not loaded.encoder.training
    a = np.stack([trained.act(o) for o in observations])
    b = np.stack([loaded.act(o) for o in observations])
    assert np.array_equal(a, b) and a.shape == (5, 7)
    assert main(["evaluate", str(out), "--episodes", "1", "--workers", "1", "--videos", "0", "--max-steps", "3"]) == 0


def _assembled(ds, cameras, inputs, index, first, n, length):
    """The windows as FrameWindows assembled them before the frame-index gather: each window read, padded with
    its last frame and concatenated, window by window."""
    from dckp.policy.demos import frames_of

    out = {}
    for i, f, k in zip(index, first, n, strict=True):
        window = frames_of(ds, ds.episodes[i], cameras, f, f + k, inputs)
        for key, v in window.items():
            out.setdefault(key, []).append(torch.cat([v, v[k - 1:].expand(length - k, *v.shape[1:])]))
    return {key: torch.cat(v) for key, v in out.items()}


def test_frame_windows_gather_the_windows_of_the_window_by_window_assembly(setup, monkeypatch):
    import numpy as np

    from dckp.policy import demos as demos_module
    from dckp.policy.demos import FrameWindows, frames_of

    _, demos, _, _ = setup
    cam = "robot0_eye_in_hand"
    index, first, n = np.array([1, 0, 1, 1]), np.array([3, 0, 1, 0]), np.array([4, 2, 4, 1])
    with Dataset(demos) as ds:
        expected = _assembled(ds, [cam], ("rgb", "depth"), index, first, n, 4)
        lengths = [len(ds.actions(ep)) for ep in ds.episodes]
    assert expected[f"{cam}_rgb"].dtype == torch.uint8 and len(expected[f"{cam}_rgb"]) == 16
    reads = []
    monkeypatch.setattr(demos_module, "frames_of", lambda ds, ep, cams, start, stop, inputs: reads.append(
        (ep, start, stop)) or frames_of(ds, ep, cams, start, stop, inputs))
    with FrameWindows(demos, [cam], ("rgb", "depth")) as probe:
        step_bytes = probe.step_bytes
    # everything stored: each demonstration decoded once, whole; nothing stored: every window read from the file,
    # at every batch; demo 0 alone stored (the prefix that fits): demo 1's windows read from the file
    whole = [("demo_0", 0, lengths[0]), ("demo_1", 0, lengths[1])]
    demo_1_windows = [("demo_1", 3, 7), ("demo_1", 1, 5), ("demo_1", 0, 1)]
    for budget, stored, expected_reads in (
            (None, [True, True], whole),
            (0, [False, False], 2 * [("demo_1", 3, 7), ("demo_0", 0, 2), ("demo_1", 1, 5), ("demo_1", 0, 1)]),
            (lengths[0] * step_bytes, [True, False], whole[:1] + 2 * demo_1_windows)):
        with FrameWindows(demos, [cam], ("rgb", "depth"), cache_bytes=budget) as windows:
            reads.clear()
            for _ in range(2):
                got = windows.batch(index, first, n, 4)
                assert got.keys() == expected.keys() == {f"{cam}_{k}" for k in ("rgb", "depth", "K", "pose")}
                assert all(torch.equal(got[k], expected[k]) for k in expected), budget
            assert windows.stored.tolist()[:2] == stored and reads == expected_reads, budget


def test_cnn_input_is_channels_last_with_the_numbers_of_channels_first():
    """The end-to-end CNNs read their input channels-last in memory (the CPU convolutions' fast layout; cnnd's
    depth channel used to make a channels-first copy), and compute the same numbers as from a channels-first copy,
    forward and backward (bit for bit on the development machine; to float rounding here, as the kernels may differ
    by CPU)."""
    import torch

    from dckp.encoders import build_encoder
    from dckp.encoders.cnn import DEPTH_RANGE

    gen = torch.Generator().manual_seed(0)
    frames = {"cam_rgb": torch.randint(0, 256, (6, 128, 128, 3), dtype=torch.uint8, generator=gen),
              "cam_depth": torch.rand(6, 128, 128, generator=gen) * 3}
    for name in ("cnn", "cnnd"):
        torch.manual_seed(0)
        enc = build_encoder({"name": name}, ["cam"], 128)
        x = enc.image(frames, "cam")
        assert x.shape == (6, 4 if name == "cnnd" else 3, 128, 128)
        reference = frames["cam_rgb"].float() / 255  # the plain formula, bit for bit
        if name == "cnnd":
            reference = torch.cat([reference, (frames["cam_depth"] / DEPTH_RANGE).clamp(0, 1)[..., None]], -1)
        assert torch.equal(x, reference.permute(0, 3, 1, 2))
        assert x.is_contiguous(memory_format=torch.channels_last)
        grads = []
        for inp in (x, x.contiguous()):
            enc.zero_grad()
            out = enc.net(inp)
            out.square().sum().backward()
            grads.append((out.detach(), [p.grad.clone() for p in enc.parameters()]))
        assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-7)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1], strict=True))


def _rollouts_by_step(folder: str, episodes: int, workers: int = 1) -> dict:
    """Validation stand-in (run in a spawned worker): the earlier training's step 4 is the best of all."""
    successes = {2: 1, 3: 1, 4: 3, 6: 2}[int(folder.rsplit("_", 1)[1])]
    return {"successes": successes, "episodes": episodes, "rate": successes / episodes}


def test_a_policy_trained_afresh_forgets_an_earlier_trainings_checkpoints(setup, monkeypatch):
    """A pipeline starts a policy over (its resumable state removed) when its encoder's inputs change: the earlier
    training's kept checkpoints and validation records must not be taken for the new one's."""
    tmp, demos, refs, _ = setup
    out = tmp / "afresh"
    monkeypatch.setattr("dckp.learn.Validator", functools.partial(Validator, run=_rollouts_by_step))
    spec = {"name": "gt-kp", "artefacts": {"references": str(refs)}}
    cfg = PolicyConfig(head_options={"hidden": 8, "layers": 1}, steps=6, batch_size=2, val_every=2, val_episodes=4)
    assert train_on_demos(demos, spec, cfg, out, progress=False)["best_step"] == 4
    (out / "policy_last.safetensors").unlink()
    result = train_on_demos(demos, spec, dataclasses.replace(cfg, val_every=3), out, progress=False)
    assert result["best_step"] == 6 and not kept_folder(out, 4).exists()
    assert [json.loads(line)["step"] for line in (out / "validation.jsonl").read_text().splitlines()] == [3, 6]
