"""Behaviour-cloning policy config: the training settings and the head with its options, with presets. Light:
torch is imported only when the head registry is read, so the CLI builds its flags from it quickly.

The head (`dckp.policy.heads`) is a name and the options of its own dataclass; `PolicyConfig.head_options` holds
them as a dict, so a preset can set them and `policy.json` records them. The presets:
- `cpu` and `paper`: the paper's protocol: the `lstm` head (128 and 256 wide), 1000-1500 Adam steps
  (`default_steps`), whole demonstrations, the last checkpoint;
- `converged`: robomimic's BC-RNN-GMM recipe: the `rnn-gmm` head on 10-step windows, batch 100, and the
  checkpoint with the best success over validation rollouts (seeds 2,000,000 on; one kept every 2000 steps);
  20000 Adam steps at 1e-3 (robomimic: 200k at 1e-4).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from dckp.config import COMPILE_BACKENDS, add_config_args, apply_args, check_compile, check_device, from_dict, option
from dckp.errors import DckpError

PROPRIO = ("joint_pos", "eef_pose")


def head_names() -> list[str]:
    """The registered heads' names, sorted."""
    from dckp.policy.heads.base import registry

    return sorted(registry())


@dataclass
class PolicyConfig:
    """Policy training (`dckp.policy.train`). `proprio` `eef_pose` is eef_pos 3 + eef_quat 4 (wxyz, w >= 0) +
    gripper_qpos 2 = 9 values, `joint_pos` the 7 joint angles (see `dckp.policy.proprioception`). With
    `val_every > 0`, a copy of the policy is kept every `val_every` steps and rolled out from `val_episodes`
    validation seeds in background processes while training goes on; the policy kept is the best of them."""

    head: str = option("lstm", "policy head: lstm (the paper's), rnn-gmm (robomimic's BC-RNN-GMM), diffusion "
                       "(Diffusion Policy)", choices=head_names)
    head_options: dict = option({}, "the head's options (flags of each head's own group below)")
    lr: float = option(3e-4, "Adam learning rate")
    weight_decay: float = option(3e-6, "Adam L2 weight decay")
    steps: int = option(1000, "Adam steps (train-policy without --steps with the cpu or paper preset: 1000 for "
                        "one-camera tasks, 1500 for the two-camera multi-object ones, 6000 for pick_place_clutter "
                        "with the cpu preset)")
    batch_size: int = option(16, "training windows (whole demonstrations for lstm's seq_len 0) per step, drawn "
                             "uniformly with replacement")
    proprio: str = option("eef_pose", "proprioception appended to the encoder's features", choices=PROPRIO)
    checkpoint_every: int = option(100, "steps between resumable checkpoints (policy_last.safetensors)")
    val_every: int = option(0, "steps between kept checkpoints rolled out on validation seeds (0: keep the last)")
    val_episodes: int = option(20, "validation rollouts per kept checkpoint (seeds 2,000,000 on)")
    val_workers: int = option(1, "processes running validation rollouts beside the training")
    seed: int = option(0, "seed of the network's initialisation and of the batches")
    device: str = option("cpu", "torch device of policy training: cpu or cuda (features are cached on the CPU)")
    compile: str = option("", "torch.compile a trainable encoder with this backend ('' = off, inductor = torch's "
                          "compiler; what it buys: results/train_step_profile.md)", choices=COMPILE_BACKENDS)

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "val_episodes", "val_workers"):
            if getattr(self, name) < 1:
                raise DckpError(f"{name} must be >= 1, got {getattr(self, name)}", field=name)
        if not self.lr > 0:
            raise DckpError(f"lr must be > 0, got {self.lr}", field="lr")
        for name in ("seed", "weight_decay", "val_every"):
            if getattr(self, name) < 0:
                raise DckpError(f"{name} must be >= 0, got {getattr(self, name)}", field=name)
        check_device(self.device)
        check_compile(self.compile)
        if self.proprio not in PROPRIO:
            raise DckpError(f"proprio must be one of {list(PROPRIO)}, got {self.proprio!r}", field="proprio")
        if not isinstance(self.head_options, dict):
            raise DckpError(f"expected an object, got {self.head_options!r}", field="head_options")

    def options(self):
        """The head's options dataclass, from `head_options` (defaults for the fields it leaves out); DckpError for
        an unknown head or a bad option. (Not checked on construction: the head registry imports torch.)"""
        from dckp.policy.heads.base import head_class

        cls = head_class(self.head)
        try:
            return from_dict(cls.options, self.head_options, source=f"{self.head} head options")
        except DckpError as e:
            raise DckpError(e.message, path=e.path, field="head_options") from None


# Tasks whose `cpu` policy needs more steps than the paper's. pick_place_clutter: with 40 demonstrations and 1500
# steps even ground-truth keypoints succeeded in 3 of 50 episodes; with the paper's 140 demonstrations (its cpu
# preset now) and 6000 steps, 6 of 20 on validation seeds (2,000,000+; 1500 steps: 0 of 20, 40 demonstrations and
# 6000 steps: 0 of 20).
CPU_STEPS = {"pick_place_clutter": 6000}


def default_steps(cameras: int, task: str = "", preset: str = "cpu") -> int:
    """The paper's training steps: 1000 for the one-camera (single-object) tasks, 1500 for the two-camera
    (multi-object) ones; more for the tasks in `CPU_STEPS` with the `cpu` preset; the preset's own for others."""
    if preset not in ("cpu", "paper"):
        return POLICY_PRESETS[preset].steps
    if preset == "cpu" and task in CPU_STEPS:
        return CPU_STEPS[task]
    return 1500 if cameras > 1 else 1000


POLICY_PRESETS = {
    "cpu": PolicyConfig(head="lstm", head_options={"hidden": 128, "layers": 2}, batch_size=16),
    "paper": PolicyConfig(head="lstm", head_options={"hidden": 256, "layers": 2}, batch_size=32),
    # robomimic's BC-RNN-GMM but for its 200k steps and so a higher learning rate: on nut_assembly's validation
    # seeds gt-kp reached 0/20 by 3000 steps at robomimic's 1e-4, and 4/20 at 2000, 8/20 at 5000 at 1e-3
    # (benchmarks/learner.py --lr; results/learner.md). 20000 steps, not 10000: on nut_assembly's 140 DART
    # demonstrations gt-kp's policy at 20000 steps succeeded in 0.95 of 100 validation seeds from 2,010,000, the
    # same run's at 10000 in 0.59 (`benchmarks/learner.py --steps 20000`; 53 min on 2 cores, validation included)
    # a kept checkpoint every 2000 steps, not 1000: on 11 of the learner benchmark's 13 validation curves the
    # best of the 1000-step checkpoints was one of the 2000-step ones (the other two: 1 of 20 rollouts apart), and
    # the rollouts cost more than the training for an encoder that runs a DON at each control step
    "converged": PolicyConfig(head="rnn-gmm", lr=1e-3, weight_decay=0.0, batch_size=100, steps=20000,
                              val_every=2000, val_episodes=20),
}


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """`PolicyConfig`'s flags (from the presets), then one flag per field of every head's options; a field that
    several heads share (hidden, layers, seq_len) is one flag, which sets the chosen head's."""
    from dckp.policy.heads.base import registry

    add_config_args(parser, PolicyConfig, POLICY_PRESETS, skip=("head_options",))
    seen: set[str] = set()
    for name, cls in sorted(registry().items()):
        fields = dataclasses.fields(cls.options)
        shared = [f"--{f.name.replace('_', '-')} (default {f.default})" for f in fields if f.name in seen]
        title = f"{name} head options" + (f"; it also takes {', '.join(shared)}, listed above" if shared else "")
        if {f.name for f in fields} - seen:
            add_config_args(parser, cls.options, title=title, skip=seen)
        seen |= {f.name for f in fields}


def policy_from_args(preset_name: str, args: argparse.Namespace) -> PolicyConfig:
    """The preset's config with the flags the user gave, head options included (a head option flag that the
    chosen head does not have is refused)."""
    from dckp.config import preset
    from dckp.policy.heads.base import head_class, registry

    cfg = apply_args(preset(POLICY_PRESETS, preset_name), args)
    if cfg.head != POLICY_PRESETS[preset_name].head:  # another head: its own defaults, not the preset's head's
        cfg = dataclasses.replace(cfg, head_options={})
    try:
        own = {f.name for f in dataclasses.fields(head_class(cfg.head).options)}
    except DckpError as e:
        raise DckpError(e.message, field="--head") from None
    for name, cls in registry().items():
        for f in dataclasses.fields(cls.options):
            if f.name not in own and getattr(args, f.name, None) is not None:
                raise DckpError(f"is an option of the {name} head, not of {cfg.head}",
                                field="--" + f.name.replace("_", "-"))
    options = apply_args(cfg.options(), args)
    return dataclasses.replace(cfg, head_options=dataclasses.asdict(options))
