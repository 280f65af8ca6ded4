"""Pretrained representation baselines (beta-VAE, Transporter, MONet): pretraining time and what each learnt,
measured on held-out frames. Writes results/representations.{json,md} (merging with what is there).

    python benchmarks/representations.py --task lift --views data/lift_views.h5 --demos runs/tasks/lift/demos.h5 \\
        --heldout data/lift_heldout.h5 --runs runs/representations --out results
    python benchmarks/representations.py --task stack --views data/stack_views.h5 --demos runs/tasks/stack/demos.h5 \\
        --heldout data/stack_heldout.h5 --methods monet                   # one method
    python benchmarks/representations.py ... --steps 3 --runs /tmp/rep_check --out /tmp/rep_check_results  # check

Per method (default: all three), `pretrain_representation` trains into `<runs>/<task>/<method>` with the `--preset`
(`cpu` by default; `--steps` overrides its steps): the beta-VAE and MONet on the frames of the views file (the
DON's pretraining data, as `dckp run` trains them), Transporter on pairs of frames of the demonstrations (static
views scenes would give it nothing that moves).
`pretrain_s` is the wall time with `pretrain_threads` torch threads. A finished run
(`representation.safetensors`) whose `pretrain_s` and `steps` are already in the results file is not trained
again; an interrupted one (or one given more `--steps`) resumes from its `last.safetensors`, and
`pretrain_resumed_from` records the step it resumed from (> 0: `pretrain_s` is the rest). A finished run timed here
and given more steps is the exception: its recorded time plus the rest's is its `pretrain_s`, and
`pretrain_extended_at` the step where the second piece began (the learning rate is constant, so the steps are the
same as trained at once).

Then on the held-out views file (scenes never used in training), for every camera stream, on up to `--frames`
frames per stream drawn without replacement over the file (seeded by `--seed`), at the method's image size
(`dckp.representations.data.resize_rgb`, as in training):

- `recon_mse` (every method): the squared error per pixel and channel of the reconstruction, images in [0, 1] and
  the reconstruction clamped to [0, 1] (beta-VAE: decoded from the latent mean; MONet: the masks' mixture of the
  slots' decoded means; Transporter: the frame reconstructed from a source frame of the same demonstration and
  camera at most `max_gap` steps away when the held-out file is a demos file, else from itself);
- `fg_ari` (MONet): the adjusted Rand index between the argmax of the slot masks and the simulator's segmentation
  (resized by nearest neighbour to the image size) over the foreground pixels (objects 1..N; not the background 0
  nor the arm 255), averaged over the frames with 2 foreground pixels or more;
- `on_object` (Transporter): the share of keypoints, over all frames and keypoints, whose pixel of the camera's
  image lies on an object (seg in 1..N).

The markdown also gives each run's logged total loss (`train_log.jsonl`): the first, the last, and the mean of the
last 10 % of the steps against the 10 % before them, to show whether the loss had flattened.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from dckp.config import atomic_write_bytes, save_json
from dckp.data import Dataset
from dckp.representations import bvae, monet, transporter
from dckp.representations.config import METHODS, method_presets
from dckp.representations.data import resize_rgb
from dckp.representations.train import MODEL, load_representation, pretrain_representation

BATCH = 32  # frames per forward pass in the measurements
ARM = 255  # the robot arm's label in `seg`; 0 is the background, 1..N the objects


def sample_frames(ds: Dataset, stream: str, n: int, seed: int) -> list[tuple[str, int]]:
    """Up to `n` (episode, frame) positions of a camera stream, drawn without replacement over every episode that
    has it, in file order."""
    positions = [(ep, t) for ep in ds.episodes if stream in ds.streams(ep) for t in range(ds.num_frames(ep, stream))]
    rng = np.random.default_rng([seed, sum(map(ord, stream))])
    keep = np.sort(rng.choice(len(positions), size=min(n, len(positions)), replace=False))
    return [positions[i] for i in keep]


def read(ds: Dataset, stream: str, key: str, positions: list[tuple[str, int]]) -> np.ndarray:
    return np.concatenate([ds.frames(ep, stream, key, t, t + 1) for ep, t in positions])


def partners(ds: Dataset, stream: str, positions: list[tuple[str, int]], max_gap: int, seed: int
             ) -> list[tuple[str, int]]:
    """Transporter's source frames: in a demos file another frame of the same demonstration and camera at most
    `max_gap` steps away (drawn as in training); otherwise the frame itself."""
    if ds.kind != "demos":
        return positions
    rng = np.random.default_rng([seed, 1])
    out = []
    for ep, t in positions:
        count = ds.num_frames(ep, stream)
        lo, hi = max(0, t - max_gap), min(count - 1, t + max_gap)
        if hi - lo < 1:
            out.append((ep, t))
            continue
        u = int(rng.integers(lo, hi))
        out.append((ep, u + 1 if u >= t else u))
    return out


@torch.no_grad()
def reconstruct(method: str, model: torch.nn.Module, images: torch.Tensor, sources: torch.Tensor | None
                ) -> torch.Tensor:
    if method == "bvae":
        return model.decode(bvae.features(model, images))
    if method == "transporter":
        return model(sources, images)
    out = model(images, None)
    return (out["log_masks"].exp() * out["rgb"]).sum(1)


def foreground(seg: np.ndarray) -> np.ndarray:
    return (seg > 0) & (seg != ARM)


def measure(method: str, model: torch.nn.Module, cfg, heldout: str, frames: int, seed: int) -> dict:
    """recon_mse (and fg_ari for MONet, on_object for Transporter) on held-out frames of every camera stream."""
    S = cfg.image_size
    sq_err, pixels, aris, on, keypoints = 0.0, 0, [], 0, 0
    with Dataset(heldout) as ds:
        streams = sorted({s for ep in ds.episodes for s in ds.streams(ep)})
        for stream in streams:
            positions = sample_frames(ds, stream, frames, seed)
            for i in range(0, len(positions), BATCH):
                chunk = positions[i:i + BATCH]
                rgb = read(ds, stream, "rgb", chunk)
                images = resize_rgb(torch.from_numpy(rgb), S)
                sources = None
                if method == "transporter":
                    sources = resize_rgb(torch.from_numpy(read(ds, stream, "rgb",
                                                               partners(ds, stream, chunk, cfg.max_gap, seed + i))), S)
                recon = reconstruct(method, model, images, sources).clamp(0, 1)
                sq_err += float(((recon - images) ** 2).sum())
                pixels += images.numel()
                if method == "monet":
                    seg = torch.from_numpy(read(ds, stream, "seg", chunk))[:, None].float()
                    seg = F.interpolate(seg, size=(S, S), mode="nearest")[:, 0].numpy().astype(np.int64)
                    slot = monet.masks(model, images).argmax(1).numpy()
                    for truth, pred in zip(seg, slot, strict=True):
                        fg = foreground(truth)
                        if fg.sum() >= 2:
                            aris.append(adjusted_rand_score(truth[fg], pred[fg]))
                if method == "transporter":
                    seg = read(ds, stream, "seg", chunk)
                    H, W = seg.shape[1:]
                    uv, _ = transporter.image_keypoints(model, images, H, W)
                    u = uv[..., 0].round().long().clamp(0, W - 1).numpy()
                    v = uv[..., 1].round().long().clamp(0, H - 1).numpy()
                    on += int(foreground(seg[np.arange(len(seg))[:, None], v, u]).sum())
                    keypoints += u.size
    out = {"recon_mse": sq_err / pixels}
    if method == "monet":
        out["fg_ari"] = float(np.mean(aris)) if aris else None
    if method == "transporter":
        out["on_object"] = on / keypoints
    return out


def loss_summary(run: Path) -> dict | None:
    """First and last logged total loss, and the mean of the last 10 % of the steps and of the 10 % before."""
    path = run / "train_log.jsonl"
    if not path.exists():
        return None
    losses = [json.loads(ln)["loss"] for ln in path.read_text().splitlines() if ln.strip()]
    if not losses:
        return None
    k = max(1, len(losses) // 10)
    before = losses[-2 * k:-k] if len(losses) >= 2 * k else []
    return {"first": losses[0], "last": losses[-1], "last_tenth": float(np.mean(losses[-k:])),
            "tenth_before": float(np.mean(before)) if before else None, "logged": len(losses)}


def _num(x, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def write_markdown(results: dict, out: Path, runs: Path, command: str, heldout_kind: str) -> None:
    source = ("each frame is its own source and target (the held-out file is a views file: static scenes filmed by "
              "moving cameras, no sequences in which objects move)" if heldout_kind != "demos" else
              "the source is another frame of the same demonstration and camera, at most `max_gap` steps away")
    lines = ["# Pretrained representation baselines", "",
             f"`{command}`", "",
             "Each method pretrained with `pretrain_representation` (beta-VAE and MONet on the frames of the views and "
             "demos files, Transporter on pairs of frames of the demonstrations), then measured on a held-out views "
             "file (scenes never used in training), every camera stream, a seeded sample of frames per stream, at "
             "the method's image size. `recon_mse`: squared error per pixel and channel, images in [0, 1], the "
             "reconstruction clamped to [0, 1]. Transporter's reconstruction in this run: " + source + ". "
             "`fg_ari`: MONet's foreground adjusted Rand index (argmax of the slot masks against the simulator's "
             "object segmentation, arm and background left out; a single-object task such as lift scores 1 only if "
             "the object's pixels all fall in one slot). `on_object`: share of Transporter keypoints on an object; "
             "the cameras aim at the scene, so a keypoint left at the image centre (as an untrained one is) often "
             "lies on the object too (lift held-out: the centre pixel is on the cube in every agentview frame), "
             "though objects cover about 1 % of the pixels.",
             "",
             "`pretrain_s` must stay <= 30 minutes (1800 s) for the cpu preset on 2 cores; a baseline left "
             "undertrained by the CPU budget is unfair to it, so check the loss columns: if the mean loss of the "
             "last 10 % of the steps is still clearly below that of the 10 % before, the loss had not flattened. "
             "\"resumed from\" N > 0: the time covers the steps after N only; \"+N\": a finished run given more "
             "steps at N, its time the sum of the two timed pieces.",
             "", "Loss columns are read from `<runs>/<task>/<method>/train_log.jsonl` under "
             f"`{runs}` (\"-\" where that folder has no log).", ""]
    for method in METHODS:
        if method not in results:
            continue
        extra = {"monet": ["fg_ari"], "transporter": ["on_object"]}.get(method, [])
        lines += [f"## {method}", "",
                  "| task | steps | pretrain_s | min | threads | resumed from | recon_mse | "
                  + "".join(f"{e} | " for e in extra)
                  + "loss first | loss last | mean last 10 % | mean 10 % before |",
                  "|---" * (11 + len(extra)) + "|"]
        for task, r in results[method].items():
            s = loss_summary(runs / task / method) or {}
            lines.append(f"| {task} | {r.get('steps', '-')} | {_num(r.get('pretrain_s'), '.1f')} | "
                         f"{_num(r['pretrain_s'] / 60 if 'pretrain_s' in r else None, '.1f')} | "
                         f"{r.get('pretrain_threads', '-')} | {r.get('pretrain_resumed_from', '-')}"
                         + (f" +{r['pretrain_extended_at']}" if "pretrain_extended_at" in r else "") + " | "
                         f"{_num(r.get('recon_mse'))} | " + "".join(f"{_num(r.get(e), '.3f')} | " for e in extra)
                         + f"{_num(s.get('first'))} | {_num(s.get('last'))} | {_num(s.get('last_tenth'))} | "
                         f"{_num(s.get('tenth_before'))} |")
        lines.append("")
    atomic_write_bytes(out / "representations.md", "\n".join(lines).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--views", required=True, help="the task's views file (training frames)")
    parser.add_argument("--demos", required=True, help="the task's demonstrations (Transporter's pairs)")
    parser.add_argument("--heldout", required=True, help="a views file of scenes not used in training")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps (quick checks)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--frames", type=int, default=64, help="held-out frames per camera stream (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out sample")
    parser.add_argument("--runs", default="runs/representations")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(sys.argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "representations.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with Dataset(args.heldout) as ds:
        heldout_kind = ds.kind
    for method in args.methods:
        cfg = method_presets(method)[args.preset]
        if args.steps is not None:
            cfg = dataclasses.replace(cfg, steps=args.steps)
        run = Path(args.runs) / args.task / method
        files = [args.demos] if method == "transporter" else [args.views]  # as `dckp run`: the DON's data
        entry = results.setdefault(method, {}).setdefault(args.task, {})
        if not (run / MODEL).exists() or "pretrain_s" not in entry or entry.get("steps") != cfg.steps:
            before = dict(entry)
            start = time.time()
            summary = pretrain_representation(method, files, cfg, run)
            seconds = time.time() - start
            entry.clear()
            entry.update({"pretrain_s": round(seconds, 1), "pretrain_threads": args.threads, "steps": summary["steps"],
                          "pretrain_resumed_from": summary["resumed_from"]})  # > 0: pretrain_s is the rest only
            if (summary["resumed_from"] and summary["resumed_from"] == before.get("steps")
                    and "pretrain_s" in before and before.get("pretrain_threads") == args.threads):
                # a finished, timed run given more steps (Adam at a constant rate: the same as training them at
                # once): its recorded time plus the rest's
                entry.update({"pretrain_s": round(before["pretrain_s"] + seconds, 1),
                              "pretrain_resumed_from": before.get("pretrain_resumed_from", 0),
                              "pretrain_extended_at": summary["resumed_from"]})
            save_json(results, path)
        _, trained, model = load_representation(run)
        entry.update(measure(method, model, trained, args.heldout, args.frames, args.seed))
        entry["steps"] = trained.steps
        save_json(results, path)
        print(method, args.task, json.dumps(entry), flush=True)
    write_markdown(results, out, Path(args.runs), command, heldout_kind)


if __name__ == "__main__":
    main()
