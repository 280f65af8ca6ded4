"""Training checkpoints as safetensors: no pickle, written atomically, restored bit-exactly.

One file holds the tensors: `model/<name>` (state dict), `optimizer/<param index>/<name>` (per-parameter
optimiser state), `rng/torch`, `rng/cuda/<i>` and `generator/<name>` (torch.Generator states). Its
safetensors metadata entry `dckp` is JSON with the rest: format, step, the config, the optimiser's
param_groups and non-tensor state, the LR scheduler's state dict and numpy Generator states. The config is
also written as JSON next to the checkpoint (`<name>.json`) for people and tools.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from dckp.config import atomic_write_bytes, from_dict, save_json
from dckp.don.config import DonConfig
from dckp.errors import DckpError
from dckp.training import load_optimizer_tensors, optimizer_tensors, prefixed, read_checkpoint

FORMAT = "dckp-don-checkpoint-v1"
# config fields a resumed run may set differently
RESUME_MAY_CHANGE = ("steps", "backbone_weights", "device", "workers", "compile")

Generators = dict[str, np.random.Generator | torch.Generator]


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, cfg: DonConfig, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    generators: Generators | None = None) -> None:
    """Write the checkpoint (and `<name>.json` with the config). generators: extra RNGs to restore by name."""
    path = Path(path)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "step": step, "config": dataclasses.asdict(cfg), "numpy_generators": {}}
    if optimizer is not None:
        optimizer_part, meta["optimizer"] = optimizer_tensors(optimizer)
        tensors.update(optimizer_part)
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    for name, g in (generators or {}).items():
        if isinstance(g, torch.Generator):
            tensors[f"generator/{name}"] = g.get_state()
        else:
            meta["numpy_generators"][name] = g.bit_generator.state
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_json(cfg, path.with_suffix(".json"))
    atomic_write_bytes(path, save(tensors, metadata={"dckp": json.dumps(meta)}))


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    meta, tensors = read_checkpoint(path, "checkpoint", "delete it and run `dckp pretrain` again")
    if meta.get("format") != FORMAT:
        raise DckpError(f"unknown checkpoint format {meta.get('format')!r}, expected {FORMAT!r}", path=str(path))
    return meta, tensors


def load_checkpoint_config(path: str | os.PathLike) -> DonConfig:
    """The config the checkpoint was made with (from the checkpoint itself)."""
    return from_dict(DonConfig, _read(Path(path))[0]["config"], source=str(path))


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, cfg: DonConfig | None = None, generators: Generators | None = None) -> int:
    """Restore model, and where given optimiser, scheduler and generators, plus torch's RNG state; return
    the step. With `cfg`, every config field except RESUME_MAY_CHANGE must equal the checkpoint's."""
    path = Path(path)
    meta, tensors = _read(path)
    if cfg is not None:
        saved, now = dataclasses.asdict(from_dict(DonConfig, meta["config"], str(path))), dataclasses.asdict(cfg)
        differ = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k))
        if differ:
            raise DckpError(f"config differs from the checkpoint's in {differ} "
                            f"(checkpoint: {[saved.get(k) for k in differ]})", path=str(path))
    try:
        model.load_state_dict(prefixed(tensors, "model/"))
    except RuntimeError as e:
        raise DckpError(f"model does not fit the checkpoint: {' '.join(str(e).split())[:300]}",
                        path=str(path)) from None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise DckpError("checkpoint has no optimizer state", path=str(path))
        load_optimizer_tensors(optimizer, tensors, meta["optimizer"])
    if scheduler is not None:
        if "scheduler" not in meta:
            raise DckpError("checkpoint has no scheduler state", path=str(path))
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda = prefixed(tensors, "rng/cuda/")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda[str(i)] for i in range(len(cuda))])
    for name, g in (generators or {}).items():
        if isinstance(g, torch.Generator):
            if f"generator/{name}" not in tensors:
                raise DckpError(f"checkpoint has no state for generator {name!r}", path=str(path))
            g.set_state(tensors[f"generator/{name}"])
        else:
            if name not in meta["numpy_generators"]:
                raise DckpError(f"checkpoint has no state for generator {name!r}", path=str(path))
            g.bit_generator.state = meta["numpy_generators"][name]
    return meta["step"]
