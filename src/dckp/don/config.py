"""Dense Object Net training config with `cpu` and `paper` presets."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import COMPILE_BACKENDS, check_compile, check_device, option
from dckp.errors import DckpError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass
class DonConfig:
    """backbone: torchvision ResNet at output stride 8; descriptor_dim: D; image_size: pixels (square).
    backbone_weights: local torchvision state dict (.safetensors, or .pt/.pth read with weights_only=True);
    "" = random init. Optimiser: Adam (lr, weight_decay as L2, like the authors' code); the lr is multiplied
    by lr_decay every lr_decay_every optimiser steps. batch_pairs: image pairs per step.
    n_matches: matches per pair; n_non_matches: non-matches per match, of each kind (object and background).
    margin_object, margin_background: hinge margins M on the distance normalised by sqrt(D) (see loss.py).
    normalise_hard_negatives: average each non-match term over its hard negatives (non-zero hinge) instead
    of over all non-matches. crop_min, rotate, jitter, random_background: augmentation (augment.py)."""

    backbone: str = option("resnet18", "torchvision ResNet, run at output stride 8", choices=BACKBONES)
    descriptor_dim: int = option(3, "descriptor dimension D")
    layers: int = option(4, "ResNet stages kept: 4 (all) or 3 (layer4 dropped: ~3x less compute at stride 8)",
                         choices=(3, 4))
    image_size: int = option(128, "training image height and width in pixels")
    backbone_weights: str = option("", "local torchvision ResNet weights (.safetensors, .pt/.pth); '' = random init")
    lr: float = option(1e-4, "Adam learning rate")
    weight_decay: float = option(1e-4, "L2 weight decay")
    lr_decay: float = option(0.9, "the learning rate is multiplied by this every lr_decay_every steps")
    lr_decay_every: int = option(250, "optimiser steps between learning-rate decays")
    batch_pairs: int = option(1, "image pairs per optimiser step")
    steps: int = option(3500, "optimiser steps (a resumed run may raise it)")
    n_matches: int = option(1000, "matches sampled per pair")
    n_non_matches: int = option(150, "non-matches per match, of each kind (object and background)")
    margin_object: float = option(0.25, "hinge margin for object non-matches (distance / sqrt(D))")
    margin_background: float = option(0.75, "hinge margin for background non-matches (distance / sqrt(D))")
    normalise_hard_negatives: bool = option(True, "average non-match terms over the hard negatives only")
    seed: int = option(0, "seed of initialisation, pair sampling and augmentation")
    crop_min: float = option(0.6, "augmentation: smallest random crop, as a fraction of the image side (1: none)")
    rotate: bool = option(True, "augmentation: random rotations")
    jitter: float = option(0.2, "augmentation: colour jitter strength (0: none)")
    random_background: bool = option(True, "augmentation: swap the background for random textures")
    min_pose_translation: float = option(0.2, "a pair's camera poses differ by more than this (m) ...")
    min_pose_rotation_deg: float = option(20.0, "... or more than this (degrees)")
    arm_fraction: float = option(0.1, "share of pairs drawn from arm-only sequences (the arm as its own object)")
    prior_work: bool = option(False, "the prior-work ablation: fixed-distance free cameras only, one foreground "
                              "mask for all objects, no arm-only data")
    device: str = option("cpu", "where training runs: cpu, cuda or cuda:N (pairs are always sampled on the CPU)")
    workers: int = option(0, "data-loader processes drawing pairs beside training (0: in the training process; "
                          "the same pairs either way)")
    bf16: bool = option(False, "bf16 autocast for the network (mixed precision; its effect on correspondence "
                        "accuracy: benchmarks/gpu.py)")
    compile: str = option("", "torch.compile the network with this backend ('' = off, inductor = torch's "
                          "compiler; what it buys: results/train_step_profile.md)", choices=COMPILE_BACKENDS)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise DckpError(f"unknown backbone {self.backbone!r}; choose from {list(BACKBONES)}", field="backbone")
        if self.layers not in (3, 4):
            raise DckpError(f"must be 3 or 4, got {self.layers}", field="layers")
        if self.image_size < 16:
            raise DckpError(f"must be >= 16, got {self.image_size}", field="image_size")
        for name in ("descriptor_dim", "lr_decay_every", "batch_pairs", "n_matches", "n_non_matches"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("lr", "margin_object", "margin_background"):
            if not getattr(self, name) > 0:
                raise DckpError(f"must be > 0, got {getattr(self, name)}", field=name)
        if self.steps < 1:
            raise DckpError(f"must be >= 1, got {self.steps}", field="steps")
        if self.weight_decay < 0:
            raise DckpError(f"must be >= 0, got {self.weight_decay}", field="weight_decay")
        if not 0 < self.lr_decay <= 1:
            raise DckpError(f"must be in (0, 1], got {self.lr_decay}", field="lr_decay")
        if not 0 < self.crop_min <= 1:
            raise DckpError(f"must be in (0, 1], got {self.crop_min}", field="crop_min")
        if not 0 <= self.arm_fraction <= 1:
            raise DckpError(f"must be in [0, 1], got {self.arm_fraction}", field="arm_fraction")
        check_device(self.device)
        check_compile(self.compile)
        if self.workers < 0:
            raise DckpError(f"must be >= 0, got {self.workers}", field="workers")
        if not 0 <= self.jitter < 1:
            raise DckpError(f"must be in [0, 1), got {self.jitter}", field="jitter")


DON_PRESETS = {
    # D=16: our choice within the small-D regime of Dense Object Nets (Florence et al., CoRL 2018), whose
    # released training.yaml (RobotLocomotion/pytorch-dense-correspondence) uses descriptor_dimension 3.
    # Optimiser schedule and 150 non-matches per match follow that training.yaml: lr 1e-4, weight decay 1e-4,
    # lr x0.9 every 250 of 3500 steps, 1 pair per step.
    "paper": DonConfig(backbone="resnet50", descriptor_dim=16, image_size=256, n_matches=5000, n_non_matches=150),
    # CPU scale, chosen by benchmarks/don_sweep.py (results/don_sweep.md: recipes compared at equal steps on
    # held-out stack scenes): resnet18 without layer4 (as accurate as with it, 3x cheaper), D=8, lr 1e-3 (1e-4
    # learned 2x slower from random init), 4 pairs per step (more pairs per step beat more steps of 1 pair), no
    # augmentation (all of it together cost 0.15-0.30 PCK@5% at lr 1e-4; at lr 1e-3 colour jitter plus
    # background swaps cost 0.1-0.2 and crops alone did not help). 5000 steps (20k pairs) took 45 min on one
    # core of this machine (the other core busy), ~23 min on two.
    "cpu": DonConfig(backbone="resnet18", layers=3, descriptor_dim=8, image_size=128, lr=1e-3, batch_pairs=4,
                     steps=5000, n_matches=500, n_non_matches=30, crop_min=1.0, rotate=False, jitter=0.0,
                     random_background=False),
}
