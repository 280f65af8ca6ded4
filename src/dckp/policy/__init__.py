"""Behaviour-cloning policy: an encoder and an LSTM predicting the mean of a fixed-variance Gaussian over actions.

Names are imported on first use, so `dckp.policy.config` loads without torch (the CLI builds its flags from it)."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.policy.config": ("POLICY_PRESETS", "PolicyConfig", "action_std"),
    "dckp.policy.folder": ("load_run", "load_visuomotor_policy"),
    "dckp.policy.model": ("LSTMPolicy", "VisuomotorPolicy", "nll", "observation_frames", "proprioception"),
    "dckp.policy.train": ("load_policy", "save_policy", "train_policy"),
})
