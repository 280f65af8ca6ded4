"""A particle filter per keypoint over its 3D world position, fusing every camera and every time step (the
`dckp-filter` encoder, after BASK, von Hartz et al. 2023), and the confidence gate it is compared with.

Per keypoint `k` (a reference descriptor `r_k`), `P` particles `x_kp` in the world frame (metres). Each step gets,
per camera `c`, the descriptor distance image `d_ck(u, v)` of every pixel to every reference (as
`descriptor_distance`), the depth image, `K` and the camera-to-world pose.

- **Initialisation** (first step after `reset`): per camera `P / C` particles sampled from the tempered heatmap
  `softmax(-d_ck / T)` over the pixels with a valid depth, back-projected with their depth, plus the random-walk
  noise. Every camera proposes its hypotheses (a single camera's mode may be a symmetric twin or an occluder);
  the first update, with all cameras, weighs them.
- **Prediction:** with a gripper pose given (the wrist camera's), each particle first moves rigidly with the
  gripper's motion since the last step with probability `held_k`, the keypoint's probability of moving with the
  gripper; then a Gaussian random walk, `x += N(0, step^2 I)`. `held_k` starts at 0.05 (nothing is held at an
  episode's start); after each update it becomes the posterior of "held" against "not held", the followers' mean
  likelihood against the others' (while the gripper moved the keypoint's particles by more than a step), kept in
  [0.05, 0.95]. When the views tell (the keypoint was seen to move with the gripper, or to stay) it moves
  towards 1 or 0; while they do not (occluded) the likelihood is flat and it stays, so a cube carried out of
  sight is carried by its particles too.
- **Update:** each particle is projected into each camera, rounded to its pixel. Its log-likelihood in camera c
  is `-d_ck(pixel) / T - ((z - z_obs) / margin)^2 / 2` (descriptor match, and lying on the observed surface),
  unless the camera cannot see it: outside the image, behind the camera, or behind the observed surface
  (`z_obs < z - margin`); then it is the uninformative `-unseen / T`, the same for every particle, so that
  camera neither pulls nor pushes it. An invalid depth pixel (0) drops the surface term. The cameras'
  log-likelihoods add (independent views).
- **Estimate:** the weighted mean of the particles and their spread `sqrt(sum_p w_p |x_p - mean|^2)`, then
  systematic resampling (every step).

`unseen` is the descriptor distance an unseen particle is taken to have: above what a visible true point
shows (median 0.2 to 0.8 on the lift and stack DONs) and below what the background shows (median 2.3), so an
occluded point keeps its particles while particles that drifted onto visible background lose theirs.

Everything is batched tensor code over keypoints x particles x cameras on the inputs' device; the random numbers
come from the filter's own generator, seeded at `reset`, so a run is repeatable for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dckp.config import option
from dckp.errors import DckpError
from dckp.geometry.camera import project, transform, unproject


@dataclass
class FilterConfig:
    """The particle filter's settings (`dckp-filter` options)."""

    particles: int = option(256, "particles per keypoint of the dckp-filter particle filter")
    filter_step: float = option(0.01, "std (m) of the particle filter's random walk per control step")
    filter_temperature: float = option(0.15, "T of the particle filter's likelihood exp(-descriptor distance / T)")
    unseen_distance: float = option(1.0, "descriptor distance given to a particle a camera cannot see (outside "
                                         "the image or occluded): the uninformative likelihood")
    occlusion_margin: float = option(0.01, "m: a particle this far behind the observed surface is occluded; "
                                           "the std of the on-surface term")
    filter_seed: int = option(0, "seed of the particle filter's random generator (re-seeded at each episode)")

    def __post_init__(self):
        if not (isinstance(self.particles, int) and self.particles >= 2):
            raise DckpError(f"must be an integer >= 2, got {self.particles!r}", field="particles")
        for name in ("filter_step", "filter_temperature", "occlusion_margin"):
            if not getattr(self, name) > 0:
                raise DckpError(f"must be > 0, got {getattr(self, name)}", field=name)
        if not self.unseen_distance >= 0:
            raise DckpError(f"must be >= 0, got {self.unseen_distance}", field="unseen_distance")


def systematic_resample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`(K, P)` indices drawn by systematic resampling from the normalised `weights (K, P)`: one uniform offset per
    row, then `P` evenly spaced positions through the cumulative weights."""
    K, P = weights.shape
    offset = torch.rand(K, 1, generator=generator, device=weights.device, dtype=weights.dtype)
    positions = (offset + torch.arange(P, device=weights.device, dtype=weights.dtype)) / P
    cumulative = weights.cumsum(-1)
    cumulative[:, -1] = 1.0  # rounding must not leave the last position past the end
    return torch.searchsorted(cumulative, positions).clamp(max=P - 1)


def log_likelihood(points: torch.Tensor, dist: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                   pose: torch.Tensor, temperature: float, unseen: float, margin: float) -> torch.Tensor:
    """`(K, P)` log-likelihood of world points `(K, P, 3)` given, per camera, the descriptor distances
    `dist (C, K, H, W)`, `depth (C, H, W)`, `K (C, 3, 3)` and camera-to-world `pose (C, 4, 4)` (module doc)."""
    C, _, H, W = dist.shape
    cam = transform(torch.linalg.inv(pose)[:, None], points[None])  # (C, K, P, 3)
    uv, z = project(cam, K[:, None])
    px = uv.nan_to_num(-1.0).clamp(-2.0, max(H, W) + 1.0).round().long()
    u, v = px[..., 0], px[..., 1]
    inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    index = (v.clamp(0, H - 1) * W + u.clamp(0, W - 1)).flatten(1)  # (C, K * P)
    d = dist.flatten(2).gather(2, index.view(C, *z.shape[1:]))  # (C, K, P)
    seen = depth.flatten(1).gather(1, index).view_as(z)  # observed depth at each particle's pixel
    occluded = (seen > 0) & (seen < z - margin)
    surface = torch.where(seen > 0, ((z - seen) / margin) ** 2 / 2, torch.zeros_like(z))
    visible = -d / temperature - surface
    return torch.where(inside & ~occluded, visible, torch.full_like(z, -unseen / temperature)).sum(0)


HELD_MIN = 0.05  # a keypoint's probability of moving with the gripper stays in [HELD_MIN, 1 - HELD_MIN]


class ParticleFilter:
    """The particle filters of `K` keypoints, one `step` per frame; `reset` starts a new episode."""

    def __init__(self, cfg: FilterConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.particles: torch.Tensor | None = None  # (K, P, 3) world, equally weighted (resampled)
        self.generator: torch.Generator | None = None
        self.gripper: torch.Tensor | None = None  # (4, 4) the last step's pose of something moving with the gripper
        self.held: torch.Tensor | None = None  # (K,) each keypoint's probability of moving with the gripper

    def _initialise(self, dist, depth, K, pose) -> torch.Tensor:
        """`(K, P, 3)` particles sampled from every camera's tempered heatmap, back-projected with depth."""
        C, Kp, H, W = dist.shape
        P = self.cfg.particles
        valid = (depth > 0).flatten(1)[:, None]  # (C, 1, HW)
        logits = (-dist.flatten(2) / self.cfg.filter_temperature).masked_fill(~valid, -torch.inf)
        parts = []
        for c in range(C):
            n = P // C + (c < P % C)
            if not valid[c].any():  # no depth at all in this camera: it proposes nothing
                continue
            index = torch.multinomial(torch.softmax(logits[c], -1), n, replacement=True, generator=self.generator)
            uv = torch.stack([index % W, index // W], -1).to(dist.dtype)  # (K, n, 2)
            z = depth[c].flatten()[index]
            parts.append(transform(pose[c], unproject(uv, z, K[c])))
        if not parts:
            raise DckpError("no camera has a valid depth pixel to initialise the keypoint filter from", field="depth")
        points = torch.cat(parts, 1)
        if points.shape[1] < P:  # cameras without depth: the others propose their share too
            points = points[:, torch.arange(P, device=points.device) % points.shape[1]]
        return points

    @torch.no_grad()
    def step(self, dist: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, pose: torch.Tensor,
             gripper: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame: `dist (C, K, H, W)` descriptor distances of each camera's pixels to every reference, `depth
        (C, H, W)` metres (0 invalid), `K (C, 3, 3)`, camera-to-world `pose (C, 4, 4)` and, to let held keypoints
        follow the gripper, `gripper (4, 4)` the world pose of something rigid with it (the wrist camera's).
        Returns the filtered world points `(K, 3)` and their spread `(K,)` (metres)."""
        if dist.ndim != 4 or depth.shape != (dist.shape[0], *dist.shape[2:]):
            raise DckpError(f"expected dist (C, K, H, W) and depth (C, H, W), got {tuple(dist.shape)} and "
                            f"{tuple(depth.shape)}", field="dist")
        cfg = self.cfg
        depth, K, pose = depth.to(dist), K.to(dist), pose.to(dist)
        if self.generator is None:
            self.generator = torch.Generator(device=dist.device).manual_seed(cfg.filter_seed)
        follows = None
        if self.particles is None:
            points = self._initialise(dist, depth, K, pose)
            self.held = torch.full(points.shape[:1], HELD_MIN, device=dist.device, dtype=dist.dtype)
        else:
            points = self.particles
            if gripper is not None and self.gripper is not None:  # each particle follows it with p = held
                follows = torch.rand(points.shape[:2], generator=self.generator, device=dist.device,
                                     dtype=dist.dtype) < self.held[:, None]
                moved = transform(gripper.to(dist) @ torch.linalg.inv(self.gripper), points)
                shift = (moved - points).norm(dim=-1).mean(-1)  # (K,) how far following would move it
                points = torch.where(follows[..., None], moved, points)
        self.gripper = None if gripper is None else gripper.to(dist)
        points = points + cfg.filter_step * torch.randn(points.shape, generator=self.generator,
                                                        device=dist.device, dtype=dist.dtype)
        weights = torch.softmax(log_likelihood(points, dist, depth, K, pose, cfg.filter_temperature,
                                               cfg.unseen_distance, cfg.occlusion_margin), -1)
        if follows is not None:  # Bayes between "held" and "not": the mean weight of followers against stayers
            n = follows.sum(-1)
            follow = (weights * follows).sum(-1) / n.clamp(min=1)
            stay = (weights * ~follows).sum(-1) / (follows.shape[1] - n).clamp(min=1)
            posterior = self.held * follow / (self.held * follow + (1 - self.held) * stay).clamp(min=1e-30)
            tells = (shift > cfg.filter_step) & (n > 0) & (n < follows.shape[1])  # the two hypotheses differ
            self.held = torch.where(tells, posterior, self.held).clamp(HELD_MIN, 1 - HELD_MIN)
        mean = (weights[..., None] * points).sum(1)
        spread = (weights * (points - mean[:, None]).square().sum(-1)).sum(1).sqrt()
        index = systematic_resample(weights, self.generator)
        self.particles = points.gather(1, index[..., None].expand(-1, -1, 3))
        return mean, spread
