"""Dense Object Net pretraining: pairs from fused view files, augmentation, Adam, resumable checkpoints.

The DON run folder gets `last.safetensors` (model, optimiser, scheduler and torch's RNG: an interrupted run
resumes exactly where it stopped), `don.safetensors` + `don.json` (the trained model and its config),
`train_log.jsonl` (one line of losses per step) and `train_curves.png`. The pairs of every step are a function of
the seed and the step (`dckp.don.batches`), so the checkpoint needs no sampler state.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.profiler import record_function  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402
from dckp.distributed import (  # noqa: E402
    all_reduce_sum,
    barrier,
    check_resumed_world,
    device_of,
    process_group,
    sync_batch_norm,
)
from dckp.don.batches import batch_loader, checked  # noqa: E402
from dckp.don.checkpoint import load_checkpoint, load_checkpoint_config, save_checkpoint  # noqa: E402
from dckp.don.config import DonConfig  # noqa: E402
from dckp.don.loss import make_optimizer, train_step  # noqa: E402
from dckp.don.model import DenseObjectNet, load_backbone_weights  # noqa: E402
from dckp.don.pairs import check_views  # noqa: E402
from dckp.errors import Interrupted  # noqa: E402
from dckp.training import READ_EVERY, log_lines_before, read_pending, stop_after_step  # noqa: E402

log = logging.getLogger(__name__)


def pretrain(views: list[str], cfg: DonConfig, don: str | Path, checkpoint_every: int = 100,
             progress: bool = True) -> dict:
    """Train (or resume training) a Dense Object Net on fused view files into the DON run folder `don`. Returns a
    summary.

    The view files are checked before anything is written. Ctrl-C finishes the current step, saves
    `last.safetensors` there and raises `Interrupted`; a second Ctrl-C stops at once.

    Started by torchrun (`dckp.distributed`), each process trains on its own `cfg.batch_pairs` pairs of every step
    (`dckp.don.batches`) with DDP: gradients and batch-norm statistics span the processes, and rank 0 alone writes
    files and shows progress. The run folder must be one that every process sees."""
    for path in views:
        check_views(str(path))
    out = Path(don)
    last, log_path = out / "last.safetensors", out / "train_log.jsonl"
    with process_group(cfg.device) as w:
        device = device_of(cfg.device, w)
        torch.manual_seed(cfg.seed)
        model = DenseObjectNet(cfg)
        if not last.exists():  # a resumed run's weights come from its checkpoint
            load_backbone_weights(model, cfg.backbone_weights or None)
        if w.size > 1:
            sync_batch_norm(model)
        model.to(device)
        if cfg.compile:
            model.compile(backend=cfg.compile)  # in place: the weights keep their names
        optimizer, scheduler = make_optimizer(model, cfg)
        start = 0
        if last.exists():
            start = load_checkpoint(last, model, optimizer, scheduler, cfg)
            if w.main:
                log.info("resuming from %s at step %d", last, start)
                check_resumed_world(out / "pretrain_config.json", w.size, "pairs")
        net = model
        if w.size > 1:
            net = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
        lines = log_lines_before(log_path, start)
        if w.main:
            out.mkdir(parents=True, exist_ok=True)
            save_json({"views": [str(v) for v in views], "world_size": w.size, **dataclasses.asdict(cfg)},
                      out / "pretrain_config.json")
        model.train()
        pending: list = []  # the steps whose losses are not read yet
        loader = iter(batch_loader(views, cfg, start, w.rank))
        with tqdm(total=cfg.steps, initial=start, desc="pretrain", disable=not (progress and w.main)) as bar, \
                stop_after_step() as stop:
            for step in range(start, cfg.steps):
                with record_function("data"):
                    batch = checked(next(loader))
                with record_function("h2d"):
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                stats = train_step(net, optimizer, batch, cfg)
                scheduler.step()
                pending.append(({"step": step, "lr": scheduler.get_last_lr()[0]}, stats))
                bar.update(1)
                stopping = bool(stop) if w.size == 1 else bool(  # every process stops at the same step
                    all_reduce_sum(torch.tensor(len(stop), device=device)))
                saving = (step + 1) % checkpoint_every == 0 or step + 1 == cfg.steps or stopping
                if saving or len(pending) == READ_EVERY:
                    records = read_pending(pending)
                    lines += [json.dumps(r) for r in records]
                    bar.set_postfix(loss=f"{records[-1]['loss']:.4f}")
                if w.main and saving:
                    atomic_write_bytes(log_path, ("\n".join(lines) + "\n").encode())
                    save_checkpoint(last, model, cfg, step + 1, optimizer, scheduler)
                if stopping:
                    barrier()
                    raise Interrupted(f"saved {last} at step {step + 1} of {cfg.steps}")
        if w.main:
            save_checkpoint(out / "don.safetensors", model, cfg, cfg.steps)
            plot_curves(log_path, out / "train_curves.png")
        barrier()
    losses = [json.loads(ln)["loss"] for ln in lines]
    k = max(1, len(losses) // 10)  # loss averaged over the first and the last tenth of the steps
    return {"steps": cfg.steps, "resumed_from": start, "loss_first": float(np.mean(losses[:k])),
            "loss_last": float(np.mean(losses[-k:])), "out": str(out), "processes": w.size}


def load_don(don: str | Path) -> DenseObjectNet:
    """The trained network of a `pretrain` run (`don.safetensors`), in eval mode, its weights channels-last in
    memory: images come as `(B, H, W, 3)` frames permuted to `(B, 3, H, W)`, which is channels-last, and with
    weights in the same layout no convolution reorders its weights on every call (the same numbers; on 2 CPU
    threads, a frame's descriptors about 2 ms sooner at 128 px)."""
    path = Path(don) / "don.safetensors"
    cfg = load_checkpoint_config(path)
    model = DenseObjectNet(cfg)
    load_checkpoint(path, model)
    return model.eval().to(memory_format=torch.channels_last)


def plot_curves(log_path: Path, out: Path) -> None:
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in ("loss", "match", "object", "background"):
        if key in rows[0]:
            values = np.array([r[key] for r in rows])
            k = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("DON pretraining losses (moving average)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())


