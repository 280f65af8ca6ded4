"""The keypoint particle filter (dckp-filter) and the confidence gate (dckp-gate): on a synthetic scene, and as
encoders of a tiny policy."""

import json

import numpy as np
import pytest
import torch

from dckp.cli.main import main
from dckp.data import Dataset
from dckp.don.train import load_don
from dckp.encoders import build_encoder
from dckp.errors import DckpError
from dckp.keypoints.filter import FilterConfig, ParticleFilter, log_likelihood, systematic_resample
from dckp.keypoints.select import select_references
from dckp.policy.demos import frames_of

S, F, HEIGHT, CENTRE = 48, 100.0, 0.5, 16  # image size, focal length (px), camera height (m), principal point
K = torch.tensor([[F, 0, CENTRE], [0, F, CENTRE], [0, 0, 1]])  # a pixel is 5 mm on the table
POSE = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, HEIGHT], [0, 0, 0, 1]])  # looking down at the table


def scene(t: int, occluded=range(5, 15)):
    """One camera above a table (depth 0.5 m) tracking the point under the image centre, with a look-alike 10 px
    (5 cm) to its right (descriptor distance 0.4 at best instead of 0.1). During `occluded` a plate 0.2 m below the
    camera hides a 9x9 px (4.5 cm) square around the point: its descriptors match nothing (distance 2) there."""
    v, u = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    r_true = ((u - CENTRE).square() + (v - CENTRE).square()).sqrt()
    r_twin = ((u - CENTRE - 10).square() + (v - CENTRE).square()).sqrt()
    dist = torch.minimum(0.1 + 0.5 * r_true, 0.4 + 0.5 * r_twin).clamp(max=2.0)
    depth = torch.full((S, S), HEIGHT)
    if t in occluded:
        plate = ((u - CENTRE).abs() <= 4.5) & ((v - CENTRE).abs() <= 4.5)
        dist, depth = dist.masked_fill(plate, 2.0), depth.masked_fill(plate, 0.3)
    return dist[None, None], depth[None], K[None], POSE[None]  # one camera, one keypoint


def raw_mode_world(dist, depth):
    index = int(dist[0, 0].flatten().argmin())
    v, u = divmod(index, S)
    z = float(depth[0, v, u])
    return torch.tensor([(u - CENTRE) / F * z, -(v - CENTRE) / F * z, HEIGHT - z])


def test_filter_holds_an_occluded_point_while_the_raw_mode_jumps():
    pf = ParticleFilter(FilterConfig(particles=256, filter_step=0.004))
    filtered, raw = [], []
    for t in range(25):
        frame = scene(t)
        mean, spread = pf.step(*frame)
        filtered.append(float(mean[0].norm()) * 1000)  # the true point is the world origin; mm
        raw.append(float(raw_mode_world(*frame[:2]).norm()) * 1000)
        assert spread.shape == (1,) and spread[0] > 0
    occluded = slice(5, 15)
    assert min(raw[occluded]) > 40  # the mode jumps onto the look-alike (or the plate), 5 cm away
    assert max(raw[:5] + raw[15:]) < 1
    assert max(filtered[occluded]) < 5, filtered  # the filter holds the point within a few millimetres
    assert max(filtered[15:]) < 5


def carried(t: int):
    """The point is picked up at step 4: from then on it slides 1 cm per step along x with the gripper (whose pose
    moves the same), seen until step 9, then under a plate covering its whole path (steps 9 to 15)."""
    x = 0.01 * max(0, t - 4)
    v, u = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    dist = (0.1 + 0.5 * ((u - CENTRE - x * F / HEIGHT).square() + (v - CENTRE).square()).sqrt()).clamp(max=2.0)
    depth = torch.full((S, S), HEIGHT)
    if 9 <= t < 16:
        plate = (u >= CENTRE - 6) & ((v - CENTRE).abs() <= 6)
        dist, depth = dist.masked_fill(plate, 2.0), depth.masked_fill(plate, 0.3)
    gripper = torch.eye(4)
    gripper[:3, 3] = torch.tensor([x, 0.0, 0.1])
    return (dist[None, None], depth[None], K[None], POSE[None]), gripper, torch.tensor([x, 0.0, 0.0])


def test_a_keypoint_seen_moving_with_the_gripper_follows_it_while_hidden():
    errors = {}
    for follow in (True, False):
        pf = ParticleFilter(FilterConfig(particles=256, filter_step=0.004))
        for t in range(16):
            frame, gripper, truth = carried(t)
            mean, _ = pf.step(*frame, gripper if follow else None)
        errors[follow] = float((mean[0] - truth).norm()) * 1000
    assert errors[True] < 8 and errors[False] > 40, errors  # without following, it stays where it was hidden
    assert pf.held is not None


def test_a_particle_behind_the_observed_surface_gets_the_uninformative_likelihood():
    dist, depth, k, pose = scene(0)
    dist = torch.zeros_like(dist)  # every pixel matches perfectly: only visibility decides
    depth = depth.clone()
    depth[0, 16, 16] = 0.0  # one invalid depth pixel
    z = torch.tensor([0.5, 0.8, 0.505, 0.5, -0.1])  # depth along the camera axis of each test point
    pixel = torch.tensor([[3.0, 3], [3, 3], [20, 20], [16, 16], [3, 3]])
    cam = torch.cat([(pixel - CENTRE) / F * z[:, None], z[:, None]], 1)
    world = (cam @ POSE[:3, :3].T + POSE[:3, 3])[:, None]  # (5 keypoints, 1 particle, 3)
    world = torch.cat([world, torch.tensor([[[5.0, 0.0, 0.0]]])])  # and one far outside the image
    ll = log_likelihood(world, dist.expand(1, 6, S, S), depth, k, pose, temperature=0.1, unseen=1.0, margin=0.01)
    unseen = -1.0 / 0.1
    assert ll[0, 0] == 0  # on the observed surface, perfect match
    assert ll[1, 0] == unseen  # 0.3 m behind the observed table: occluded
    assert float(ll[2, 0]) == pytest.approx(-0.5 * 0.5**2, rel=1e-4)  # 5 mm behind the surface: seen, 0.5 margin off
    assert ll[3, 0] == 0  # invalid depth: the descriptor alone
    assert ll[4, 0] == unseen and ll[5, 0] == unseen  # behind the camera, outside the image


def test_systematic_resampling_keeps_heavy_particles():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.0, 0.5]])
    index = systematic_resample(w, g)
    assert (index[0] == 1).all() and sorted(index[1].tolist()) == [0, 1, 2, 3]
    assert sorted(index[2].tolist()) == [0, 0, 3, 3]


def test_filter_is_deterministic_and_reset_starts_afresh():
    cfg = FilterConfig(particles=64, filter_seed=3)

    def run(pf, steps, occluded):
        return torch.stack([pf.step(*scene(t, occluded))[0] for t in steps])

    a, b = ParticleFilter(cfg), ParticleFilter(cfg)
    assert torch.equal(run(a, range(8), range(2, 6)), run(b, range(8), range(2, 6)))  # same seed, same output
    other = run(ParticleFilter(FilterConfig(particles=64, filter_seed=4)), range(8), range(2, 6))
    assert not torch.equal(other, run(ParticleFilter(cfg), range(8), range(2, 6)))
    a.reset()  # after an episode, a reset one gives what a fresh one does
    assert torch.equal(run(a, range(6), ()), run(ParticleFilter(cfg), range(6), ()))
    with pytest.raises(DckpError, match="particles"):
        FilterConfig(particles=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_filter_runs_on_cuda():
    pf = ParticleFilter(FilterConfig(particles=64))
    for t in range(8):
        mean, _ = pf.step(*(x.cuda() for x in scene(t, range(2, 6))))
    assert mean.device.type == "cuda" and float(mean[0].norm()) < 0.01


# --- the encoders on a tiny simulated demonstration ------------------------------------------------------------

SIZE = 64
CAM = "robot0_eye_in_hand"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lift):
    demos, don = tiny_lift
    tmp = tmp_path_factory.mktemp("filter")
    (tmp / "don").symlink_to(don, target_is_directory=True)  # the shared untrained DON as this module's run folder
    refs = tmp / "refs.safetensors"
    select_references(load_don(don).eval(), demos, refs, per_camera=4)
    with Dataset(demos) as ds:
        episodes = [frames_of(ds, ep, [CAM], 0, 6) for ep in ds.episodes]
    return tmp, demos, refs, episodes


def _encoder(setup, name, **options):
    tmp, _, refs, _ = setup
    return build_encoder({"name": name, "options": options,
                          "artefacts": {"don": str(tmp / "don"), "references": str(refs)}}, [CAM], SIZE)


def test_filter_encoder_episodes_are_independent_and_repeatable(setup):
    episodes = setup[3]
    enc = _encoder(setup, "dckp-filter", particles=16, spread=True)
    first = enc(episodes[0])
    assert first.shape == (6, 4 * 4) == (6, enc.output_dim()) and torch.isfinite(first).all()
    assert (first.view(6, 4, 4)[..., 3] >= 0).all()  # the spreads
    uv, confidence = enc.image_keypoints(episodes[0])[CAM]
    assert uv.shape == (6, 4, 2) and ((confidence > 0) & (confidence <= 1)).all()
    enc(episodes[1])
    enc.reset()
    assert torch.equal(enc(episodes[0]), first)  # the first episode again, from a reset: the same
    fresh = _encoder(setup, "dckp-filter", particles=16, spread=True)
    halves = torch.cat([fresh(frames) for frames in ({k: v[:3] for k, v in episodes[0].items()},
                                                     {k: v[3:] for k, v in episodes[0].items()})])
    assert torch.equal(halves, first)  # a batch is consecutive steps: in two batches, the same
    with pytest.raises(DckpError, match="forward step"):
        _encoder(setup, "dckp-filter").image_keypoints(episodes[0])


def test_gate_holds_unsure_keypoints_and_otherwise_is_dckp_3d(setup):
    frames = setup[3][0]
    dckp3d = _encoder(setup, "dckp-3d", form="world")(frames)
    assert torch.equal(_encoder(setup, "dckp-gate", form="world", gate_threshold=1e9)(frames), dckp3d)
    held = _encoder(setup, "dckp-gate", form="world", gate_threshold=1e-9)(frames)  # nothing is ever sure
    assert torch.equal(held, dckp3d[:1].expand(6, -1))  # the first frame's points, held
    with pytest.raises(DckpError, match="gate_threshold"):
        _encoder(setup, "dckp-gate", gate_threshold=0.0)


def test_filter_policy_trains_and_round_trips(setup):
    from dckp.policy import load_visuomotor_policy

    tmp, demos, refs, _ = setup
    out = tmp / "policy_filter"
    assert main(["train-policy", "--demos", str(demos), "--encoder", "dckp-filter", "--don", str(tmp / "don"),
                 "--references", str(refs), "--particles", "16", "--form", "world", "--out", str(out),
                 "--steps", "3", "--hidden", "16", "--threads", "1"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["encoder"]["options"]["particles"] == 16
    with Dataset(demos) as ds:
        ep = ds.episodes[1]
        observations = [{**{f"{CAM}_{k}": ds.frame(ep, CAM, t)[k] for k in ("rgb", "depth", "K", "pose")},
                         **{k: ds.array(ep, k)[t] for k in ("joint_pos", "eef_pos", "eef_quat", "gripper_qpos")}}
                        for t in range(4)]
    a, b = load_visuomotor_policy(out), load_visuomotor_policy(out)
    assert a.encoder.opts.particles == 16 and a.encoder.form == "world"
    first = np.stack([a.act(o) for o in observations])
    a.reset()
    assert np.array_equal(np.stack([a.act(o) for o in observations]), first)  # reset: a fresh episode
    assert np.array_equal(np.stack([b.act(o) for o in observations]), first)  # the saved folder: the same
    assert main(["evaluate", str(out), "--episodes", "1", "--workers", "1", "--videos", "1", "--max-steps", "3"]) == 0
    assert list((out / "eval").glob("rollout_*.mp4"))  # the filtered keypoints drawn in the video


def test_keypoint_video_frame_shows_raw_above_filtered_with_the_spread(setup):
    from dckp.pipeline import tracking_frame

    episodes = setup[3]
    enc = _encoder(setup, "dckp-filter", particles=16)
    frames = {k: v[:1] for k, v in episodes[0].items()}
    image = tracking_frame({f"{CAM}_rgb": frames[f"{CAM}_rgb"][0].numpy()}, [CAM], enc.step(frames))
    scale = round(256 / SIZE)
    assert image.shape == (2 * SIZE * scale + 6, SIZE * scale + 4, 3)  # two rows: raw DON keypoints, filtered
    white = (image == 255).all(-1)
    assert white[SIZE * scale + 4:-2, 2:-2].any()  # the spread rings, drawn on the filtered row only
