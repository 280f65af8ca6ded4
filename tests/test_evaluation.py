"""dckp.evaluation: the Wilson interval, success detection and early stopping, keypoint drawing, bad policy folders
and one end-to-end evaluation of an untrained policy on `lift` at 32 px (horizon capped at a few steps)."""

import json
from types import SimpleNamespace

import h5py
import imageio.v2 as iio2
import numpy as np
import pytest
import torch

from dckp.config import save_json
from dckp.errors import DckpError
from dckp.evaluation import evaluate_policy, summarise, wilson_interval
from dckp.evaluation.rollout import rollout
from dckp.policy import Policy, PolicyConfig, VisuomotorPolicy, load_run, save_policy
from dckp.sim.tasks import WRIST
from dckp.viz.images import colour_scale, draw_keypoints

F = 3
FAKE_ENCODER = "test_zeros"  # registered for a test by the conftest fixture fake_encoder


def _head(obs_dim=F + 9):
    torch.manual_seed(0)
    return Policy(obs_dim, 7, PolicyConfig(head_options={"hidden": 16, "layers": 1})).eval()


def _policy(encoder_cls, obs_dim=F + 9, cameras=("cam",)):
    return VisuomotorPolicy(encoder_cls(cameras, 8), _head(obs_dim)).eval()


def _policy_dir(tmp_path, task="lift", **run_overrides):
    d = tmp_path / "policy"
    d.mkdir()
    save_policy(_head(), d)
    run = {"task": task, "image_size": 32, "cameras": [WRIST],
           "encoder": {"name": FAKE_ENCODER, "options": {}, "artefacts": {}}}
    run.update(run_overrides)
    (d / "run.json").write_text(json.dumps(run))
    return d


class FakeEnv:
    """Just enough of SimEnv: succeeds after `succeed_after` steps (never if None)."""

    def __init__(self, horizon=50, succeed_after=None, size=8):
        self.task = SimpleNamespace(horizon=horizon)
        self.cameras = ("cam",)
        self.succeed_after, self.size = succeed_after, size
        self.steps, self.resets, self.actions = 0, [], []

    def reset(self, seed):
        self.resets.append(seed)
        self.steps = 0

    def step(self, action):
        assert action.shape == (7,) and np.all(np.abs(action) <= 1)
        self.actions.append(action)
        self.steps += 1

    def success(self):
        return self.succeed_after is not None and self.steps >= self.succeed_after

    def render(self, camera, segmentation=True):
        return {"rgb": np.full((self.size, self.size, 3), 200, np.uint8)}

    def observe(self, images=True, segmentation=True):
        s = self.size
        return {"joint_pos": np.zeros(7, np.float32), "eef_pos": np.zeros(3, np.float32),
                "eef_quat": np.array([1, 0, 0, 0], np.float32), "gripper_qpos": np.zeros(2, np.float32),
                "object_pose": np.eye(4, dtype=np.float32)[None], "cam_rgb": np.full((s, s, 3), 50, np.uint8),
                "cam_depth": np.ones((s, s), np.float32), "cam_K": np.eye(3), "cam_pose": np.eye(4)}


def test_act_refuses_a_bad_frame(fake_encoder):
    policy, obs = _policy(fake_encoder), FakeEnv().observe()
    assert policy.act(obs).shape == (7,)
    cases = [("cam_depth", np.full((8, 8), 1000, np.uint16), "cam_depth: depth is uint16"),
             ("cam_K", np.zeros((3, 3)), "cam_K: not camera intrinsics"),
             ("cam_pose", np.full((4, 4), np.nan), "cam_pose: pose contains NaN")]
    for key, value, message in cases:
        with pytest.raises(DckpError, match=message):
            policy.act({**obs, key: value})
    with pytest.raises(DckpError, match="cam_K: missing from the observation"):
        policy.act({k: v for k, v in obs.items() if k != "cam_K"})
    assert policy.act({**obs, "cam_depth": np.zeros((8, 8), np.float32)}).shape == (7,)  # a camera against an object


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.72246, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(13, 50)  # symmetric: k/n low = 1 - (n-k)/n high
    assert low == pytest.approx(1 - wilson_interval(37, 50)[1]) and low < 13 / 50 < high
    with pytest.raises(DckpError, match="successes"):
        wilson_interval(11, 10)


def test_rollout_detects_success_and_stops_early(fake_encoder):
    policy = _policy(fake_encoder)
    env = FakeEnv(horizon=50, succeed_after=3)
    r = rollout(env, policy, seed=7, record=True)
    assert r["success"] is True and r["steps"] == 3 and env.steps == 3 and env.resets == [7]
    assert policy.encoder.calls == 3  # one encode per control step
    assert len(r["frames"]) == 4  # before each action and after the last
    assert r["frames"][0].shape[0] >= 256 - 32  # upscaled for the video
    for key in ("time_encoder_s", "time_policy_s", "time_sim_s"):
        assert r[key] > 0

    r = rollout(FakeEnv(horizon=50, succeed_after=1), policy, seed=7, record=True, views=("third",))
    assert r["frames"][0].shape[1] > 2 * r["frames"][0].shape[0] - 8  # the camera, then the third-person view

    env = FakeEnv(horizon=6, succeed_after=None)
    r = rollout(env, policy, seed=1)
    assert r["success"] is False and r["steps"] == 6 and "frames" not in r
    r = rollout(FakeEnv(horizon=50), policy, seed=1, max_steps=2)
    assert r["steps"] == 2

    with pytest.raises(DckpError, match="policy expects"):
        rollout(FakeEnv(), _policy(fake_encoder, obs_dim=F + 7), seed=0)


def test_summarise_counts_successes():
    results = [{"seed": s, "success": ok, "steps": n, "time_encoder_s": 0.1, "time_policy_s": 0.2,
                "time_sim_s": 0.3} for s, ok, n in ((5, True, 10), (6, False, 30), (7, True, 20))]
    rep = summarise(results, "lift")
    assert rep["successes"] == 2 and rep["success_rate"] == pytest.approx(2 / 3)
    assert rep["mean_steps"] == 20 and rep["mean_steps_success"] == 15
    assert rep["ms_per_step"]["sim"] == pytest.approx(1000 * 0.9 / 60)
    assert rep["ci95"] == pytest.approx(list(wilson_interval(2, 3)))


def test_draw_keypoints_colours_by_confidence():
    img = np.zeros((8, 8, 3), np.uint8)
    out = draw_keypoints(img, np.array([[2.0, 2.0], [6.0, 6.0], [np.nan, 1.0]]), np.array([1.0, 0.0, 0.5]),
                         scale=4, radius=3)
    assert out.shape == (32, 32, 3) and img.max() == 0
    assert tuple(out[2 * 4 + 1, 2 * 4 + 1]) == (0, 255, 0)  # confident: green, at the upscaled pixel centre
    assert tuple(out[6 * 4 + 1, 6 * 4 + 1]) == (255, 0, 0)  # unsure: red


def test_colour_scale_is_the_peak_against_a_flat_heatmap():
    assert colour_scale(np.array([1 / 100, 0.1, 1.0, 0.0]), 100) == pytest.approx([0.0, 0.5, 1.0, 0.0])


def test_run_paths_are_relative_to_the_policy_folder(tmp_path, monkeypatch):
    (tmp_path / "refs.safetensors").write_bytes(b"x")
    d = _policy_dir(tmp_path, encoder={"name": FAKE_ENCODER, "artefacts": {"references": "../refs.safetensors"}},
                    demos="../demos.h5")
    monkeypatch.chdir(tmp_path / "policy")  # anywhere but the folder's parent
    run = load_run(d)
    assert run["encoder"]["artefacts"]["references"] == str(tmp_path / "refs.safetensors")
    assert run["demos"] == str(tmp_path / "demos.h5")
    (tmp_path / "refs.safetensors").unlink()
    with pytest.raises(DckpError, match=r"run\.json:encoder\.artefacts\.references: .* not found"):
        load_run(d)
    run = json.loads((d / "run.json").read_text())
    run["encoder"] = {"name": FAKE_ENCODER, "kwargs": {}}  # the format before encoders had options
    (d / "run.json").write_text(json.dumps(run))
    with pytest.raises(DckpError, match=r"run\.json:encoder\.kwargs: written by an older dckp"):
        load_run(d)


def test_bad_policy_folders(tmp_path, fake_encoder):
    with pytest.raises(DckpError, match="policy folder not found"):
        evaluate_policy(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DckpError, match=r"run\.json: file not found"):
        load_run(tmp_path / "empty")
    d = _policy_dir(tmp_path, task="fly")
    with pytest.raises(DckpError, match=r"run\.json:task: unknown task 'fly'"):
        evaluate_policy(d, progress=False)
    run = json.loads((d / "run.json").read_text())
    del run["cameras"]
    (d / "run.json").write_text(json.dumps(run))
    with pytest.raises(DckpError, match=r"run\.json:cameras: missing field"):
        load_run(d)
    run.update(cameras=[WRIST], task="lift")
    (d / "run.json").write_text(json.dumps(run))
    (d / "policy.json").unlink()
    with pytest.raises(DckpError, match=r"policy\.json: file not found") as e:
        evaluate_policy(d, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(DckpError, match="episodes"):
        evaluate_policy(d, episodes=0, progress=False)


def test_run_json_must_match_what_the_policy_was_trained_on(tmp_path, fake_encoder):
    """Its task and cameras are those of its demonstrations (a lift file filmed by the wrist camera alone)."""
    from test_bad_inputs import _demos

    _demos(tmp_path / "demos.h5")
    d = _policy_dir(tmp_path, demos="../demos.h5")
    assert load_run(d)["task"] == "lift"
    cases = [({"task": "stack"}, r"run\.json:task: names task 'stack', but the policy was trained on demonstrations "
                                 r"of 'lift' \(.*demos\.h5\): set it back, or evaluate on another task on purpose "
                                 r"with --task"),
             ({"cameras": [WRIST, "agentview"]}, r"run\.json:cameras: \['agentview'\] are not cameras of task lift"),
             ({"task": "stack", "cameras": [WRIST, "agentview"]}, r"run\.json:task: names task 'stack'")]
    for change, message in cases:
        run = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**run, **change}))
        with pytest.raises(DckpError, match=message):
            evaluate_policy(d, progress=False)
        (d / "run.json").write_text(json.dumps(run))
    with h5py.File(tmp_path / "demos.h5", "a") as f:
        f.attrs["task"] = "stack"  # a two-camera task's demonstrations, filmed by the wrist camera alone
    run = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**run, "task": "stack", "cameras": [WRIST, "agentview"]}))
    with pytest.raises(DckpError, match=r"run\.json:cameras: cameras \['agentview'\] are not in the demonstrations"):
        evaluate_policy(d, progress=False)


def test_another_task_on_purpose(tmp_path, fake_encoder):
    """`task` evaluates a lift policy on stack (which has its wrist camera); its episodes are kept apart from those
    on run.json's task."""
    from test_bad_inputs import _demos

    _demos(tmp_path / "demos.h5")
    d = _policy_dir(tmp_path, demos="../demos.h5")
    with pytest.raises(DckpError, match="task: unknown task 'fly'"):
        evaluate_policy(d, progress=False, task="fly")
    lift = evaluate_policy(d, episodes=1, workers=1, videos=0, progress=False, max_steps=2)
    stack = evaluate_policy(d, episodes=1, workers=1, videos=0, progress=False, max_steps=2, task="stack")
    assert (lift["task"], stack["task"]) == ("lift", "stack")
    assert json.loads((d / "eval" / "episodes.json").read_text())["task"] == "stack"
    assert evaluate_policy(d, episodes=1, workers=1, videos=0, progress=False, max_steps=2)["task"] == "lift"


def test_evaluate_policy_end_to_end(tmp_path, fake_encoder):
    d = _policy_dir(tmp_path)
    out = tmp_path / "eval"
    rep = evaluate_policy(d, episodes=2, seed_start=1_000_000, workers=1, videos=1, out_dir=out, progress=False,
                          max_steps=4)
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(rep))
    for key in ("task", "episodes", "successes", "success_rate", "ci95", "mean_steps", "mean_steps_success",
                "ms_per_step", "seeds", "per_episode"):
        assert key in saved
    assert saved["task"] == "lift" and saved["episodes"] == 2 and saved["seeds"] == [1_000_000, 1_000_001]
    assert 0 <= saved["success_rate"] <= 1 and 0 <= saved["ci95"][0] <= saved["ci95"][1] <= 1
    assert [e["seed"] for e in saved["per_episode"]] == saved["seeds"]
    assert all(1 <= e["steps"] <= 4 and (e["success"] or e["steps"] == 4) for e in saved["per_episode"])
    assert all(saved["ms_per_step"][k] > 0 for k in ("encoder", "policy", "sim"))
    video = out / "rollout_1000000.mp4"
    assert saved["videos"] == [video.name]
    assert video.exists() and not (out / "rollout_1000001.mp4").exists()
    frames = np.stack(iio2.mimread(video))
    steps0 = saved["per_episode"][0]["steps"]
    assert len(frames) == steps0 + 10 and frames.shape[-1] == 3  # steps + 10 held frames with the border
    assert frames.shape[1] >= 256 - 32


def test_evaluation_grows_and_shrinks(tmp_path, fake_encoder, monkeypatch):
    """2 episodes, then 4: only the 2 new seeds run, and the records are a 4-episode run's; then 2 again: the first
    2 seed records, none run; an eval.json written before episodes.json existed grows too."""
    import dckp.evaluation.rollout as rollout_module

    d = _policy_dir(tmp_path)
    ran = []
    run_episodes = rollout_module.run_episodes

    def counting(policy_dir, jobs, *args, **kwargs):
        ran.append([seed for seed, _ in jobs])
        return run_episodes(policy_dir, jobs, *args, **kwargs)

    def per_episode(rep):
        return [{k: e[k] for k in ("seed", "success", "steps", "actions_sha256")} for e in rep["per_episode"]]

    args = {"workers": 1, "videos": 0, "progress": False, "max_steps": 3}
    whole = evaluate_policy(d, episodes=4, out_dir=tmp_path / "whole", **args)
    monkeypatch.setattr(rollout_module, "run_episodes", counting)
    out = tmp_path / "grown"
    evaluate_policy(d, episodes=2, out_dir=out, **args)
    grown = evaluate_policy(d, episodes=4, out_dir=out, **args)
    assert ran == [[1_000_000, 1_000_001], [1_000_002, 1_000_003]]
    assert per_episode(grown) == per_episode(whole) and grown["seeds"] == whole["seeds"]
    assert (grown["successes"], grown["mean_steps"]) == (whole["successes"], whole["mean_steps"])
    shrunk = evaluate_policy(d, episodes=2, out_dir=out, **args)
    assert len(ran) == 2 and shrunk["episodes"] == 2 and per_episode(shrunk) == per_episode(whole)[:2]
    assert len(json.loads((out / "episodes.json").read_text())["episodes"]) == 4  # the other 2 are kept

    # an older record: eval.json alone, its episodes without timings of their own
    old = tmp_path / "old"
    old.mkdir()
    ev = json.loads((out / "eval.json").read_text())
    ev["per_episode"] = per_episode(ev)
    for key in ("device", "chunks"):
        ev.pop(key, None)
    (old / "eval.json").write_text(json.dumps(ev))
    regrown = evaluate_policy(d, episodes=4, out_dir=old, **args)
    assert ran[2:] == [[1_000_002, 1_000_003]] and per_episode(regrown) == per_episode(whole)
    # another policy's episodes are not taken
    torch.manual_seed(1)
    other = Policy(F + 9, 7, PolicyConfig(head_options={"hidden": 16, "layers": 1})).eval()
    save_policy(other, d)
    evaluate_policy(d, episodes=2, out_dir=out, **args)
    assert ran[3:] == [[1_000_000, 1_000_001]]


def test_stopped_evaluation_keeps_its_finished_episodes(tmp_path, fake_encoder, monkeypatch):
    """An evaluation stopped after its first episode (Ctrl-C, a killed table worker) keeps that episode's record: the
    next evaluation runs only the other seeds, gives what an uninterrupted one gives, counts the stopped episode's
    seconds as a chunk of one seed and folds the record into episodes.json."""
    import dckp.evaluation.rollout as rollout_module

    d = _policy_dir(tmp_path)
    args = {"episodes": 3, "workers": 1, "videos": 0, "progress": False, "max_steps": 3}
    whole = evaluate_policy(d, out_dir=tmp_path / "whole", **args)
    real, ran = rollout_module.rollout, []

    def stopping(env, policy, seed, **kwargs):
        ran.append(seed)
        if ran == [1_000_000, 1_000_001]:
            raise RuntimeError("stopped")  # as Ctrl-C or a killed worker would, after the first episode
        return real(env, policy, seed, **kwargs)

    monkeypatch.setattr(rollout_module, "rollout", stopping)
    out = tmp_path / "stopped"
    with pytest.raises(RuntimeError, match="stopped"):
        evaluate_policy(d, out_dir=out, **args)
    assert [p.name for p in out.glob("episode_*.json")] == ["episode_1000000.json"]
    assert not (out / "episodes.json").exists()
    again = evaluate_policy(d, out_dir=out, **args)
    assert ran == [1_000_000, 1_000_001, 1_000_001, 1_000_002]
    keys = ("seed", "success", "steps", "actions_sha256")
    assert [{k: e[k] for k in keys} for e in again["per_episode"]] == [
        {k: e[k] for k in keys} for e in whole["per_episode"]]
    assert not list(out.glob("episode_*.json"))
    chunks = json.loads((out / "episodes.json").read_text())["chunks"]
    assert [c["seeds"] for c in chunks] == [[1_000_000, 1_000_000]] and chunks[0]["seconds"] > 0
    # another policy's records are not taken, and are removed with the others
    save_json({"policy_sha256": "0" * 16, "horizon": 3, "device": "cpu", "node": "x", "seconds": 1.0,
               "episode": {"seed": 1_000_003, "success": True, "steps": 1, "actions_sha256": "made up"}},
              out / "episode_1000003.json")
    grown = evaluate_policy(d, out_dir=out, **{**args, "episodes": 4})
    assert ran[-1] == 1_000_003 and grown["per_episode"][-1]["actions_sha256"] != "made up"
    assert not list(out.glob("episode_*.json"))
