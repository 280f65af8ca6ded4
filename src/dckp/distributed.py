"""Data-parallel training with PyTorch's DDP: the process's place in a `torchrun` job, the process group, sums over
processes, batch norm whose statistics span every process, and `dckp ... --nproc N`, which starts torchrun. DON
pretraining (`dckp.don.train`) and representation pretraining (`dckp.representations.train`) use it.

`torchrun` (or `dckp pretrain --nproc N`, `dckp pretrain-representation --nproc N`) starts N processes and tells
each its RANK, LOCAL_RANK and WORLD_SIZE (environment variables); without them a process is rank 0 of 1 and nothing
here communicates. The backend is gloo on the CPU and nccl on GPUs (each process takes GPU LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


def world() -> World:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def device_of(device: str, w: World) -> str:
    """The device of this process: `cuda` becomes `cuda:LOCAL_RANK` in a job of several processes."""
    return f"cuda:{w.local_rank}" if device == "cuda" and w.size > 1 else device


@contextlib.contextmanager
def process_group(device: str):
    """Joins the torchrun job's process group for the duration (gloo on the CPU, nccl on GPUs); a no-op for one
    process."""
    import torch
    import torch.distributed as dist

    w = world()
    if w.size == 1:
        yield w
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield w
    finally:
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the joined process group (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if _active() else 1


def all_reduce_sum(t):
    """`t` summed over the processes (a new tensor, outside autograd; `t` itself outside a process group)."""
    import torch.distributed as dist

    if not _active():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def barrier() -> None:
    import torch.distributed as dist

    if _active():
        dist.barrier()


def sync_batch_norm(module):
    """`module` with every BatchNorm2d replaced by `SyncBatchNorm2d` (same parameters, buffers and state-dict keys).
    torch's own nn.SyncBatchNorm runs on GPUs only; this one runs wherever the process group does."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class _AllReduce(torch.autograd.Function):
        """Sum over processes, differentiable: the gradient is summed over processes too."""

        @staticmethod
        def forward(ctx, t):
            t = t.clone()
            torch.distributed.all_reduce(t)
            return t

        @staticmethod
        def backward(ctx, grad):
            grad = grad.clone()
            torch.distributed.all_reduce(grad)
            return grad

    class SyncBatchNorm2d(nn.BatchNorm2d):
        """Batch norm whose training statistics are those of the whole batch across processes: each process's
        count, mean and variance, gathered by one differentiable all-reduce (each writes its own row) and combined
        exactly, so N processes of B images normalise as one process of N*B images."""

        def forward(self, x):
            if not (self.training and _active()):
                return super().forward(x)
            import torch.distributed as dist

            x = x.float()  # statistics in float32 under bf16 autocast too
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            n = x.new_full((1,), x.numel() / x.shape[1])
            rank, size = dist.get_rank(), dist.get_world_size()
            rows = _AllReduce.apply(F.pad(torch.cat([n, mean, var])[None], (0, 0, rank, size - rank - 1)))
            counts, means, variances = rows[:, :1], rows[:, 1:1 + len(mean)], rows[:, 1 + len(mean):]
            total = counts.sum()
            mean = (counts * means).sum(0) / total
            var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * total / (total - 1), m)
            scale = torch.rsqrt(var + self.eps) * self.weight
            return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats).to(child.weight.device)
                sync.load_state_dict(child.state_dict())
                setattr(parent, name, sync)
    return module


def check_resumed_world(config: Path, size: int, batch: str) -> None:
    """A run resumed with another number of processes than its `config` file (`world_size`, 1 if absent) records
    goes on, with another `batch` ("pairs", "images") per step from here on: logged."""
    before = json.loads(config.read_text()).get("world_size", 1) if config.exists() else 1
    if before != size:
        log.warning("resuming a run of %d process(es) with %d: the %s per step change from here on", before, size,
                    batch)


def launch(nproc: int, argv: list[str]) -> int:
    """Run `dckp ARGV` (less its `--nproc`) as a torchrun job of `nproc` processes on this machine (no set-up: a
    standalone rendezvous on a free local port); returns its exit status. An interrupt of this process (Ctrl-C,
    SIGTERM, SIGHUP) is passed on to torchrun as SIGTERM, which passes it on to the processes: each finishes its step
    and rank 0 saves, as one process does."""
    rest, skip = [], False
    for arg in argv:
        if not skip and not arg.startswith("--nproc"):
            rest.append(arg)
        skip = arg == "--nproc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dckp.cli.main", *rest]
    with subprocess.Popen(cmd) as p:
        try:
            return p.wait()
        except KeyboardInterrupt:
            p.send_signal(signal.SIGTERM)
            p.wait()
            raise
