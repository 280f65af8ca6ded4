"""Behaviour-cloning policy: an encoder, the proprioception and a head (`dckp.policy.heads`: the paper's LSTM,
robomimic's BC-RNN-GMM, Diffusion Policy).

Names are imported on first use, so `dckp.policy.config` loads without torch (the CLI builds its flags from it)."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.policy.config": ("POLICY_PRESETS", "PolicyConfig"),
    "dckp.policy.folder": ("load_run", "load_visuomotor_policy"),
    "dckp.policy.model": ("Policy", "VisuomotorPolicy", "observation_frames", "proprioception"),
    "dckp.policy.train": ("load_policy", "save_policy", "train_policy"),
})
