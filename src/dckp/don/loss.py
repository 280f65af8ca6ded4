"""The pixelwise contrastive loss of Dense Object Nets, and one optimiser step on a batch of pairs.

For a pair (I_a, I_b) with descriptor images f_a, f_b of D channels, the distance of pixels u in I_a and v in
I_b is normalised by sqrt(D):

    d(u, v) = ||f_a(u) - f_b(v)||_2 / sqrt(D)

so d^2 is the mean squared difference per channel and margins mean the same for every D. With m matches
(u_a^i, u_b^i) from the sampled object's mask in I_a, and for each match n object non-matches v^ij from the
object's mask in I_b and n background non-matches w^ij from the rest of I_b (each paired with u_a^i):

    L_match      = (1/m) sum_i d(u_a^i, u_b^i)^2
    L_object     = (1/N_o) sum_ij max(0, M_object - d(u_a^i, v^ij))^2
    L_background = (1/N_b) sum_ij max(0, M_background - d(u_a^i, w^ij))^2
    L            = L_match + L_object + L_background

N_o (N_b) is the number of valid object (background) non-matches, or, with `normalise_hard_negatives`, the
number of hard negatives among them: those with a non-zero hinge (at least 1), as in the authors' released
code. Over a batch the sums and counts run over all valid entries of all pairs (m is the total of valid
matches). Descriptors are read at subpixel (u, v) by bilinear interpolation of the 4 neighbouring pixels
(`dckp.metrics.sample_descriptors`, shared with the correspondence measures). d at exactly
zero has gradient 0 (torch's norm), so identical descriptors give no push apart but no NaN either.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import record_function

from dckp.distributed import all_reduce_sum, world_size
from dckp.don.config import DonConfig
from dckp.metrics import sample_descriptors

BATCH_KEYS = ("uv_a", "uv_b", "match_valid", "nm_object", "nm_object_valid", "nm_background", "nm_background_valid")


def _non_match_hinges(f_a, desc_b, uv, valid, margin, D):
    f_nm = sample_descriptors(desc_b, uv.flatten(1, 2)).unflatten(1, uv.shape[1:3])  # (B, m, n, D)
    d = torch.linalg.vector_norm(f_a[:, :, None] - f_nm, dim=-1) / D**0.5
    hinge = torch.where(valid, (margin - d).clamp(min=0) ** 2, 0)
    return hinge, valid & (hinge > 0)


def contrastive_loss(desc_a, desc_b, uv_a, uv_b, match_valid, nm_object, nm_object_valid, nm_background,
                     nm_background_valid, cfg: DonConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss above for a batch of B pairs, padded to m matches per pair.

    desc_a, desc_b: `(B, D, H, W)`; uv_a, uv_b: `(B, m, 2)` pixel coordinates (col, row); match_valid `(B, m)`;
    nm_object, nm_background: `(B, m, n, 2)` pixels of I_b, each the non-match of match i, with validity
    `(B, m, n)`. Returns the loss and 0-d tensors (detached, on the loss's device: nothing is read back to the
    host, so a GPU step never waits) `match`, `object`, `background` (the three terms) and `hard_object`,
    `hard_background` (fraction of valid non-matches with a non-zero hinge).

    In a data-parallel run (`dckp.distributed`) each process holds part of the batch: the counts that divide the
    sums are those of the whole batch, so the processes' losses add up to the whole batch's loss, and the parts
    returned are the whole batch's."""
    D = desc_a.shape[1]
    f_a = sample_descriptors(desc_a, uv_a)
    f_b = sample_descriptors(desc_b, uv_b)
    d2 = torch.where(match_valid, ((f_a - f_b) ** 2).sum(-1) / D, 0)
    valid_obj = nm_object_valid & match_valid[..., None]
    valid_bg = nm_background_valid & match_valid[..., None]
    h_obj, hard_obj = _non_match_hinges(f_a, desc_b, nm_object, valid_obj, cfg.margin_object, D)
    h_bg, hard_bg = _non_match_hinges(f_a, desc_b, nm_background, valid_bg, cfg.margin_background, D)
    hard = cfg.normalise_hard_negatives
    counts = all_reduce_sum(torch.stack([match_valid.sum(), (hard_obj if hard else valid_obj).sum(),
                                         (hard_bg if hard else valid_bg).sum(), hard_obj.sum(), valid_obj.sum(),
                                         hard_bg.sum(), valid_bg.sum()]))
    terms = torch.stack([d2.sum(), h_obj.sum(), h_bg.sum()]) / counts[:3].clamp(min=1)
    whole = all_reduce_sum(terms.detach()).double()
    hard_parts = counts[3::2].double() / counts[4::2].clamp(min=1)
    parts = {"match": whole[0], "object": whole[1], "background": whole[2],
             "hard_object": hard_parts[0], "hard_background": hard_parts[1]}
    return terms.sum(), parts


def make_optimizer(model: nn.Module, cfg: DonConfig):
    """Adam with L2 weight decay (as the authors' code) and a StepLR schedule: lr x lr_decay every
    lr_decay_every steps (call `scheduler.step()` once after each `train_step`)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_decay_every, gamma=cfg.lr_decay)


def collate_pairs(pairs: list[dict]) -> dict[str, torch.Tensor]:
    """Stack augmented pairs (`augment_pair` output) into a batch, padding matches with `match_valid`."""
    m = max(len(p["uv_a"]) for p in pairs)
    batch = {"image_a": torch.stack([p["image_a"] for p in pairs]),
             "image_b": torch.stack([p["image_b"] for p in pairs])}
    for key in BATCH_KEYS:
        if key == "match_valid":
            rows = [torch.ones(len(p["uv_a"]), dtype=torch.bool) for p in pairs]
        else:
            rows = [p[key] for p in pairs]
        batch[key] = torch.stack([torch.cat([r, r.new_zeros((m - len(r), *r.shape[1:]))]) for r in rows])
    return batch


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               cfg: DonConfig) -> dict[str, float]:
    """One optimiser step on a batch: `image_a`, `image_b` `(B, 3, H, W)` in [0, 1] and the `BATCH_KEYS`
    tensors of `contrastive_loss` (see `collate_pairs`), all on the model's device. Both images of every pair
    go through the model in one forward pass (shared batch-norm statistics), under bf16 autocast with `cfg.bf16`.
    Its phases are labelled `forward`, `loss`, `backward` and `optim` for torch.profiler
    (benchmarks/train_step_profile.py).
    Returns `loss` and its parts as 0-d tensors (of the whole batch in a data-parallel run, where `model` is
    DDP-wrapped); reading them (`.item()`) waits for the device, so a loop reads them every few steps."""
    model.train()
    B = batch["image_a"].shape[0]
    images = torch.cat([batch["image_a"], batch["image_b"]])
    with record_function("forward"), torch.autocast(images.device.type, torch.bfloat16, enabled=cfg.bf16):
        desc = model(images)
    with record_function("loss"):
        loss, parts = contrastive_loss(desc[:B].float(), desc[B:].float(), *(batch[k] for k in BATCH_KEYS), cfg)
    with record_function("backward"):
        optimizer.zero_grad(set_to_none=True)
        (loss * world_size()).backward()  # DDP averages the processes' gradients: this makes it their sum
    with record_function("optim"):
        optimizer.step()
    return {"loss": parts["match"] + parts["object"] + parts["background"], **parts}
