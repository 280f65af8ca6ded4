"""`rnn-gmm`: robomimic's BC-RNN-GMM (robomimic `config/bc_config.py`, `scripts/generate_paper_configs.py`).

An LSTM over the observations, trained on windows of `seq_len` (10) steps from a zero state, whose output gives a
Gaussian mixture over the action: `modes` (5) components with means squashed by tanh into [-1, 1], standard
deviations `softplus(x) + min_std` and mixture logits. The loss is the mixture's negative log-likelihood. A head
that predicts one action averages two demonstrated branches (grasp the nut from one side or the other); a mixture
keeps both. In control the LSTM restarts from a zero state every `seq_len` steps, and with `low_noise_eval` each
component's std is `min_std`, so an action is the mean of a component drawn by the mixture weights (robomimic's
rollout policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from dckp.config import option
from dckp.errors import DckpError
from dckp.policy.heads.base import Head, masked_mean


@dataclass
class GMMOptions:
    """robomimic's low-dim BC-RNN-GMM defaults: 2 x 400 LSTM, 10-step windows, 5 modes, min std 1e-4."""

    hidden: int = option(400, "rnn-gmm head: LSTM width")
    layers: int = option(2, "rnn-gmm head: LSTM layers")
    seq_len: int = option(10, "rnn-gmm head: training window in steps; control restarts the LSTM this often")
    modes: int = option(5, "rnn-gmm head: Gaussian mixture components")
    min_std: float = option(1e-4, "rnn-gmm head: lower bound of each component's std (action units)")
    low_noise_eval: bool = option(True, "rnn-gmm head: in control, each component's std is min_std (robomimic)")

    def __post_init__(self):
        for name in ("hidden", "layers", "seq_len", "modes"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not self.min_std > 0:
            raise DckpError(f"must be > 0, got {self.min_std}", field="min_std")


def gmm_nll(logits: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-step negative log-likelihood `(...)` of `actions (..., A)` under the mixture of `logits (..., K)` with
    diagonal Gaussians `means, stds (..., K, A)`: `-logsumexp_k [log softmax(logits)_k + log N(a; mu_k, s_k)]`."""
    component = torch.distributions.Normal(means, stds).log_prob(actions.unsqueeze(-2)).sum(-1)
    return -torch.logsumexp(functional.log_softmax(logits, -1) + component, -1)


class RNNGMMHead(Head):
    name = "rnn-gmm"
    options = GMMOptions

    def __init__(self, obs_dim: int, action_dim: int, options: GMMOptions):
        super().__init__(obs_dim, action_dim, options)
        self.lstm = nn.LSTM(obs_dim, options.hidden, num_layers=options.layers, batch_first=True)
        self.out = nn.Linear(options.hidden, options.modes * (2 * action_dim + 1))
        self.generator = torch.Generator()
        self.reset()

    @classmethod
    def window(cls, options: GMMOptions) -> tuple[int, int, int]:
        return options.seq_len, 0, 0

    def forward(self, obs: torch.Tensor, state=None):
        """`obs (B, T, F)` -> mixture `logits (B, T, K)`, `means`, `stds (B, T, K, A)`, and the LSTM state."""
        out, state = self.lstm(obs, state)
        K, A = self.opts.modes, self.action_dim
        params = self.out(out)
        means = torch.tanh(params[..., : K * A]).unflatten(-1, (K, A))
        stds = functional.softplus(params[..., K * A: 2 * K * A]).unflatten(-1, (K, A)) + self.opts.min_std
        return params[..., 2 * K * A:], means, stds, state

    def loss(self, batch):
        logits, means, stds, _ = self(batch["obs"])
        return masked_mean(gmm_nll(logits, means, stds, batch["action"]), batch["mask"])

    def reset(self) -> None:
        self.state, self.steps = None, 0
        self.generator.manual_seed(0)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        if self.steps % self.opts.seq_len == 0:
            self.state = None
        logits, means, stds, self.state = self(obs[:, None], self.state)
        self.steps += 1
        logits, means, stds = logits[:, 0].cpu(), means[:, 0].cpu(), stds[:, 0].cpu()
        k = torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[:, 0]
        rows = torch.arange(len(k))
        std = torch.full_like(stds[rows, k], self.opts.min_std) if self.opts.low_noise_eval else stds[rows, k]
        noise = torch.randn(means[rows, k].shape, generator=self.generator)
        return (means[rows, k] + std * noise).clamp(-1.0, 1.0).to(obs.device)
