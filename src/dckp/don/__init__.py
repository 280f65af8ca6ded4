"""Dense Object Net: model, pixelwise contrastive loss and checkpoints (its correspondence metrics: `dckp.metrics`).

Names are imported on first use, so `dckp.don.config` loads without torch (the CLI builds its flags from it)."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.don.checkpoint": ("load_checkpoint", "load_checkpoint_config", "save_checkpoint"),
    "dckp.don.config": ("BACKBONES", "DON_PRESETS", "DonConfig"),
    "dckp.don.loss": ("BATCH_KEYS", "collate_pairs", "contrastive_loss", "make_optimizer", "train_step"),
    "dckp.don.model": ("DenseObjectNet", "load_backbone_weights"),
})
