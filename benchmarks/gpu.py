"""Data-parallel DON pretraining on the CPU, and the GPU figures of issue #17: results/gpu.{json,md}.

    PYTHONPATH=src python benchmarks/gpu.py --views data/lift_views.h5 --heldout data/lift_heldout.h5

Two parts; each rewrites only its own keys of results/gpu.json (so they may run on different machines), then the
markdown is written from the whole JSON:

- `ddp_cpu_speedup` (`--ddp-seconds`, 0 skips the part): pairs/s of 2 gloo processes (each with half the cores'
  torch threads and 4 pairs per step) over 1 process (all the cores' threads, 4 pairs per step), `cpu` DON preset,
  after a few warm-up steps; each timing includes its run's start and end (about a second). Take it on a quiet
  machine.
- `gpu` (`--gpu-seconds`, 0 skips the part; null where torch sees no GPU): `card`; `sampler_pairs_per_s`, the data
  pipeline alone (the DataLoader of `--workers` processes drawing the `cpu` preset's pairs, no training);
  `don_steps_per_s` and `pck5_same_camera` (PCK@5 % on the held-out views' same-camera pairs) of the `cpu` and
  `paper` presets, each trained for the same `--gpu-seconds` on the GPU with `--workers` loader processes;
  `keypoint_ms_256`, one 256 x 256 frame through the paper-preset DON and 16 keypoints (`extract_keypoints`), on
  the GPU; and `bf16`, the `cpu` preset trained under bf16 autocast for the same time: its steps/s and PCK@5 %
  beside fp32's.

The views are trained on at their own resolution (the `paper` preset's speed at 256 px needs views rendered at
256 px: `dckp collect-views --preset paper`). The defaults fit one 10-minute run on a GPU machine (where the CPU
part is skipped unless `--ddp-seconds` asks for it) and read nothing from a network. A check of the script without
a GPU: `--device cpu --ddp-seconds 3 --gpu-seconds 3 --out /tmp/gpu_check` (slow: the paper preset's ResNet-50 on
the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from dckp.config import atomic_write_bytes, save_json
from dckp.don.batches import batch_loader
from dckp.don.config import DON_PRESETS, DonConfig
from dckp.don.evaluate import evaluate_model, sample_eval_pairs
from dckp.don.train import load_don, pretrain

WARMUP = 5  # steps before timing: the first steps build the loader, warm caches and tune cuDNN


def _timed(views: list[str], cfg: DonConfig, folder: str, steps: int) -> float:
    """Seconds to train steps WARMUP .. WARMUP+steps-1 (after WARMUP untimed steps), resuming in `folder`."""
    pretrain(views, dataclasses.replace(cfg, steps=WARMUP), folder, checkpoint_every=10**9, progress=False)
    start = time.perf_counter()
    pretrain(views, dataclasses.replace(cfg, steps=WARMUP + steps), folder, checkpoint_every=10**9, progress=False)
    _sync(cfg.device)
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, size: int, ports: list[int], views: list[str], cfg: DonConfig, folder: str, steps: int,
          threads: int, result: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(threads)
    os.environ["MASTER_PORT"] = str(ports[0])
    pretrain(views, dataclasses.replace(cfg, steps=WARMUP), folder, checkpoint_every=10**9, progress=False)
    os.environ["MASTER_PORT"] = str(ports[1])
    start = time.perf_counter()
    pretrain(views, dataclasses.replace(cfg, steps=WARMUP + steps), folder, checkpoint_every=10**9, progress=False)
    if rank == 0:
        Path(result).write_text(json.dumps(time.perf_counter() - start))


def ddp_cpu(views: list[str], seconds: float, tmp: Path) -> dict:
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    cfg = DON_PRESETS["cpu"]
    torch.set_num_threads(cores)
    probe = _timed(views, cfg, str(tmp / "probe"), 3)  # sizes the timed runs to about `seconds` for 1 process
    steps = max(3, int(seconds * 3 / probe))
    one = _timed(views, cfg, str(tmp / "one"), steps)
    torch.set_num_threads(threads)
    mp.spawn(_rank, args=(2, [_free_port(), _free_port()], views, cfg, str(tmp / "two"), steps, max(1, cores // 2),
                          str(tmp / "two.json")), nprocs=2)
    two = json.loads((tmp / "two.json").read_text())
    pairs_one, pairs_two = steps * cfg.batch_pairs / one, 2 * steps * cfg.batch_pairs / two
    print(f"ddp: 1 process {pairs_one:.1f} pairs/s, 2 processes {pairs_two:.1f} pairs/s", flush=True)
    return {"ddp_cpu_speedup": round(pairs_two / pairs_one, 2),
            "ddp_cpu": {"cores": cores, "steps": steps, "pairs_per_step_per_process": cfg.batch_pairs,
                        "pairs_per_s_1": round(pairs_one, 2), "pairs_per_s_2": round(pairs_two, 2),
                        "threads_1": cores, "threads_2_each": max(1, cores // 2)}}


def sampler_pairs_per_s(views: list[str], cfg: DonConfig, seconds: float) -> float:
    loader = iter(batch_loader(views, dataclasses.replace(cfg, steps=10**9)))
    for _ in range(WARMUP):
        next(loader)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(loader)
        n += 1
    return n * cfg.batch_pairs / (time.perf_counter() - start)


def train_for(views: list[str], heldout: str, pairs: dict, cfg: DonConfig, seconds: float, folder: Path) -> dict:
    """Train for about `seconds` (after WARMUP steps), then PCK@5 % on the held-out same-camera pairs."""
    probe = _timed(views, cfg, str(folder / "probe"), 10)
    steps = max(10, int(seconds * 10 / probe))
    elapsed = _timed(views, cfg, str(folder / "run"), steps)
    model = load_don(folder / "run").to(cfg.device)
    with torch.no_grad():
        scores = evaluate_model(model, heldout, pairs)
    return {"steps": WARMUP + steps, "steps_per_s": round(steps / elapsed, 2), "seconds": round(elapsed, 1),
            "pck5_same_camera": round(scores["same_camera"]["pck@5%"], 4)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def keypoint_ms_256(cfg: DonConfig, runs: int = 50) -> float:
    from dckp.don.model import DenseObjectNet
    from dckp.keypoints.extract import extract_keypoints

    model = DenseObjectNet(cfg).to(cfg.device).eval()
    image = torch.rand(1, 3, 256, 256, device=cfg.device)
    refs = torch.randn(16, cfg.descriptor_dim, device=cfg.device)
    with torch.no_grad():
        for i in range(10 + runs):
            if i == 10:
                _sync(cfg.device)
                start = time.perf_counter()
            extract_keypoints(model(image), refs, 0.05, "mode")
        _sync(cfg.device)
    return (time.perf_counter() - start) / runs * 1000


def gpu(views: list[str], heldout: str, seconds: float, workers: int, tmp: Path, device: str) -> dict | None:
    if device == "cuda" and not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    pairs = sample_eval_pairs(heldout, per_type=20, seed=0)
    card = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (a check of the script, not a result)"
    out = {"card": card, "don_steps_per_s": {}, "pck5_same_camera": {}}
    cpu = dataclasses.replace(DON_PRESETS["cpu"], device=device, workers=workers)
    out["sampler_pairs_per_s"] = round(sampler_pairs_per_s(views, cpu, min(seconds, 30)), 1)
    print("sampler", out["sampler_pairs_per_s"], "pairs/s", flush=True)
    runs = {}
    for name in ("cpu", "paper"):
        cfg = dataclasses.replace(DON_PRESETS[name], device=device, workers=workers)
        runs[name] = train_for(views, heldout, pairs, cfg, seconds, tmp / name)
        out["don_steps_per_s"][name] = runs[name]["steps_per_s"]
        out["pck5_same_camera"][name] = runs[name]["pck5_same_camera"]
        print(name, runs[name], flush=True)
    out["keypoint_ms_256"] = round(keypoint_ms_256(dataclasses.replace(DON_PRESETS["paper"], device=device)), 2)
    bf16 = train_for(views, heldout, pairs, dataclasses.replace(cpu, bf16=True), seconds, tmp / "bf16")
    print("bf16", bf16, flush=True)
    out["bf16"] = {"preset": "cpu", "don_steps_per_s": {"fp32": runs["cpu"]["steps_per_s"],
                                                         "bf16": bf16["steps_per_s"]},
                   "pck5_same_camera": {"fp32": runs["cpu"]["pck5_same_camera"], "bf16": bf16["pck5_same_camera"]}}
    out["runs"] = runs | {"bf16": bf16}
    out["settings"] = {"seconds_per_preset": seconds, "workers": workers, "torch": torch.__version__}
    return out


def markdown(r: dict) -> str:
    lines = ["# DON pretraining: data-parallel on the CPU, and on a GPU", "",
             "`python benchmarks/gpu.py` (issue #17). " + r.get("views", "")]
    d = r.get("ddp_cpu")
    if d:
        lines += ["", "## Data-parallel on the CPU", "",
                  f"`ddp_cpu_speedup` = **{r['ddp_cpu_speedup']}**: 2 gloo processes ({d['threads_2_each']} torch "
                  f"thread(s) each) drew and trained {d['pairs_per_s_2']} pairs/s, 1 process ({d['threads_1']} "
                  f"threads) {d['pairs_per_s_1']}; `cpu` preset, {d['pairs_per_step_per_process']} pairs per step "
                  f"and process, {d['steps']} timed steps, {d['cores']} cores."]
    g = r.get("gpu")
    lines += ["", "## GPU", ""]
    if not g:
        lines.append("No GPU was available for this run: `gpu` is null.")
    else:
        s = g["settings"]
        runs = g["runs"]
        lines += [f"{g['card']}, torch {s['torch']}, {s['workers']} loader workers; asked for "
                  f"{s['seconds_per_preset']} s per preset from a 10-step probe, whose start-up (loader workers, "
                  "cuDNN tuning) makes the timed runs shorter. Steps/s include each timed run's start; PCK@5 % is "
                  "after the steps shown.", "",
                  "| preset | DON steps/s | steps | timed s | PCK@5 % same camera |", "|---|---|---|---|---|"]
        lines += [f"| {p} | {g['don_steps_per_s'][p]} | {runs[p]['steps']} | {runs[p]['seconds']} | "
                  f"{g['pck5_same_camera'][p]} |" for p in ("cpu", "paper")]
        b = g["bf16"]
        lines += ["", f"Data pipeline alone: {g['sampler_pairs_per_s']} pairs/s. Keypoints at 256 px (paper-preset "
                  f"DON, 16 keypoints): {g['keypoint_ms_256']} ms per frame.", "",
                  f"bf16 autocast, `cpu` preset: {b['don_steps_per_s']['bf16']} steps/s (fp32 "
                  f"{b['don_steps_per_s']['fp32']}), PCK@5 % {b['pck5_same_camera']['bf16']} (fp32 "
                  f"{b['pck5_same_camera']['fp32']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", nargs="+", required=True, help="fused views file(s) to train on")
    parser.add_argument("--heldout", required=True, help="held-out views file for PCK@5 %% (GPU part)")
    parser.add_argument("--ddp-seconds", type=float, default=None, help="about how long each CPU timing runs; 0 "
                        "skips the CPU part (default: 60 without a GPU, 0 with one)")
    parser.add_argument("--gpu-seconds", type=float, default=90, help="training time per preset on the GPU; 0 "
                        "skips the GPU part (default: 90)")
    parser.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)),
                        help="DataLoader workers on the GPU machine (default: cores - 2, at most 8)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where the GPU part runs: cpu only "
                        "checks the script, with --out elsewhere (default: cuda)")
    parser.add_argument("--out", default="results/gpu", help="results stem (default: results/gpu)")
    args = parser.parse_args()
    if args.ddp_seconds is None:  # a GPU machine's 10 minutes go to the GPU part
        args.ddp_seconds = 0 if torch.cuda.is_available() else 60
    path = Path(args.out + ".json")
    r = {"ddp_cpu_speedup": None, "gpu": None} | (json.loads(path.read_text()) if path.exists() else {})
    with tempfile.TemporaryDirectory() as tmp:
        if args.ddp_seconds > 0:
            r.update(ddp_cpu(args.views, args.ddp_seconds, Path(tmp)))
        if args.gpu_seconds > 0:
            r["gpu"] = gpu(args.views, args.heldout, args.gpu_seconds, args.workers, Path(tmp), args.device) or r["gpu"]
    r["views"] = f"Views: {' '.join(Path(v).name for v in args.views)}; held-out: {Path(args.heldout).name}."
    save_json(r, path)
    atomic_write_bytes(Path(args.out + ".md"), markdown(r).encode())
    print(markdown(r))


if __name__ == "__main__":
    main()
