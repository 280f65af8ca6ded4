"""Simulated tasks: camera geometry of stored frames, expert success, collection."""

import dataclasses
import os
import signal
import subprocess
import sys

import mujoco
import numpy as np
import pytest

from dckp.data import Dataset
from dckp.errors import DckpError
from dckp.sim.collect import collect_demos, collect_views
from dckp.sim.config import CollectConfig, ViewsConfig
from dckp.sim.env import SimEnv
from dckp.sim.rollout import TAPER, expert_episode
from dckp.sim.tasks import TASKS, get_task

SIZE = 64


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "stack_views.h5"
    cfg = ViewsConfig(task="stack", scenes=2, arm_only=1, image_size=SIZE, free_views=6, sweep_waypoints=2,
                      record_every=5)
    collect_views(cfg, str(path), progress=False)
    return path


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "lift.h5"
    collect_demos(CollectConfig(task="lift", demos=1, image_size=SIZE), str(path), progress=False)
    return path


def project(point, K, pose):
    p = np.linalg.inv(pose) @ np.r_[point, 1.0]
    return K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2], p[2]


def frames_with_poses(ds):
    """(frame, object poses) for every frame of every stream; objects are static within a views scene."""
    for ep in ds.episodes:
        poses_all = ds.array(ep, "object_pose")
        for stream in ds.streams(ep):
            for t in range(ds.num_frames(ep, stream)):
                poses = poses_all[min(t, len(poses_all) - 1)] if ds.kind == "demos" else poses_all[0]
                yield ep, stream, ds.frame(ep, stream, t), poses


@pytest.mark.parametrize("which", ["views", "demos"])
def test_object_centre_projects_into_its_mask(which, request):
    checked = {}
    with Dataset(request.getfixturevalue(which)) as ds:
        for _, stream, fr, poses in frames_with_poses(ds):
            for i, pose in enumerate(poses, start=1):
                u, v, z = project(pose[:3, 3], fr["K"], fr["pose"])
                ui, vi = int(round(u)), int(round(v))
                if z <= 0 or not (0 <= ui < SIZE and 0 <= vi < SIZE) or (fr["seg"] == i).sum() < 4:
                    continue
                if fr["seg"][vi, ui] == 255:  # the arm is in front of the centre
                    continue
                assert fr["seg"][vi, ui] == i, f"{stream}: object {i} centre lands on label {fr['seg'][vi, ui]}"
                checked[stream] = checked.get(stream, 0) + 1
    expected = {"views": {"free", "robot0_eye_in_hand", "agentview"}, "demos": {"robot0_eye_in_hand"}}[which]
    assert expected <= set(checked), f"no visible object checked in some stream: {checked}"


def test_depth_backprojects_onto_the_object(views):
    half = 0.025 + 0.003  # the larger cube's half size, plus depth and pixel tolerance
    n = 0
    with Dataset(views) as ds:
        for _, _, fr, poses in frames_with_poses(ds):
            v, u = np.nonzero((fr["seg"] >= 1) & (fr["seg"] <= len(poses)) & (fr["depth"] > 0))
            if len(u) == 0:
                continue
            z = fr["depth"][v, u]
            cam = np.stack([(u - fr["K"][0, 2]) * z / fr["K"][0, 0], (v - fr["K"][1, 2]) * z / fr["K"][1, 1], z])
            world = fr["pose"][:3, :3] @ cam + fr["pose"][:3, 3:4]
            labels = fr["seg"][v, u]
            for i, pose in enumerate(poses, start=1):
                local = (pose[:3, :3].T @ (world[:, labels == i] - pose[:3, 3:4]))
                assert np.abs(local).max(initial=0) < half, "a masked pixel's depth lies off its object"
            n += len(u)
    assert n > 500


def test_arm_only_sequences_have_no_objects(views):
    with Dataset(views) as ds:
        arm = [e for e in ds.episodes if e.startswith("arm_")]
        assert arm
        for stream in ds.streams(arm[0]):
            segs = [ds.frame(arm[0], stream, t)["seg"] for t in range(ds.num_frames(arm[0], stream))]
            assert not any(((s >= 1) & (s < 255)).any() for s in segs)
        assert any((ds.frame(arm[0], "agentview", t)["seg"] == 255).any()
                   for t in range(ds.num_frames(arm[0], "agentview")))


def test_the_approach_brings_the_wrist_camera_in_close_and_leaves_the_scene_still(tmp_path):
    cfg = ViewsConfig(task="lift", scenes=1, arm_only=1, image_size=SIZE, free_views=1, sweep_waypoints=1,
                      record_every=5)
    nearest, wrist_frames = {}, {}
    for approach in (False, True):
        path = tmp_path / f"approach_{approach}.h5"
        collect_views(dataclasses.replace(cfg, approach=approach), str(path), progress=False)
        with Dataset(path) as ds:
            cube = ds.array("scene_0", "object_pose")[:, 0, :3, 3]
            camera = ds.array("scene_0", "robot0_eye_in_hand_pose")[:, :3, 3]
            nearest[approach] = np.linalg.norm(camera - cube[0], axis=1).min()
            assert np.abs(cube - cube[0]).max() < 1e-3  # nothing touched: the fused masks hold for every frame
            wrist_frames[approach] = {ep: ds.num_frames(ep, "robot0_eye_in_hand") for ep in ds.episodes}
    # the sweep stays >= 10 cm above the cube; the expert's approach ends with the fingers around it, the wrist
    # camera about 10 cm from its centre, as in the demonstrations
    assert nearest[False] > 0.2 and nearest[True] < 0.15, nearest
    assert wrist_frames[True]["scene_0"] > wrist_frames[False]["scene_0"]
    assert wrist_frames[True]["arm_0"] == wrist_frames[False]["arm_0"]  # no object to approach


def test_demo_file_contents(demos):
    with Dataset(demos) as ds:
        ds.validate()
        assert ds.kind == "demos" and ds.task == "lift" and ds.objects == ["cube"]
        ep = ds.episodes[0]
        assert ds.episode_attrs(ep)["success"]
        T = len(ds.actions(ep))
        assert ds.array(ep, "joint_pos").shape == (T, 7)
        assert ds.array(ep, "object_pose").shape == (T, 1, 4, 4)
        assert np.abs(ds.actions(ep)).max() <= 1.0


def test_demos_in_two_processes_are_the_same_file(demos, tmp_path):
    """Two worker processes (4 episodes in flight, stopped after the first success) write the bytes of one."""
    path = tmp_path / "lift.h5"
    summary = collect_demos(CollectConfig(task="lift", demos=1, image_size=SIZE, workers=2), str(path),
                            progress=False)
    assert summary["demos"] == 1 and summary["seeds_tried"] == 1
    assert path.read_bytes() == demos.read_bytes()


def test_dart_noise_moves_the_arm_off_the_experts_path():
    """With `noise` the arm is pushed off the clean path (its hand positions differ), the same way for the same
    seed, and the task still succeeds; what is recorded is the expert's action, not the noisy one executed; a noise
    outside [0, 1] is refused."""
    env = SimEnv(get_task("lift"), image_size=0)
    executed, step = [], env.step
    try:
        clean = expert_episode(env, 0, record=True)
        env.step = lambda a: (executed.append(a), step(a))
        noisy = expert_episode(env, 0, record=True, noise=0.2)
        env.step = step
        again = expert_episode(env, 0, record=True, noise=0.2)
    finally:
        env.close()
    assert clean.success and noisy.success
    recorded, executed = np.stack(noisy.actions), np.stack(executed[-len(noisy.actions):])  # after reset's own steps
    assert np.abs(recorded[:, :3] - executed[:, :3]).mean() > 0.05  # the noisy command is executed, not recorded
    np.testing.assert_array_equal(recorded[:, 3:], executed[:, 3:])
    np.testing.assert_array_equal(np.stack(noisy.actions), np.stack(again.actions))
    hand = [np.stack([f["eef_pos"] for f in ep.frames[:20]]) for ep in (clean, noisy)]
    assert np.abs(hand[0] - hand[1]).max() > 0.005
    with pytest.raises(DckpError, match="noise"):
        CollectConfig(task="lift", noise=2.0)


def _noisy_lift_episode(noise: float, phases: str, probe):
    """A lift expert episode with DART `noise` in `phases`, and per recorded step the executed action and
    `probe(expert, env)` taken before it (the reset's settling steps, before the expert, are dropped)."""
    task = get_task("lift")
    experts = []

    def expert(env):
        experts.append(task.expert(env))
        return experts[-1]

    env = SimEnv(dataclasses.replace(task, expert=expert), image_size=0)
    executed, probed, step = [], [], env.step

    def record(a):
        executed.append(a)
        probed.append(probe(experts[-1], env) if experts else None)
        step(a)

    try:
        env.step = record
        ep = expert_episode(env, 0, record=True, noise=noise, noise_phases=phases)
    finally:
        env.close()
    n = len(ep.actions)
    return ep, experts[-1], np.stack(executed[-n:]), np.array(probed[-n:])


def test_dart_noise_in_motion_phases_leaves_the_precise_ones_alone():
    """`noise_phases="motion"`: while the expert closes in on, grasps, lowers or lets go of an object (its `precise`
    phases) the arm executes the expert's own action; in the other phases the noisy one; an unknown value is refused."""
    ep, _, executed, precise = _noisy_lift_episode(0.2, "motion", lambda expert, env: expert.precise)
    recorded = np.stack(ep.actions)
    assert ep.success and 10 < precise.sum() < len(recorded) - 10
    np.testing.assert_array_equal(recorded[precise], executed[precise])
    assert (np.abs(recorded[~precise, :3] - executed[~precise, :3]).max(1) > 1e-6).all()
    with pytest.raises(DckpError, match="noise_phases"):
        CollectConfig(task="lift", noise=0.2, noise_phases="some")


def test_tapered_dart_noise_fades_near_each_target():
    """`noise_phases="taper"`: the executed translation departs from the recorded one by noise whose std is the
    hand's distance to the phase's target over `TAPER` (at most 1): none near a target, full where the hand is far
    off; every phase with a target then reaches it, as without noise."""
    ep, expert, executed, far = _noisy_lift_episode(0.3, "taper", lambda expert, env: expert.to_goal(env))
    gap = np.abs(np.stack(ep.actions)[:, :3] - executed[:, :3]).max(1)
    assert ep.success and expert.short_of_target() == []
    std = 0.3 * np.minimum(1, far / TAPER)
    assert (gap <= 5 * std).all() and (far < TAPER / 10).sum() >= 10  # within 5 std; the hand is often near a target
    assert np.median(gap[far > TAPER]) > 0.15  # full noise far off (the median of the max of 3 |N(0, 0.3)|: ~0.3)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_expert_succeeds(name):
    env = SimEnv(get_task(name), image_size=0)
    try:
        results = [expert_episode(env, seed) for seed in range(3)]
    finally:
        env.close()
    assert sum(r.success for r in results) >= 2, [(r.success, r.steps) for r in results]


def test_pick_place_clutter_expert_reaches_every_target():
    """Each phase with a target ends by reaching it, not on its step limit (which, with the can's goal at the edge
    of the arm's reach, every carry, align and lower phase did: the hand then sat still until an unobservable
    moment to let go)."""
    env = SimEnv(get_task("pick_place_clutter"), image_size=0)
    try:
        for seed in range(3):
            env.reset(seed)
            expert = env.task.expert(env)
            while (action := expert.act(env)) is not None:
                env.step(action)
            short = expert.short_of_target()
            assert len(expert.ended) == len(expert.phases) and not short and env.success(), (seed, short)
    finally:
        env.close()


def test_same_seed_same_scene():
    env = SimEnv(get_task("stack"), image_size=0)
    try:
        env.reset(7)
        a = env.object_poses()
        env.reset(8)
        env.reset(7)
        np.testing.assert_allclose(env.object_poses(), a, atol=1e-9)
    finally:
        env.close()


def test_unknown_task_is_one_line_error():
    with pytest.raises(DckpError, match="unknown task 'nope'"):
        get_task("nope")


def test_making_an_environment_prints_no_robosuite_banners():
    code = "from dckp.sim.env import make_robosuite; make_robosuite('Lift')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "[robosuite" not in out.stdout + out.stderr, out.stdout + out.stderr


def _yaw(rot) -> float:
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_initial_states_stay_within_the_documented_ranges(name):
    """Over many seeds every sampled object's centre and yaw, after settling, lie in the task's documented
    ranges (relative to its sampler's reference point), and so does every other listed quantity."""
    from dckp.sim.env import _samplers

    task = get_task(name)
    env = SimEnv(task, image_size=0)
    samplers = {s.name: s for s in _samplers(env.env.placement_initializer)}
    seen = {key: [] for key in ("x", "y", "yaw")}
    try:
        for seed in range(25):
            env.reset(seed)
            for sampler_name, p in task.placement.items():
                sampler = samplers[sampler_name]
                for obj in sampler.mujoco_objects:
                    body = env.data.body(obj.root_body)
                    x, y = body.xpos[:2] - np.asarray(sampler.reference_pos)[:2]
                    yaw = _yaw(body.xmat.reshape(3, 3))
                    assert p.x[0] - 0.005 <= x <= p.x[1] + 0.005, (seed, obj.name, x, p.x)
                    assert p.y[0] - 0.005 <= y <= p.y[1] + 0.005, (seed, obj.name, y, p.y)
                    centre, half = (p.yaw[0] + p.yaw[1]) / 2, (p.yaw[1] - p.yaw[0]) / 2
                    assert abs(np.angle(np.exp(1j * (yaw - centre)))) <= half + 0.02, (seed, obj.name, yaw, p.yaw)
                    for key, value in zip(("x", "y", "yaw"), (x, y, yaw), strict=True):
                        seen[key].append(value)
            if "door_open_rad" in task.ranges:
                low, high = task.ranges["door_open_rad"]
                assert low - 0.01 <= env.data.qpos[env.env.hinge_qpos_addr] <= high + 0.01
    finally:
        env.close()
    p = next(iter(task.placement.values()))
    assert np.ptp(seen["x"]) > 0.5 * (p.x[1] - p.x[0])  # the range is used, not just respected
    assert np.ptp(seen["y"]) > 0.5 * (p.y[1] - p.y[0])


def test_torchvision_imports_after_rendering():
    """triton (which torchvision imports) segfaults when first imported after a GL context exists."""
    code = ("from dckp.sim.env import SimEnv; from dckp.sim.tasks import get_task; "
            "e = SimEnv(get_task('lift'), 32); e.reset(0); e.observe(); import torchvision")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]


def test_single_pass_rendering_gives_the_same_colour_and_depth():
    """Acting needs no segmentation: one colour pass then gives RGB and depth, identical to the two-pass render."""
    env = SimEnv(get_task("stack"), image_size=64)
    try:
        env.reset(3)
        for _ in range(5):
            env.step(np.r_[0.3, 0.2, -0.2, 0, 0, 0, 1.0])
        for cam in env.cameras:
            two, one = env.render(cam), env.render(cam, segmentation=False)
            assert "seg" in two and "seg" not in one
            assert np.array_equal(two["rgb"], one["rgb"]) and np.array_equal(two["depth"], one["depth"])
            assert (one["depth"] > 0).mean() > 0.5
        obs = env.observe(segmentation=False)
        assert not any(k.endswith("_seg") for k in obs) and all(f"{c}_depth" in obs for c in env.cameras)
    finally:
        env.close()


def test_ctrl_c_during_a_render_comes_after_it_as_an_interrupt(monkeypatch):
    """A signal that lands inside an EGL call (ctypes) would come out as a ctypes.ArgumentError, a traceback: the
    render finishes and the interrupt comes after it, for the CLI to save and print how to resume."""
    env = SimEnv(get_task("lift"), image_size=32)
    try:
        env.reset(0)
        mjr_render, finished = mujoco.mjr_render, []

        def interrupted_render(*args):
            signal.raise_signal(signal.SIGINT)  # as the user's Ctrl-C would, in the middle of the GL calls
            mjr_render(*args)
            finished.append(True)

        monkeypatch.setattr(mujoco, "mjr_render", interrupted_render)
        with pytest.raises(KeyboardInterrupt):
            env.render(env.cameras[0], segmentation=False)
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before is put back
    finally:
        env.close()


def test_geoms_outside_the_view_are_left_out_without_changing_a_pixel(monkeypatch):
    """Frustum culling: every camera (and a free one) renders the same RGB, depth and segmentation as with every
    geom drawn, over several arm poses, while leaving out geoms."""
    from dckp.sim.render import Cameras, free_camera

    env = SimEnv(get_task("stack"), image_size=SIZE)
    cull = Cameras._outside_frustum

    def none(self, eyes, data):
        return np.zeros(len(data.geom_xpos), bool)

    rng = np.random.default_rng(0)
    try:
        env.reset(2)
        for _ in range(3):
            for _ in range(4):
                env.step(np.r_[rng.uniform(-0.6, 0.6, 6), rng.choice([-1.0, 1.0])])
            for cam in [*env.cameras, free_camera([0, 0, 0.85], 0.5, rng.uniform(0, 360), -40)]:
                monkeypatch.setattr(Cameras, "_outside_frustum", cull)
                culled = env.render(cam)
                drawn_culled = env.renderer.renderer.scene.ngeom
                monkeypatch.setattr(Cameras, "_outside_frustum", none)
                full = env.render(cam)
                assert env.renderer.renderer.scene.ngeom > drawn_culled  # something was left out
                for key in ("rgb", "depth", "seg"):
                    assert np.array_equal(culled[key], full[key]), (cam, key)
    finally:
        env.close()


def test_rasterising_in_one_thread_gives_the_same_images(tmp_path):
    """dckp.sim sets LP_NUM_THREADS=0 (Mesa draws in the calling thread): the same pixels as with its threads."""
    code = ("import sys, numpy as np, dckp.sim; from dckp.sim.env import SimEnv; from dckp.sim.tasks import get_task\n"
            "e = SimEnv(get_task('stack'), 64); e.reset(4); o = e.observe()\n"
            "np.savez(sys.argv[1], **{k: v for k, v in o.items() if k.endswith(('_rgb', '_depth', '_seg'))})")
    for threads in ("0", "2"):
        env = {**os.environ, "LP_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{threads}.npz")], env=env, check=True)
    one, two = np.load(tmp_path / "0.npz"), np.load(tmp_path / "2.npz")
    assert sorted(one.files) == sorted(two.files) and len(one.files) == 6
    for key in one.files:
        assert np.array_equal(one[key], two[key]), key


@pytest.mark.parametrize("name", ["stack", "nut_assembly"])
def test_cameras_draw_the_visual_geoms_only(name):
    """Images show what a camera would see, as robosuite's cameras do: no pixel of a rendered segmentation comes
    from a collision geom (MuJoCo group 0), while the arm and every object show (their visual geoms). Drawing the
    collision group too, as the renderer once did, puts collision geoms in the same images."""
    from dckp.sim.render import COLLISION_GROUP, ROBOT_LABEL

    env = SimEnv(get_task(name), image_size=SIZE)
    try:
        env.reset(0)
        seen = {}
        for collision_drawn in (False, True):
            env.renderer.option.geomgroup[COLLISION_GROUP] = collision_drawn
            groups, labels = [], set()
            for cam in env.cameras:
                view = env.render(cam)
                ids = env.renderer.geom_ids(env.renderer.renderer.scene)
                groups += env.model.geom_group[ids[ids >= 0]].tolist()
                labels |= set(np.unique(view["seg"]).tolist())
            seen[collision_drawn] = groups
            assert {ROBOT_LABEL, *range(1, len(env.task.objects) + 1)} <= labels, (collision_drawn, labels)
        assert COLLISION_GROUP not in seen[False] and len(seen[False]) > 0
        assert COLLISION_GROUP in seen[True]
    finally:
        env.close()
