"""Dense Object Net: model, pixelwise contrastive loss, correspondence metrics and checkpoints."""

from dckp.don.checkpoint import load_checkpoint, load_checkpoint_config, save_checkpoint
from dckp.don.config import BACKBONES, DON_PRESETS, DonConfig
from dckp.don.loss import BATCH_KEYS, collate_pairs, contrastive_loss, make_optimizer, sample_descriptors, train_step
from dckp.don.metrics import correspondence_metrics
from dckp.don.model import DenseObjectNet, load_backbone_weights

__all__ = [
    "BACKBONES", "BATCH_KEYS", "DON_PRESETS", "DenseObjectNet", "DonConfig", "collate_pairs", "contrastive_loss",
    "correspondence_metrics", "load_backbone_weights", "load_checkpoint", "load_checkpoint_config",
    "make_optimizer", "sample_descriptors", "save_checkpoint", "train_step",
]
