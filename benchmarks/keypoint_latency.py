"""Latency of one control step of each encoder for 2 cameras at 128 px, plus the policy head. Writes
results/keypoint_latency.{json,md}.

    python benchmarks/keypoint_latency.py --threads 2

One step = the encoder (for dckp-3d: both camera images through the DON, descriptor distances, softmax mode,
depth lookup; dckp-gate adds the hold, dckp-filter its particle filter with the default particle count
over all 2 x 16 keypoints in both cameras, stepped frame after frame; for the end-to-end encoders their network
in eval mode) plus the policy head (`Policy.act`; the `cpu` preset's lstm for every encoder),
on one frame, after warm-up; median and p95 over `--steps` steps. `heads.<head>`: dckp-3d's control step with each
head (`--heads`, with the presets' options: lstm `cpu`, rnn-gmm `converged`, diffusion its defaults); the
diffusion head plans every 8 steps (10 DDIM passes; with `--sample-steps K ...` also `heads.diffusion-ddim<K>`)
and pops a planned action in between, so its p95 and `max` are the planning steps'. The weights do not change the
cost, so the networks are randomly initialised with the `cpu` presets. Also the throughput of batched encoding
(frames/s), as when encoding demonstrations. The top-level keys are dckp-3d's; `encoders` holds every encoder's.

`tracker.<device>_<cameras>cam_<px>`: one `dckp.KeypointTracker.track` call on numpy frames (as from a camera) of 1
or 2 cameras at `--tracker-sizes` px, DON keypoints in the depth form back on the CPU: median and p95 ms per call,
on the CPU and on a GPU when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.don.checkpoint import save_checkpoint
from dckp.don.config import DON_PRESETS
from dckp.don.model import DenseObjectNet
from dckp.encoders import build_encoder
from dckp.policy.config import POLICY_PRESETS
from dckp.policy.model import Policy

ENCODERS = ("dckp-3d", "dckp-gate", "dckp-filter", "gt-kp", "blind", "cnn", "cnnd", "resnet-ssm")

CAMERAS = ("agentview", "robot0_eye_in_hand")


def fake_frames(batch: int, size: int, rng) -> dict[str, torch.Tensor]:
    frames = {}
    K = torch.tensor([[size, 0, (size - 1) / 2], [0, size, (size - 1) / 2], [0, 0, 1]], dtype=torch.float32)
    for cam in CAMERAS:
        frames[f"{cam}_rgb"] = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
        frames[f"{cam}_depth"] = torch.from_numpy(rng.uniform(0.3, 1.5, (batch, size, size)).astype(np.float32))
        frames[f"{cam}_K"] = K.expand(batch, 3, 3)
        frames[f"{cam}_pose"] = torch.eye(4).expand(batch, 4, 4)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--keypoints", type=int, default=16, help="per camera")
    parser.add_argument("--encoders", nargs="*", default=list(ENCODERS), help="default: %(default)s")
    parser.add_argument("--heads", nargs="*", default=["lstm", "rnn-gmm", "diffusion"],
                        help="heads timed with dckp-3d (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, nargs="*", default=[], help="also the diffusion head planning in "
                        "these DDIM steps (rows `diffusion-ddim<K>`)")
    parser.add_argument("--tracker-sizes", nargs="*", type=int, default=[128, 256],
                        help="image sizes (px) at which KeypointTracker is timed; none: skip it (default: %(default)s)")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DON_PRESETS["cpu"]
    per, heads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_checkpoint(Path(tmp) / "don" / "don.safetensors", DenseObjectNet(cfg), cfg, 0)
        from safetensors.torch import save

        refs = {}
        for cam in CAMERAS:
            refs[f"{cam}.descriptors"] = torch.randn(args.keypoints, cfg.descriptor_dim)
            refs[f"{cam}.uv"] = torch.zeros(args.keypoints, 2)
            refs[f"{cam}.object"] = torch.zeros(args.keypoints, dtype=torch.int64)
            refs[f"{cam}.local"] = torch.zeros(args.keypoints, 3)
        (Path(tmp) / "refs.safetensors").write_bytes(save(refs, metadata={"dckp": "{}"}))
        artefacts = {"don": str(Path(tmp) / "don"), "references": str(Path(tmp) / "refs.safetensors")}
        for name in args.encoders:
            from dckp.encoders import encoder_class

            cls = encoder_class(name)
            spec = {"name": name, "artefacts": {a: artefacts[a] for a in cls.artefacts}}
            encoder = build_encoder(spec, CAMERAS, cfg.image_size).eval()
            per[name] = step_latency(encoder, cfg.image_size, args.steps)
            print(name, per[name], flush=True)
            if name == "dckp-3d":
                for head in [*args.heads, *(f"diffusion-ddim{k}" for k in args.sample_steps)]:
                    heads[head] = step_latency(encoder, cfg.image_size, args.steps, head)
                    print(name, head, heads[head], flush=True)
        tracker = {}
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            for size in args.tracker_sizes:
                for n in (1, 2):
                    key = f"{device}_{n}cam_{size}"
                    tracker[key] = tracker_latency(artefacts, device, CAMERAS[:n], size, args.steps)
                    print("tracker", key, tracker[key], flush=True)

    main_row = per.get("dckp-3d", next(iter(per.values()), {}))
    results = {"machine": f"{platform.machine()}, CPU, {args.threads} torch threads", "cameras": list(CAMERAS),
               "image_size": cfg.image_size, "backbone": cfg.backbone, "keypoints_per_camera": args.keypoints,
               **main_row, "encoders": per, "heads": heads, "tracker": tracker}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    out = Path(args.out)
    save_json(results, out / "keypoint_latency.json")
    backbone = cfg.backbone + (" without layer4" if cfg.layers == 3 else "")
    lines = ["# Control-step latency by encoder", "",
             f"{results['machine']}; 2 cameras at {cfg.image_size} px; dckp-3d: DON {backbone}, {args.keypoints} "
             f"keypoints per camera; the LSTM policy head. "
             f"`python benchmarks/keypoint_latency.py --threads {args.threads}`.", "",
             "| encoder | control step median ms | p95 ms | encoder median ms | policy median ms | "
             "batched encoding frames/s |", "|---|---|---|---|---|---|"]
    for name, r in per.items():
        lines.append(f"| {name} | {r['control_step_ms']['median']:.1f} | {r['control_step_ms']['p95']:.1f} | "
                     f"{r['encoder_ms']['median']:.1f} | {r['policy_ms']['median']:.2f} | "
                     f"{r['batched_encoding_frames_per_s']:.0f} |")
    lines += ["", "Batched encoding: 32 frames of 2 cameras in one call. Real time at 20 Hz needs at most 50 ms per "
              "control step."]
    if heads:
        lines += ["", "## Policy heads", "", "dckp-3d on 2 cameras with each head; the diffusion head samples a plan "
                  "(10 DDIM passes; `diffusion-ddim<K>`: K) every 8 steps, so its p95 and max are its planning steps.",
                  "",
                  "| head | control step median ms | p95 ms | max ms | head median ms | head max ms |",
                  "|---|---|---|---|---|---|"]
        for head, r in heads.items():
            lines.append(f"| {head} | {r['control_step_ms']['median']:.1f} | {r['control_step_ms']['p95']:.1f} | "
                         f"{r['control_step_ms']['max']:.1f} | {r['policy_ms']['median']:.2f} | "
                         f"{r['policy_ms']['max']:.1f} |")
    if tracker:
        lines += ["", "## KeypointTracker", "", f"One `track` call on numpy frames of every camera, {args.keypoints} "
                  "keypoints per camera in the depth form, back on the CPU" + (f"; GPU: {results['gpu']}" if
                                                                               "gpu" in results else "") + ".", "",
                  "| device | cameras | px | median ms | p95 ms |", "|---|---|---|---|---|"]
        for key, r in tracker.items():
            device, cams, size = key.split("_")
            lines.append(f"| {device} | {cams[:-3]} | {size} | {r['median']:.1f} | {r['p95']:.1f} |")
    atomic_write_bytes(out / "keypoint_latency.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


def head_config(head: str):
    """The policy config a head is timed with: lstm the cpu preset's, rnn-gmm the converged preset's, others their
    options' defaults; `diffusion-ddim<K>` the diffusion head planning in K DDIM steps."""
    if head.startswith("diffusion-ddim"):
        return dataclasses.replace(POLICY_PRESETS["converged"], head="diffusion",
                                   head_options={"sample_steps": int(head.removeprefix("diffusion-ddim"))})
    for name in ("cpu", "converged"):
        if POLICY_PRESETS[name].head == head:
            return POLICY_PRESETS[name]
    return dataclasses.replace(POLICY_PRESETS["converged"], head=head, head_options={})


def step_latency(encoder, size: int, steps: int, head: str = "lstm") -> dict:
    """Median, p95 and max ms of the encoder, the policy head and both, on one frame; batched frames/s."""
    rng = np.random.default_rng(0)
    policy = Policy(encoder.output_dim() + 9, cfg=head_config(head)).eval()
    policy.reset()
    one = fake_frames(1, size, rng)
    one["object_pose"] = torch.eye(4).expand(1, 1, 4, 4)
    enc_ms, pol_ms, total = [], [], []
    with torch.no_grad():
        for i in range(steps + 5):
            t0 = time.perf_counter()
            feats = encoder(one)
            t1 = time.perf_counter()
            policy.act(torch.cat([feats, torch.zeros(1, 9)], 1))
            t2 = time.perf_counter()
            if i >= 5:
                enc_ms.append(1000 * (t1 - t0))
                pol_ms.append(1000 * (t2 - t1))
                total.append(1000 * (t2 - t0))
        batch = fake_frames(32, size, rng)
        batch["object_pose"] = torch.eye(4).expand(32, 1, 4, 4)
        encoder(batch)
        t = time.perf_counter()
        for _ in range(3):
            encoder(batch)
        frames_per_s = 3 * 32 / (time.perf_counter() - t)

    def stats(x):
        return {"median": float(np.median(x)), "p95": float(np.percentile(x, 95)), "max": float(np.max(x))}

    return {"control_step_ms": stats(total), "encoder_ms": stats(enc_ms), "policy_ms": stats(pol_ms),
            "batched_encoding_frames_per_s": frames_per_s}


def tracker_latency(artefacts: dict, device: str, cameras, size: int, steps: int) -> dict:
    """Median and p95 ms of one `KeypointTracker.track` call for `cameras` at `size` px, results copied to the CPU."""
    from dckp.tracker import KeypointTracker

    tracker = KeypointTracker.load(artefacts["don"], artefacts["references"], device=device, cameras=list(cameras))
    one = fake_frames(1, size, np.random.default_rng(0))
    inputs = [{cam: one[f"{cam}_{key}"][0].numpy() for cam in cameras} for key in ("rgb", "depth", "K", "pose")]
    ms = []
    for i in range(steps + 5):
        t0 = time.perf_counter()
        kps = tracker.track(*inputs)
        [(k.points.cpu(), k.confidence.cpu()) for k in kps.values()]
        if i >= 5:
            ms.append(1000 * (time.perf_counter() - t0))
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95))}


if __name__ == "__main__":
    main()
