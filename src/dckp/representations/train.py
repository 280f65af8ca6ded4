"""Pretraining of a representation baseline (beta-VAE, Transporter or MONet) on views and demos files, resumable
exactly, and loading the result.

The run folder gets `last.safetensors` (model, optimiser and torch RNG state: an interrupted run resumes where it
stopped and, batches and noise being drawn from generators seeded by (seed, step) and cuDNN kept to deterministic
algorithms, repeats the same losses, on the CPU and on a GPU),
`train_log.jsonl` (one line of losses per step), `train_curves.png`, `pretrain_config.json`, and at the end
`representation.safetensors` + `representation.json` (the trained model, the method and its config) and the
method's picture (`reconstructions.png`, `keypoints.png` or `slots.png`).

Under torchrun (`dckp pretrain-representation --nproc N`) N processes train with DDP, each on its share of the
batch of one process of N x `batch` images (`pretrain_representation`); rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from safetensors.torch import save
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dckp.config import atomic_write_bytes, from_dict, save_json
from dckp.distributed import (
    all_reduce_sum,
    barrier,
    check_resumed_world,
    device_of,
    process_group,
    sync_batch_norm,
)
from dckp.errors import DckpError, Interrupted
from dckp.representations import bvae, monet, transporter
from dckp.representations.config import RepresentationConfig
from dckp.representations.data import FrameSource
from dckp.representations.plots import curves
from dckp.training import (
    READ_EVERY,
    load_optimizer_tensors,
    log_lines_before,
    optimizer_tensors,
    prefixed,
    read_checkpoint,
    read_pending,
    stop_after_step,
)

log = logging.getLogger(__name__)

METHODS: dict[str, ModuleType] = {"bvae": bvae, "transporter": transporter, "monet": monet}
FORMAT = "dckp-representation-v1"
RESUME_MAY_CHANGE = ("steps", "device")  # config fields a resumed run may set differently
LAST, MODEL = "last.safetensors", "representation.safetensors"
PICTURE_INPUTS = 8


def method_module(method: str) -> ModuleType:
    """The module of a method (`bvae`, `transporter`, `monet`); DckpError for another name."""
    if method not in METHODS:
        raise DckpError(f"unknown method {method!r}; choose from {list(METHODS)}", field="method")
    return METHODS[method]


def save_state(path: str | os.PathLike, method: str, model: torch.nn.Module, cfg: RepresentationConfig, step: int,
               optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write a safetensors file of the model (`model/<name>`), where given the optimiser (`optimizer/<param>/<name>`,
    its param_groups and scalars in the metadata) and torch's RNG state; the metadata entry `dckp` holds the
    format, method, step and config as JSON."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "method": method, "step": step, "config": dataclasses.asdict(cfg)}
    if optimizer is not None:
        optimizer_part, meta["optimizer"] = optimizer_tensors(optimizer)
        tensors.update(optimizer_part)
        tensors["rng/torch"] = torch.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={"dckp": json.dumps(meta)}))


def read_state(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file of `save_state`; DckpError naming the file when it is missing or unreadable."""
    meta, tensors = read_checkpoint(path, "representation file",
                                    "delete it and run `dckp pretrain-representation` again",
                                    missing="file not found; make it with `dckp pretrain-representation`")
    if meta.get("format") != FORMAT:
        raise DckpError(f"unknown format {meta.get('format')!r}, expected {FORMAT!r}", path=str(path))
    if meta.get("method") not in METHODS:
        raise DckpError(f"unknown method {meta.get('method')!r}", path=str(path), field="method")
    return meta, tensors


def load_state(path: str | os.PathLike, method: str, model: torch.nn.Module, cfg: RepresentationConfig,
               optimizer: torch.optim.Optimizer) -> int:
    """Restore a run's `last.safetensors` into model and optimiser, and torch's RNG state; return the step. The
    method and every config field but RESUME_MAY_CHANGE must be the checkpoint's."""
    meta, tensors = read_state(path)
    saved, now = meta["config"], dataclasses.asdict(cfg)
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k))
    if meta["method"] != method or differ:
        what = f"method {meta['method']}" if meta["method"] != method else \
            f"config in {differ} (checkpoint: {[saved.get(k) for k in differ]})"
        raise DckpError(f"this run folder was started with another {what}; use another --out or the same "
                        "settings", path=str(path))
    _load_model(model, tensors, path)
    load_optimizer_tensors(optimizer, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng/torch"])
    return meta["step"]


def _load_model(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    try:
        model.load_state_dict(prefixed(tensors, "model/"))
    except RuntimeError as e:
        raise DckpError(f"model does not fit the file: {' '.join(str(e).split())[:300]}", path=str(path)) from None


def load_representation(run: str | os.PathLike) -> tuple[str, RepresentationConfig, torch.nn.Module]:
    """(method, config, model in eval mode on the CPU) of a finished run folder (its `representation.safetensors`)."""
    path = Path(run) / MODEL
    meta, tensors = read_state(path)
    module = METHODS[meta["method"]]
    cfg = from_dict(module.Config, meta["config"], source=str(path))
    model = module.build(cfg)
    _load_model(model, tensors, path)
    return meta["method"], cfg, model.eval()


def step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The batch sampler and the (CPU) torch noise generator of one step, both seeded by (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


def _noise_of(generator: torch.Generator, whole: int, mine: slice):
    """`noise_of(*shape)` of a method's loss: rows `mine` of the standard normal noise `(whole, *shape)` that one
    process training on the whole batch draws."""
    return lambda *shape: torch.randn(whole, *shape, generator=generator)[mine]


def check_files(method: str, files: list[str | os.PathLike], cfg: RepresentationConfig) -> None:
    """DckpError naming the file or field where `files` cannot train `method` with `cfg`."""
    _frames(_configured(method, cfg), files, cfg).close()


def _configured(method: str, cfg: RepresentationConfig) -> ModuleType:
    """The method's module, after checking that `cfg` is its config."""
    module = method_module(method)
    if type(cfg) is not module.Config:
        raise DckpError(f"a {type(cfg).__name__} for method {method}, expected a {module.Config.__name__}",
                        field="config")
    return module


def _frames(module: ModuleType, files: list[str | os.PathLike], cfg: RepresentationConfig) -> FrameSource:
    return FrameSource(files, cfg.image_size, pairs=module.PAIRS, max_gap=getattr(cfg, "max_gap", 1))


def pretrain_representation(method: str, files: list[str | os.PathLike], cfg: RepresentationConfig,
                            out: str | os.PathLike, checkpoint_every: int = 100, progress: bool = True) -> dict:
    """Train (or resume training) a representation of `method` on views and demos files (Transporter: the demos
    files' pairs) into the run folder `out`; returns a summary.

    The files are checked before anything is written. Ctrl-C finishes the current step, saves `last.safetensors`
    and raises `Interrupted`; a second Ctrl-C stops at once.

    Started by torchrun (`dckp.distributed`), each of N processes trains on `cfg.batch` images of every step with
    DDP, gradients and batch-norm statistics spanning the processes: every process draws the positions (and the
    noise) of the step's N x `cfg.batch` images, as one process of that batch would, and reads its own share, so
    the run is that of one process with N times the batch. Rank 0 alone writes files and shows progress; the run
    folder must be one that every process sees."""
    module = _configured(method, cfg)
    if checkpoint_every < 1:
        raise DckpError(f"must be >= 1, got {checkpoint_every}", field="checkpoint_every")
    with _frames(module, files, cfg) as source, process_group(cfg.device) as w:
        device = device_of(cfg.device, w)
        out = Path(out)
        last, log_path = out / LAST, out / "train_log.jsonl"
        torch.manual_seed(cfg.seed)
        model = module.build(cfg)
        if w.size > 1:
            sync_batch_norm(model)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        start = 0
        if last.exists():
            start = load_state(last, method, model, cfg, optimizer)
            if start > cfg.steps:
                raise DckpError(f"this run is at step {start}, past --steps {cfg.steps}; give --steps {start} or "
                                "more, or another --out", path=str(last))
            if w.main:
                log.info("resuming from %s at step %d", last, start)
                check_resumed_world(out / "pretrain_config.json", w.size, "images")
        net = model if w.size == 1 else DistributedDataParallel(
            model, device_ids=[device] if device.startswith("cuda") else None)
        lines = log_lines_before(log_path, start)
        if w.main:
            out.mkdir(parents=True, exist_ok=True)
            save_json({"method": method, "files": [str(f) for f in files], "world_size": w.size,
                       **dataclasses.asdict(cfg)}, out / "pretrain_config.json")
        mine, whole = slice(w.rank * cfg.batch, (w.rank + 1) * cfg.batch), w.size * cfg.batch
        model.train()
        pending: list = []  # the steps whose losses are not read yet
        with tqdm(total=cfg.steps, initial=start, desc=f"pretrain {method}", disable=not (progress and w.main)) \
                as bar, stop_after_step() as stop, _deterministic_cudnn():
            for step in range(start, cfg.steps):
                rng, generator = step_generators(cfg.seed, step)
                if module.PAIRS:
                    batch = tuple(x.to(device) for x in source.sample_pairs(rng, whole, mine))
                else:
                    batch = source.sample(rng, whole, mine).to(device)
                optimizer.zero_grad()
                total, stats = module.loss(net, batch, cfg, _noise_of(generator, whole, mine))
                if w.size > 1:  # the whole batch's: the mean of the processes' (equal shares)
                    mean = all_reduce_sum(torch.stack([v.double() for v in stats.values()])) / w.size
                    stats = dict(zip(stats, mean.unbind(), strict=True))
                total.backward()  # DDP averages the processes' gradients: those of the whole batch's mean loss
                optimizer.step()
                pending.append(({"step": step}, stats))  # read every READ_EVERY steps: no wait for the device
                bar.update(1)
                stopping = bool(stop) if w.size == 1 else bool(  # every process stops at the same step
                    all_reduce_sum(torch.tensor(len(stop), device=device)))
                saving = (step + 1) % checkpoint_every == 0 or step + 1 == cfg.steps or stopping
                if saving or len(pending) == READ_EVERY:
                    records = read_pending(pending)
                    if bad := next((r for r in records if not np.isfinite(r["loss"])), None):  # before any save
                        raise DckpError(f"the loss became {bad['loss']} at step {bad['step']}; try a lower --lr",
                                        path=str(out), field="lr")
                    lines += [json.dumps(r) for r in records]
                    bar.set_postfix(loss=f"{records[-1]['loss']:.4g}")
                if w.main and saving:
                    atomic_write_bytes(log_path, ("\n".join(lines) + "\n").encode())
                    save_state(last, method, model, cfg, step + 1, optimizer)
                if stopping:
                    barrier()
                    raise Interrupted(f"saved {last} at step {step + 1} of {cfg.steps}")
        picture_name = None  # rank 0's
        if w.main:
            model.eval()
            picture_name, picture = module.picture(model, _picture_batch(source, module, cfg, device))
            atomic_write_bytes(out / picture_name, picture)
            save_state(out / MODEL, method, model, cfg, cfg.steps)
            save_json({"method": method, "config": dataclasses.asdict(cfg), "steps": cfg.steps,
                       "features_per_camera": module.feature_dim(cfg)}, out / "representation.json")
            png = curves(log_path, f"{method} pretraining losses (moving average)") if log_path.exists() else None
            if png is not None:
                atomic_write_bytes(out / "train_curves.png", png)
        barrier()
    losses = [json.loads(ln)["loss"] for ln in lines]
    k = max(1, len(losses) // 10)  # loss averaged over the first and the last tenth of the steps
    return {"method": method, "steps": cfg.steps, "resumed_from": start,
            "loss_first": float(np.mean(losses[:k])) if losses else None,
            "loss_last": float(np.mean(losses[-k:])) if losses else None,
            "features_per_camera": module.feature_dim(cfg), "picture": picture_name and str(out / picture_name),
            "out": str(out), "processes": w.size}


def _picture_batch(source: FrameSource, module: ModuleType, cfg: RepresentationConfig, device: str):
    """The picture's inputs, on the model's device: frames spread evenly over the data (Transporter: each with a
    partner frame drawn as in training)."""
    positions = source.spread(PICTURE_INPUTS)
    images = source.stack([source.frame(s, t) for s, t in positions]).to(device)
    if not module.PAIRS:
        return images
    rng = np.random.default_rng([cfg.seed, cfg.steps, 1])
    targets = source.stack([source.frame(s, source.partner(rng, s, t)) for s, t in positions])
    return images, targets.to(device)


@contextlib.contextmanager
def _deterministic_cudnn():
    """cuDNN's deterministic algorithms while training, so that a resumed run on a GPU repeats the same losses (its
    default convolution backward passes add in varying order: losses drifted by up to 1e-3 relative within 20 steps
    on an H200; deterministic ones cost 15-25 % more time per step there)."""
    previous = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous


