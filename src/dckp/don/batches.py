"""The training batches of DON pretraining, drawn beside the training loop by DataLoader worker processes.

The pairs of step s are a pure function of the seed and s: pair j of the step (j counts over every process of a
data-parallel run, process r taking j = r*b .. r*b+b-1 for b = `batch_pairs`) is drawn and augmented with
generators seeded (seed, s, j) alone. So a run resumed at step s draws exactly the pairs it would have drawn, any
number of workers (0: in the training process) gives the same batches, and N processes of b pairs train on the
pairs of one process of N*b pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from dckp.don.augment import augment_pair
from dckp.don.config import DonConfig
from dckp.don.loss import collate_pairs
from dckp.don.pairs import PairSampler
from dckp.errors import DckpError


def make_sampler(views: list[str], cfg: DonConfig) -> PairSampler:
    return PairSampler(views, cfg.n_matches, cfg.n_non_matches, cfg.n_non_matches, cfg.min_pose_translation,
                       cfg.min_pose_rotation_deg, 0.0 if cfg.prior_work else cfg.arm_fraction, seed=cfg.seed,
                       prior_work=cfg.prior_work)


class StepBatches(torch.utils.data.Dataset):
    """Item s: the collated batch (`collate_pairs`) of process `rank` at step s. Each process (the training one,
    or a worker) opens the view files on first use."""

    def __init__(self, views: list[str], cfg: DonConfig, rank: int = 0):
        self.views, self.cfg, self.rank = [str(v) for v in views], cfg, rank
        self.sampler: PairSampler | None = None

    def __len__(self) -> int:
        return self.cfg.steps

    def pair(self, step: int, index: int) -> dict:
        """Pair `index` of step `step`, augmented."""
        if self.sampler is None:
            self.sampler = make_sampler(self.views, self.cfg)
        draw, augment = np.random.SeedSequence([self.cfg.seed, step, index]).spawn(2)
        rng = np.random.default_rng(draw)
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        c = self.cfg
        return augment_pair(self.sampler.sample(rng, generator), np.random.default_rng(augment), c.crop_min, c.rotate,
                            c.jitter, c.random_background)

    def __getitem__(self, step: int) -> dict:
        """The batch; or, for bad input, `{"error": (message, path, field)}` of its DckpError, which `checked`
        raises again (a DataLoader would raise it from a worker with the worker's traceback in its message)."""
        b = self.cfg.batch_pairs
        try:
            return collate_pairs([self.pair(step, self.rank * b + i) for i in range(b)])
        except DckpError as e:
            return {"error": (e.message, e.path, e.field)}


def checked(batch: dict) -> dict[str, torch.Tensor]:
    """A batch of `StepBatches`, or its bad input's DckpError raised (one line, naming the file)."""
    if "error" in batch:
        raise DckpError(*batch["error"])
    return batch


def batch_loader(views: list[str], cfg: DonConfig, start: int = 0, rank: int = 0) -> torch.utils.data.DataLoader:
    """The batches of steps start .. cfg.steps - 1, in order, from `cfg.workers` worker processes (0: drawn in
    this process), pinned for a GPU. The loader has a generator of its own: making its iterator draws a seed, which
    from torch's global one would leave a resumed run (one more iterator) with another global state in its
    checkpoints than a run straight through."""
    return torch.utils.data.DataLoader(StepBatches(views, cfg, rank), batch_size=None,
                                       sampler=range(start, cfg.steps), num_workers=cfg.workers,
                                       pin_memory=cfg.device.startswith("cuda"),
                                       prefetch_factor=4 if cfg.workers else None,
                                       generator=torch.Generator().manual_seed(cfg.seed))
