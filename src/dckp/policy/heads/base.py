"""The policy-head interface and its registry.

A head maps normalised observations (an encoder's features with the proprioception appended, see
`dckp.policy.model.Normaliser`) to actions. Every head is a subclass of `Head` with a class attribute `name`;
defining the subclass registers it (as encoders do), and the CLI's `--head` choices and flags, `dckp run` and
`dckp table` derive from the registry. A new head is one new module in this package. A head declares:

- `options`: the dataclass of its own settings (CLI flags; saved in `policy.json`);
- `window(options)`: how training samples its batches: `(length, before, after)`: windows of `length` steps
  (0: whole demonstrations, padded with a mask), which may start up to `before` steps before a demonstration's
  first step and end up to `after` steps after its last (those steps repeat the first or last step, as
  Diffusion Policy's sampler pads);
- `end_to_end`: whether an encoder trained with the policy can feed it (its loss backpropagates through
  features of every step of the window).

and implements `loss(batch)`, the training loss of a batch `{"obs" (B, T, F), "action" (B, T, A), "mask" (B, T)}`
of windows, `reset()` at an episode's start and `act(obs (1, F)) -> (1, A)` for one closed-loop step, in [-1, 1].
A head that samples (a GMM, diffusion) draws from its own generator, seeded at `reset()`, so an episode repeats.
`after_step()` runs after each optimiser step (an EMA of the weights).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from dckp.registry import Registry

_SUPPORT = {"base"}  # modules of this package that define no head


class Head(nn.Module):
    name: ClassVar[str | None] = None  # the registry key; a class without one (a base) is not registered
    options: ClassVar[type]
    end_to_end: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name:
            register(cls)

    def __init__(self, obs_dim: int, action_dim: int, options):
        super().__init__()
        self.obs_dim, self.action_dim, self.opts = int(obs_dim), int(action_dim), options

    @classmethod
    def window(cls, options) -> tuple[int, int, int]:
        """`(length, before, after)` of the training windows (see the module's docstring)."""
        raise NotImplementedError

    def fit(self, actions: torch.Tensor) -> None:
        """Called once before training with every demonstrated action `(N, A)`; most heads do nothing."""

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step; most heads do nothing."""


_REGISTRY: Registry[Head] = Registry(
    "head", __package__, Path(__file__).parent, _SUPPORT,
    lambda cls: "" if dataclasses.is_dataclass(getattr(cls, "options", None)) else "options is not a dataclass")
register, unregister = _REGISTRY.register, _REGISTRY.unregister
registry = _REGISTRY.all  # every head by name, the built-in ones and any registered since
head_class = _REGISTRY.get  # the head class registered as a name; DckpError for an unknown name


def masked_mean(per_step: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`sum(per_step * mask) / sum(mask)` over a batch's valid steps (`per_step`, `mask (B, T)`)."""
    mask = mask.to(per_step)
    return (per_step * mask).sum() / mask.sum()
