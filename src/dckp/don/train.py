"""Dense Object Net pretraining: pairs from fused view files, augmentation, Adam, resumable checkpoints.

The DON run folder gets `last.safetensors` (model, optimiser, scheduler and every RNG: an interrupted run resumes
exactly where it stopped), `don.safetensors` + `don.json` (the trained model and its config),
`train_log.jsonl` (one line of losses per step) and `train_curves.png`.
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
from tqdm import tqdm  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402
from dckp.don.augment import augment_pair  # noqa: E402
from dckp.don.checkpoint import load_checkpoint, load_checkpoint_config, save_checkpoint  # noqa: E402
from dckp.don.config import DonConfig  # noqa: E402
from dckp.don.loss import collate_pairs, make_optimizer, train_step  # noqa: E402
from dckp.don.model import DenseObjectNet, load_backbone_weights  # noqa: E402
from dckp.don.pairs import PairSampler, check_views  # noqa: E402
from dckp.errors import Interrupted  # noqa: E402
from dckp.training import log_lines_before, stop_after_step  # noqa: E402

log = logging.getLogger(__name__)


def make_sampler(views: list[str], cfg: DonConfig) -> PairSampler:
    return PairSampler(views, cfg.n_matches, cfg.n_non_matches, cfg.n_non_matches, cfg.min_pose_translation,
                       cfg.min_pose_rotation_deg, 0.0 if cfg.prior_work else cfg.arm_fraction, seed=cfg.seed,
                       prior_work=cfg.prior_work)


def pretrain(views: list[str], cfg: DonConfig, don: str | Path, checkpoint_every: int = 100,
             progress: bool = True) -> dict:
    """Train (or resume training) a Dense Object Net on fused view files into the DON run folder `don`. Returns a
    summary.

    The view files are checked before anything is written. Ctrl-C finishes the current step, saves
    `last.safetensors` there and raises `Interrupted`; a second Ctrl-C stops at once."""
    for path in views:
        check_views(str(path))
    out = Path(don)
    out.mkdir(parents=True, exist_ok=True)
    last, log_path = out / "last.safetensors", out / "train_log.jsonl"
    torch.manual_seed(cfg.seed)
    model = DenseObjectNet(cfg)
    if not last.exists():  # a resumed run's weights come from its checkpoint
        load_backbone_weights(model, cfg.backbone_weights or None)
    model.to(cfg.device)
    optimizer, scheduler = make_optimizer(model, cfg)
    sampler = make_sampler(views, cfg)
    aug_rng = np.random.default_rng([cfg.seed, 1])
    generators = {"pairs": sampler.rng, "pairs_torch": sampler.generator, "augment": aug_rng}
    start = 0
    if last.exists():
        start = load_checkpoint(last, model, optimizer, scheduler, cfg, generators)
        log.info("resuming from %s at step %d", last, start)
    lines = log_lines_before(log_path, start)
    save_json({"views": [str(v) for v in views], **dataclasses.asdict(cfg)}, out / "pretrain_config.json")
    model.train()
    with tqdm(total=cfg.steps, initial=start, desc="pretrain", disable=not progress) as bar, \
            stop_after_step() as stop:
        for step in range(start, cfg.steps):
            pairs = [augment_pair(sampler.sample(), aug_rng, cfg.crop_min, cfg.rotate, cfg.jitter,
                                  cfg.random_background) for _ in range(cfg.batch_pairs)]
            batch = {k: v.to(cfg.device) for k, v in collate_pairs(pairs).items()}
            stats = train_step(model, optimizer, batch, cfg)
            scheduler.step()
            lines.append(json.dumps({"step": step, "lr": scheduler.get_last_lr()[0], **stats}))
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            bar.update(1)
            if (step + 1) % checkpoint_every == 0 or step + 1 == cfg.steps or stop:
                atomic_write_bytes(log_path, ("\n".join(lines) + "\n").encode())
                save_checkpoint(last, model, cfg, step + 1, optimizer, scheduler, generators)
            if stop:
                raise Interrupted(f"saved {last} at step {step + 1} of {cfg.steps}")
    save_checkpoint(out / "don.safetensors", model, cfg, cfg.steps)
    plot_curves(log_path, out / "train_curves.png")
    losses = [json.loads(ln)["loss"] for ln in lines]
    k = max(1, len(losses) // 10)  # loss averaged over the first and the last tenth of the steps
    return {"steps": cfg.steps, "resumed_from": start, "loss_first": float(np.mean(losses[:k])),
            "loss_last": float(np.mean(losses[-k:])), "out": str(out)}


def load_don(don: str | Path) -> DenseObjectNet:
    """The trained network of a `pretrain` run (`don.safetensors`), in eval mode."""
    path = Path(don) / "don.safetensors"
    cfg = load_checkpoint_config(path)
    model = DenseObjectNet(cfg)
    load_checkpoint(path, model)
    return model.eval()


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


