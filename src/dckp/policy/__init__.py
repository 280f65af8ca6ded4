"""Behaviour-cloning policy: an LSTM predicting the mean of a fixed-variance Gaussian over actions.

Names are imported on first use, so `dckp.policy.config` loads without torch (the CLI builds its flags from it)."""

import importlib

_EXPORTS = {
    "dckp.policy.config": ("POLICY_PRESETS", "PolicyConfig", "action_std"),
    "dckp.policy.model": ("LSTMPolicy", "nll", "proprioception"),
    "dckp.policy.train": ("load_policy", "save_policy", "train_policy"),
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'dckp.policy' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE[name]), name)
