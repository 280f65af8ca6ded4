"""Dense Object Net: model, pixelwise contrastive loss, correspondence metrics and checkpoints.

Names are imported on first use, so `dckp.don.config` loads without torch (the CLI builds its flags from it)."""

import importlib

_EXPORTS = {
    "dckp.don.checkpoint": ("load_checkpoint", "load_checkpoint_config", "save_checkpoint"),
    "dckp.don.config": ("BACKBONES", "DON_PRESETS", "DonConfig"),
    "dckp.don.loss": ("BATCH_KEYS", "collate_pairs", "contrastive_loss", "make_optimizer", "sample_descriptors",
                      "train_step"),
    "dckp.don.metrics": ("correspondence_metrics",),
    "dckp.don.model": ("DenseObjectNet", "load_backbone_weights"),
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'dckp.don' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE[name]), name)
