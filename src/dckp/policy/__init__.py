"""Behaviour-cloning policy: an LSTM predicting the mean of a fixed-variance Gaussian over actions."""

from dckp.policy.config import POLICY_PRESETS, PolicyConfig, action_std
from dckp.policy.model import LSTMPolicy, nll, proprioception
from dckp.policy.train import load_policy, save_policy, train_policy

__all__ = [
    "POLICY_PRESETS", "LSTMPolicy", "PolicyConfig", "action_std", "load_policy", "nll", "proprioception",
    "save_policy", "train_policy",
]
