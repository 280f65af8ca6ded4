"""Pretrained representation baselines: beta-VAE, Transporter and MONet (docs/representations.md).

`pretrain_representation` trains one into a run folder; `dckp.encoders.representations` reads that folder as a
frozen policy encoder. Names are imported on first use, so `dckp.representations.config` loads without torch."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.representations.train": ("load_representation", "pretrain_representation"),
    "dckp.representations.config": ("BvaeConfig", "MonetConfig", "PRESETS", "TransporterConfig"),
})
