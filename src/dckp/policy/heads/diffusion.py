"""`diffusion`: Diffusion Policy (Chi et al. 2023) over low-dimensional features, as in its low-dim configs.

The last `obs_horizon` (2) observations condition a 1D temporal U-Net (FiLM-conditioned residual convolution
blocks, as Diffusion Policy's `ConditionalUnet1D`) that denoises a chunk of `horizon` (16) actions, starting at
the older observation's step. Training adds noise with `diffusers`' DDPM scheduler (squared-cosine betas,
`train_steps` levels) and regresses it; control samples with `diffusers`' DDIM scheduler in `sample_steps`
steps from the head's own generator, executes `action_steps` (8) actions of the chunk (from the current step on)
one per `act`, then plans again. Actions are scaled to [-1, 1] per dimension by the demonstrations' range; the
policy acts with an exponential moving average of the weights (`ema_power`, as Diffusion Policy's EMAModel).
Planning runs that network as frozen TorchScript (`torch.jit.freeze`): the same operations, so the same numbers,
with less overhead per call (a pass at batch 1 on 2 CPU threads: 1.9 against 3.0 ms; results/keypoint_latency.md).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from dckp.config import option
from dckp.errors import DckpError
from dckp.policy.heads.base import Head, masked_mean


@dataclass
class DiffusionOptions:
    """Diffusion Policy's low-dim settings (observation horizon 2, prediction 16, execute 8, EMA), with a U-Net
    narrower than its (256, 512, 1024) so that training fits a CPU."""

    obs_horizon: int = option(2, "diffusion head: observations conditioning each plan")
    horizon: int = option(16, "diffusion head: actions predicted per plan")
    action_steps: int = option(8, "diffusion head: actions executed before planning again")
    down_dims: list[int] = option([64, 128, 256], "diffusion head: U-Net channels per level")
    kernel_size: int = option(5, "diffusion head: temporal convolution width")
    train_steps: int = option(100, "diffusion head: DDPM noise levels in training")
    sample_steps: int = option(10, "diffusion head: DDIM denoising steps per plan")
    ema_power: float = option(0.75, "diffusion head: EMA decay 1 - (1 + step)^-power, at most 0.9999")

    def __post_init__(self):
        for name in ("obs_horizon", "horizon", "action_steps", "kernel_size", "train_steps", "sample_steps"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.obs_horizon - 1 + self.action_steps > self.horizon:
            raise DckpError(f"obs_horizon - 1 + action_steps ({self.obs_horizon - 1 + self.action_steps}) must be "
                            f"<= horizon ({self.horizon})", field="action_steps")
        if self.horizon % 2 ** (len(self.down_dims) - 1):
            raise DckpError(f"horizon ({self.horizon}) must be divisible by 2^(levels - 1) = "
                            f"{2 ** (len(self.down_dims) - 1)}", field="horizon")
        if not self.down_dims or min(self.down_dims) < 8 or any(d % 8 for d in self.down_dims):
            raise DckpError(f"need >= 1 level, each a multiple of 8 channels, got {self.down_dims}", field="down_dims")
        if not 0 < self.ema_power <= 1:
            raise DckpError(f"must be in (0, 1], got {self.ema_power}", field="ema_power")
        if self.sample_steps > self.train_steps:
            raise DckpError(f"must be <= train_steps ({self.train_steps})", field="sample_steps")


def _block(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(8, c_out), nn.Mish())


class _Residual(nn.Module):
    """Two convolution blocks, the first's output scaled and shifted by the condition (FiLM), plus a skip."""

    def __init__(self, c_in: int, c_out: int, cond: int, k: int):
        super().__init__()
        self.a, self.b = _block(c_in, c_out, k), _block(c_out, c_out, k)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, cond):
        scale, bias = self.film(cond)[..., None].chunk(2, 1)
        return self.b(self.a(x) * scale + bias) + self.skip(x)


class UNet1D(nn.Module):
    """Predicts the noise of `x (B, A, T)` at levels `t (B,)` given a condition `cond (B, C)`."""

    def __init__(self, action_dim: int, cond_dim: int, dims: list[int], k: int, embed: int = 64):
        super().__init__()
        self.embed = embed
        self.time = nn.Sequential(nn.Linear(embed, 4 * embed), nn.Mish(), nn.Linear(4 * embed, embed))
        cond = embed + cond_dim
        widths = [action_dim, *dims]
        self.down = nn.ModuleList(nn.ModuleList([
            _Residual(c_in, c_out, cond, k), _Residual(c_out, c_out, cond, k),
            nn.Conv1d(c_out, c_out, 3, 2, 1) if i < len(dims) - 1 else nn.Identity()])
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)))
        self.mid = nn.ModuleList([_Residual(dims[-1], dims[-1], cond, k), _Residual(dims[-1], dims[-1], cond, k)])
        self.up = nn.ModuleList(nn.ModuleList([
            _Residual(2 * c_out, c_in, cond, k), _Residual(c_in, c_in, cond, k),
            nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)])
            for c_in, c_out in reversed(list(zip(dims[:-1], dims[1:], strict=True))))
        self.final = nn.Sequential(_block(dims[0], dims[0], k), nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x, t, cond):
        half = self.embed // 2
        freq = torch.exp(-math.log(10000) * torch.arange(half, device=x.device) / (half - 1))
        angle = t.float()[:, None] * freq[None]
        cond = torch.cat([self.time(torch.cat([angle.sin(), angle.cos()], -1)), cond], -1)
        skips = []
        for res1, res2, down in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, up in self.up:
            x = up(res2(res1(torch.cat([x, skips.pop()], 1), cond), cond))
        return self.final(x)


class DiffusionHead(Head):
    name = "diffusion"
    options = DiffusionOptions
    end_to_end = False  # features of 16-step windows for every denoising step: train on frozen encoders

    def __init__(self, obs_dim: int, action_dim: int, options: DiffusionOptions):
        from diffusers import DDIMScheduler, DDPMScheduler  # imported here: diffusers takes seconds to import

        super().__init__(obs_dim, action_dim, options)
        self.net = UNet1D(action_dim, obs_dim * options.obs_horizon, options.down_dims, options.kernel_size)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        schedule = dict(num_train_timesteps=options.train_steps, beta_schedule="squaredcos_cap_v2",
                        clip_sample=True, prediction_type="epsilon")
        self.train_schedule, self.sample_schedule = DDPMScheduler(**schedule), DDIMScheduler(**schedule)
        self.sample_schedule.set_timesteps(options.sample_steps)
        self.register_buffer("action_low", -torch.ones(action_dim))
        self.register_buffer("action_high", torch.ones(action_dim))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.generator = torch.Generator()
        self.frozen: dict = {}  # (batch, device) -> the EMA network frozen for planning; emptied when it changes
        self.register_load_state_dict_post_hook(lambda module, keys: module.frozen.clear())
        self.reset()

    @classmethod
    def window(cls, options: DiffusionOptions) -> tuple[int, int, int]:
        return options.horizon, options.obs_horizon - 1, options.action_steps - 1

    def fit(self, actions: torch.Tensor) -> None:
        """Scale each action dimension's demonstrated range to [-1, 1] (a constant dimension: by 1)."""
        low, high = actions.min(0).values, actions.max(0).values
        flat = high - low < 1e-6
        self.action_low.copy_(torch.where(flat, low - 1, low))
        self.action_high.copy_(torch.where(flat, low + 1, high))

    def _scale(self, a):
        return (a - self.action_low) / (self.action_high - self.action_low) * 2 - 1

    def loss(self, batch):
        obs, actions = batch["obs"], self._scale(batch["action"]).transpose(1, 2)
        cond = obs[:, : self.opts.obs_horizon].flatten(1)
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.opts.train_steps, (len(actions),), device=actions.device)
        noisy = self.train_schedule.add_noise(actions, noise, t)
        per_step = functional.mse_loss(self.net(noisy, t, cond), noise, reduction="none").mean(1)
        return masked_mean(per_step, batch["mask"])

    @torch.no_grad()
    def after_step(self) -> None:
        self.ema_updates += 1
        decay = min(0.9999, 1 - (1 + self.ema_updates.item()) ** -self.opts.ema_power)
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            e.copy_(b)
        self.frozen.clear()

    def reset(self) -> None:
        self.history: list[torch.Tensor] = []
        self.queue: list[torch.Tensor] = []
        self.generator.manual_seed(0)

    def _apply(self, fn, *args, **kwargs):
        self.frozen.clear()  # `.to(device)`, `.double()`: freeze again from the moved weights
        return super()._apply(fn, *args, **kwargs)

    def denoiser(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor):
        """The EMA network frozen by TorchScript for inputs shaped as these, made at the first call after the
        weights changed (a training step, a load, a move)."""
        key = (len(x), x.device)
        if key not in self.frozen:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks TorchScript deprecated
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: one trace per batch size
                self.frozen[key] = torch.jit.freeze(torch.jit.trace(self.ema.eval(), (x, t, cond)))
        return self.frozen[key]

    @torch.no_grad()
    def plan(self, cond: torch.Tensor) -> torch.Tensor:
        """`(B, horizon, A)` actions sampled by DDIM from the EMA network for conditions `cond (B, obs_horizon F)`."""
        x = torch.randn((len(cond), self.action_dim, self.opts.horizon), generator=self.generator).to(cond)
        for t in self.sample_schedule.timesteps:
            level = torch.full((len(cond),), int(t), device=cond.device)
            eps = self.denoiser(x, level, cond)(x, level, cond)
            x = self.sample_schedule.step(eps, t, x).prev_sample
        scaled = (x.transpose(1, 2).clamp(-1, 1) + 1) / 2
        return scaled * (self.action_high - self.action_low) + self.action_low

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        self.history = (self.history or [obs] * self.opts.obs_horizon)[1:] + [obs]
        if not self.queue:
            chunk = self.plan(torch.cat(self.history, -1))
            first = self.opts.obs_horizon - 1
            self.queue = list(chunk[:, first: first + self.opts.action_steps].unbind(1))
        return self.queue.pop(0).clamp(-1.0, 1.0)
