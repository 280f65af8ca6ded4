"""Settings of the pretrained representation baselines (beta-VAE, Transporter, MONet) with `cpu` and `paper` presets.

Light (no torch), so that `dckp pretrain-representation --help` starts fast: the method modules (`bvae`,
`transporter`, `monet`) take their config classes and presets from here. Defaults follow the BASK authors'
released code (robot-learning-freiburg/bask, `src/config.py` and `src/pretrain.py`) where the issue does not say;
docs/representations.md lists the departures.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass

from dckp.config import _scalar, _show, apply_args, check_device, option, parse_bool, preset
from dckp.errors import DckpError

METHODS = ("bvae", "transporter", "monet")


@dataclass
class RepresentationConfig:
    """What every method's pretraining shares: the image size, Adam and the batches."""

    image_size: int = option(64, "training image side in pixels: the stored frames resized to it (half the "
                             "camera's, as the authors)")
    steps: int = option(5000, "optimiser steps (a resumed run may raise it)")
    batch: int = option(16, "images (or image pairs, transporter) per step and process")
    lr: float = option(1e-4, "Adam learning rate")
    seed: int = option(0, "seed of the initialisation, the batches and the sampling noise")
    device: str = option("cpu", "where training runs: cpu, cuda or cuda:N (frames are read on the CPU)")

    def __post_init__(self):
        if self.image_size < 16 or self.image_size % 16:
            raise DckpError(f"must be a multiple of 16 and >= 16, got {self.image_size}", field="image_size")
        for name in ("steps", "batch"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not self.lr > 0:
            raise DckpError(f"must be > 0, got {self.lr}", field="lr")
        check_device(self.device)


def _positive(cfg, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise DckpError(f"must be > 0, got {getattr(cfg, name)}", field=name)


@dataclass
class BvaeConfig(RepresentationConfig):
    """beta-VAE: 4 convolutions (kernel 4, stride 2) with BatchNorm and ReLU, a fully connected layer, the latent."""

    latent_dim: int = option(32, "latent dimension (per slot for monet): the policy reads the latent means")
    conv_channels: int = option(32, "channels of each of the 4 convolutions (and of the mirrored decoder)")
    hidden: int = option(128, "width of the fully connected layer before the latent")
    beta: float = option(1.5, "weight of the KL term of the latent")

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "latent_dim", "conv_channels", "hidden", "beta")


@dataclass
class TransporterConfig(RepresentationConfig):
    """Transporter: feature and keypoint networks of 4 conv blocks, Gaussian keypoint maps, a refine network."""

    keypoints: int = option(10, "keypoints: the policy reads their (x, y), 2 x keypoints features per camera")
    keypoint_std: float = option(0.1, "std of the Gaussian keypoint maps, in image-normalised units ([-1, 1])")
    block_channels: list[int] = option([32, 32, 64, 128], "channels of the 4 conv blocks of the "
                                       "feature and keypoint networks (kernels 7, 3, 3, 3; strides 1, 1, 2, 1)")
    max_gap: int = option(20, "a pair's two frames are at most this many steps apart in one demonstration")

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "keypoints", "keypoint_std", "max_gap")
        if len(self.block_channels) != 4 or min(self.block_channels) < 1:
            raise DckpError(f"must be 4 positive numbers, got {self.block_channels}", field="block_channels")


@dataclass
class MonetConfig(RepresentationConfig):
    """MONet: an attention U-Net of masks, a component VAE per slot (one for the first slot, one for the others)."""

    slots: int = option(6, "slots (attention steps): the policy reads slots x latent_dim features per camera")
    latent_dim: int = option(16, "latent dimension (per slot for monet): the policy reads the latent means")
    attention_channels: int = option(64, "channels of the attention U-Net's first block (doubled per level to 8x)")
    vae_channels: int = option(32, "channels of the component VAE's convolutions (its encoder's last two: 2x)")
    beta: float = option(0.5, "weight of the KL term of the latent")
    gamma: float = option(0.5, "weight of the KL between the attention masks and the decoded masks")
    sigma_bg: float = option(0.09, "pixel std of the first (background) slot's components")
    sigma_fg: float = option(0.12, "pixel std of the other slots' components")

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "latent_dim", "attention_channels", "vae_channels", "beta", "gamma", "sigma_bg", "sigma_fg")
        if self.slots < 2:
            raise DckpError(f"must be >= 2, got {self.slots}", field="slots")
        if self.image_size < 32:  # the attention U-Net's bottom (image_size / 16) needs 2 x 2 for instance norm
            raise DckpError(f"monet needs images of 32 px or more, got {self.image_size}", field="image_size")


# The authors train every representation on 128 px images (their 256 px frames halved), 16 images per step, for
# 1e5 steps (pretrain.py's default), with Adam at 1e-4 (beta-VAE, MONet) or 5e-4 (Transporter): the `paper`
# presets. On an H200 a paper step took 6, 13 and 67 ms (beta-VAE, Transporter, MONet; random images, no data
# reading): about 10, 22 and 112 min for 1e5 steps. The `cpu` presets halve the images too (64 px: our 128 px
# frames halved) and are sized to use most of the half hour per method that 2 CPU cores allow: on this 2-core
# machine, quiet, 2 torch threads, lift's data, a step took 0.043 s (beta-VAE, batch 16), 0.106 s (Transporter,
# batch 8) and 0.19 s (MONet, batch 8, narrowed), so 30000, 12000 and 7000 steps take about 22, 21 and 22 min.
# At a third of those steps (10000, 5000, 3000) every loss was still falling (results/representations.md). The
# beta-VAE and MONet learn at 1e-3, 10x the authors' rate, to get somewhere in so few steps (a choice, not compared
# on lift/stack data); MONet's networks are narrowed 4x (attention U-Net) and 2x (component VAEs), a full-width
# step being about 5x slower; Transporter keeps the authors' widths at half their batch.
BVAE_PRESETS = {
    "paper": BvaeConfig(image_size=128, steps=100_000),
    "cpu": BvaeConfig(image_size=64, steps=30_000, lr=1e-3),
}
TRANSPORTER_PRESETS = {
    "paper": TransporterConfig(image_size=128, steps=100_000, lr=5e-4),
    "cpu": TransporterConfig(image_size=64, steps=12_000, lr=5e-4, batch=8),
}
MONET_PRESETS = {
    "paper": MonetConfig(image_size=128, steps=100_000),
    "cpu": MonetConfig(image_size=64, steps=7000, lr=1e-3, batch=8, attention_channels=16, vae_channels=16),
}
PRESETS: dict[str, dict[str, RepresentationConfig]] = {
    "bvae": BVAE_PRESETS, "transporter": TRANSPORTER_PRESETS, "monet": MONET_PRESETS}


def method_presets(method: str) -> dict[str, RepresentationConfig]:
    """The presets of a method; DckpError naming `--method` for an unknown one."""
    if method not in PRESETS:
        raise DckpError(f"unknown method {method!r}; choose from {list(METHODS)}", field="--method")
    return PRESETS[method]


def _fields() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Every config field name, with the methods (and their field) that have it, in METHODS order."""
    out: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for method in METHODS:
        for f in dataclasses.fields(type(PRESETS[method]["cpu"])):
            out.setdefault(f.name, []).append((method, f))
    return out


def add_representation_args(parser: argparse.ArgumentParser) -> None:
    """One flag per field of any method's config; its help gives each method's `cpu` value, and `paper`'s where
    it differs (a flag that the chosen method does not have is an error, see `config_from_args`)."""
    group = parser.add_argument_group("method settings (override the preset; each applies to the methods listed)")
    for name, owners in _fields().items():
        method, f = owners[0]
        types = {str(typing.get_type_hints(type(PRESETS[m]["cpu"]))[name]) for m, _ in owners}
        if len(types) > 1 or len({g.metadata["help"] for _, g in owners}) > 1:
            raise ValueError(f"setting {name!r} differs in type or help between {[m for m, _ in owners]}")
        tp = typing.get_type_hints(type(PRESETS[method]["cpu"]))[name]
        shown: dict[str, list[str]] = {}  # "cpu value (paper value)" -> the methods with it
        for m, _ in owners:
            cpu, paper = getattr(PRESETS[m]["cpu"], name), getattr(PRESETS[m]["paper"], name)
            shown.setdefault(_show(cpu) + (f" (paper: {_show(paper)})" if paper != cpu else ""), []).append(m)
        if len(shown) == 1 and len(owners) == len(METHODS):
            default = next(iter(shown))
        else:
            default = "; ".join(f"{'/'.join(ms)}: {v}" for v, ms in shown.items())
        kwargs = {"dest": name, "default": None,
                  "help": f"{f.metadata['help']} (default: {default})".replace("%", "%%")}
        flag = "--" + name.replace("_", "-")
        if tp is bool:
            group.add_argument(flag, type=parse_bool, metavar="{true,false}", **kwargs)
        elif typing.get_origin(tp) in (list, tuple):
            group.add_argument(flag, type=typing.get_args(tp)[0], nargs="+", **kwargs)
        else:
            group.add_argument(flag, type=_scalar(tp), **kwargs)


def config_from_args(method: str, preset_name: str, args: argparse.Namespace) -> RepresentationConfig:
    """The method's preset with the flags the user gave; a flag of another method's settings is an error."""
    cfg = preset(method_presets(method), preset_name)
    names = {f.name for f in dataclasses.fields(cfg)}
    for name in _fields():
        if name not in names and getattr(args, name, None) is not None:
            raise DckpError(f"not a setting of {method}", field="--" + name.replace("_", "-"))
    return apply_args(cfg, args)
