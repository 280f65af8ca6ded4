"""Behaviour cloning: train the LSTM policy on demonstrations, save, resume and load it.

Files in `out_dir` (all written atomically; no pickle anywhere):
- `policy.safetensors`: final weights and normalisation buffers; `policy.json`: config, obs_dim, action_dim and
  `torch_threads`: `{first step: torch CPU threads}` per stretch of training with one thread count (the count
  changes the floating-point sums, hence the trained policy; see docs/determinism.md); a stretch from a
  checkpoint that predates this record has `null`.
- `policy_last.safetensors`: resumable state, every `checkpoint_every` steps and at the end: `model.<name>`
  tensors, `optimizer.<param index>.<name>` Adam state tensors, metadata `dckp`: JSON of `step` (steps done),
  `config`, `obs_dim` and `torch_threads`.
  If it exists, `train_policy` continues from it (the config may differ only in `steps` and `checkpoint_every`).
- `train_log.jsonl`: one `{"step": s, "loss": nll}` line per step; `policy_loss.png`: the loss curve.

Step `s` draws its batch from `numpy.random.default_rng([seed, s])`, so a resumed run repeats exactly the losses
of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from dckp.config import atomic_write_bytes, from_dict, save_json
from dckp.errors import DckpError
from dckp.policy.config import PolicyConfig, action_std
from dckp.policy.model import LSTMPolicy, nll
from dckp.training import log_lines_before

WEIGHTS, META, LAST = "policy.safetensors", "policy.json", "policy_last.safetensors"
LOG, PLOT = "train_log.jsonl", "policy_loss.png"
_RESUMABLE = ("steps", "checkpoint_every", "device")  # config fields that may change when resuming


def train_policy(features: list[np.ndarray], actions: list[np.ndarray], cfg: PolicyConfig, out_dir,
                 progress: bool = True, encoder=None, frames=None) -> dict:
    """Fit `LSTMPolicy` to demonstrations `features[i] (T_i, F)` -> `actions[i] (T_i, 7)` by minimising `nll`
    with Adam (`cfg.lr`, L2 `cfg.weight_decay`) for `cfg.steps` steps on `cfg.device`.

    With a trainable `encoder` (`dckp.encoders.Encoder`), `features` are the proprioception alone and the
    encoder is trained with the policy: each step encodes the batch's frames, read by `frames.batch(index,
    first, n, length)` (a `dckp.policy.demos.FrameWindows`), and puts its features before the proprioception.
    Torch's generator is seeded per step, so augmentations repeat on resume.

    Returns `{"steps", "resumed_from", "obs_dim", "loss_start", "loss_end"}` (first and last logged loss).
    """
    out = Path(out_dir)
    obs, act, lengths = _pad_demos(features, actions)
    feature_dim = encoder.output_dim() if encoder is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LSTMPolicy(feature_dim + obs.shape[2], 7, cfg)
    valid = torch.cat([o[:n] for o, n in zip(obs, lengths, strict=True)])
    model.fit_normalisation(torch.cat([valid.new_zeros(len(valid), feature_dim), valid], 1))  # features: as is
    device = torch.device(cfg.device)
    model.to(device)
    params = list(model.parameters())
    if encoder is not None:
        encoder.to(device).train()
        params += list(encoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, threads = _load_last(out / LAST, model, opt, cfg, encoder) if (out / LAST).exists() else (0, {})
    if start < cfg.steps and list(threads.values())[-1:] != [torch.get_num_threads()]:
        threads[str(start)] = torch.get_num_threads()
    history = [json.loads(line) for line in log_lines_before(out / LOG, start)]
    atomic_write_bytes(out / LOG, "".join(json.dumps(r) + "\n" for r in history).encode())
    std = action_std(cfg).to(device)
    with open(out / LOG, "a") as log, tqdm(total=cfg.steps, initial=start, disable=not progress,
                                           desc="policy", unit="step") as bar:
        for step in range(start, cfg.steps):
            index, first, n = _windows(lengths, cfg, step)
            o, a, mask = _gather(obs, act, index, first, n)
            if encoder is not None:
                torch.manual_seed(_step_seed(cfg.seed, step))
                f = encoder(frames.batch(index, first, n, o.shape[1]))
                o = torch.cat([f.view(*o.shape[:2], -1), o.to(device)], -1)
            loss = nll(model(o.to(device))[0], a.to(device), mask.to(device), std)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"step": step, "loss": loss.item()})
            log.write(json.dumps(history[-1]) + "\n")
            bar.update()
            bar.set_postfix(loss=f"{history[-1]['loss']:.3g}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                log.flush()
                _save_last(out / LAST, model, opt, cfg, step + 1, threads, encoder)
    save_policy(model, out, encoder, threads)
    _plot(history, out / PLOT)
    return {"steps": cfg.steps, "resumed_from": start, "obs_dim": model.obs_dim,
            "loss_start": history[0]["loss"] if history else None,
            "loss_end": history[-1]["loss"] if history else None}


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, step, 1]).integers(2**62))


def _state(model: LSTMPolicy, encoder=None) -> dict[str, torch.Tensor]:
    """The policy's tensors: the head's under their own names, a trainable encoder's under `encoder.`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if encoder is not None and encoder.trainable:
        tensors.update({f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()})
    return tensors


def save_policy(model: LSTMPolicy, out_dir, encoder=None, threads: dict | None = None) -> None:
    """Write `policy.safetensors` (weights and normalisation buffers; a trainable encoder's weights under
    `encoder.`) and `policy.json` (`torch_threads`: `threads` as `train_policy` counts them; null when the
    model was not trained by it)."""
    out = Path(out_dir)
    atomic_write_bytes(out / WEIGHTS, safetensors.torch.save(_state(model, encoder)))
    save_json({"config": dataclasses.asdict(model.cfg), "obs_dim": model.obs_dim, "action_dim": model.action_dim,
               "torch_threads": threads}, out / META)


def load_policy(out_dir) -> LSTMPolicy:
    """The policy head saved in `out_dir` by `save_policy`/`train_policy`, in eval mode on the CPU; DckpError
    naming the file when a file is missing, corrupt or does not match its config."""
    out = Path(out_dir)
    try:
        meta = json.loads((out / META).read_text())
        obs_dim, action_dim, config = int(meta["obs_dim"]), int(meta["action_dim"]), meta["config"]
    except FileNotFoundError:
        raise DckpError("file not found", path=str(out / META)) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DckpError(f"not a policy description ({type(e).__name__}: {e})", path=str(out / META)) from None
    model = LSTMPolicy(obs_dim, action_dim, from_dict(PolicyConfig, config, source=str(out / META)))
    tensors, _ = _read_safetensors(out / WEIGHTS)
    _load_state(model, {k: v for k, v in tensors.items() if not k.startswith("encoder.")}, out / WEIGHTS)
    return model.eval()


def load_encoder_weights(encoder, out_dir) -> None:
    """Load a trainable encoder's weights from the policy folder's `policy.safetensors`."""
    path = Path(out_dir) / WEIGHTS
    tensors, _ = _read_safetensors(path)
    _load_state(encoder, {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}, path)


def _pad_demos(features, actions) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Check the demonstrations and pad them to `(N, T_max, F)`, `(N, T_max, 7)` float32, with lengths `(N,)`."""
    if not len(features) or len(features) != len(actions):
        raise DckpError(f"need as many action as feature sequences (>= 1), got {len(features)} and {len(actions)}",
                        field="features")
    features = [np.asarray(f, dtype=np.float32) for f in features]
    actions = [np.asarray(a, dtype=np.float32) for a in actions]
    F = features[0].shape[-1] if features[0].ndim == 2 else -1
    for i, (f, a) in enumerate(zip(features, actions, strict=True)):
        if f.ndim != 2 or f.shape[1] != F or len(f) == 0 or not np.isfinite(f).all():
            raise DckpError(f"expected finite (T, {F}) features with T >= 1, got {f.shape}", field=f"features[{i}]")
        if a.shape != (len(f), 7) or not np.isfinite(a).all():
            raise DckpError(f"expected finite ({len(f)}, 7) actions, got {a.shape}", field=f"actions[{i}]")
    lengths = np.array([len(f) for f in features])
    obs, act = torch.zeros(len(features), lengths.max(), F), torch.zeros(len(features), lengths.max(), 7)
    for i, (f, a) in enumerate(zip(features, actions, strict=True)):
        obs[i, : len(f)], act[i, : len(a)] = torch.from_numpy(f), torch.from_numpy(a)
    return obs, act, lengths


def _windows(lengths: np.ndarray, cfg: PolicyConfig, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step `step`'s batch: `cfg.batch_size` demos drawn with replacement (`index`), and of each the whole demo
    (`seq_len=0`) or a random window of `seq_len` steps (`first`, `n` steps)."""
    rng = np.random.default_rng([cfg.seed, step])
    index = rng.integers(0, len(lengths), cfg.batch_size)
    T = lengths[index]
    n = np.minimum(T, cfg.seq_len) if cfg.seq_len else T
    return index, rng.integers(0, T - n + 1), n


def _gather(obs, act, index, first, n):
    """obs `(B, L, F)`, actions `(B, L, 7)` and the mask `(B, L)` of valid steps of the windows."""
    steps = np.arange(n.max())
    t = torch.from_numpy(np.minimum(first[:, None] + steps, obs.shape[1] - 1))
    i = torch.from_numpy(index)[:, None]
    return obs[i, t], act[i, t], torch.from_numpy(steps < n[:, None])


def _save_last(path: Path, model: LSTMPolicy, opt: torch.optim.Optimizer, cfg: PolicyConfig, step: int,
               threads: dict, encoder=None) -> None:
    tensors = {f"model.{k}": v for k, v in _state(model, encoder).items()}
    for i, state in opt.state_dict()["state"].items():
        tensors.update({f"optimizer.{i}.{k}": torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()})
    # one metadata key: safetensors writes several in a random order, and the file would differ run to run
    meta = {"step": step, "config": dataclasses.asdict(cfg), "obs_dim": model.obs_dim, "torch_threads": threads}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"dckp": json.dumps(meta)}))


def _load_last(path: Path, model: LSTMPolicy, opt: torch.optim.Optimizer, cfg: PolicyConfig,
               encoder=None) -> tuple[int, dict]:
    """Restore model and optimizer from `policy_last.safetensors`; the number of steps already done and the
    checkpoint's `torch_threads` (`{"0": null}` for a checkpoint that predates the record)."""
    tensors, meta = _read_safetensors(path)
    try:
        meta = json.loads(meta["dckp"])
        saved, step, obs_dim = meta["config"], int(meta["step"]), int(meta["obs_dim"])
        threads = dict(meta.get("torch_threads", {"0": None}))
    except (KeyError, ValueError, TypeError) as e:
        raise DckpError(f"not a policy checkpoint ({type(e).__name__}: {e})", path=str(path)) from None
    current = dataclasses.asdict(cfg)
    if obs_dim != model.obs_dim or {k: v for k, v in saved.items() if k not in _RESUMABLE} != {
            k: v for k, v in current.items() if k not in _RESUMABLE}:
        raise DckpError("checkpoint was trained with another config or feature size; delete it or use another "
                        "out_dir", path=str(path))
    if step > cfg.steps:
        raise DckpError(f"checkpoint is at step {step}, beyond steps={cfg.steps}", path=str(path))
    saved = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_state(model, {k: v for k, v in saved.items() if not k.startswith("encoder.")}, path)
    if encoder is not None and encoder.trainable:
        _load_state(encoder, {k[len("encoder."):]: v for k, v in saved.items() if k.startswith("encoder.")}, path)
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise DckpError(f"bad optimizer state ({e})".replace("\n", " "), path=str(path)) from None
    return step, threads


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except FileNotFoundError:
        raise DckpError("file not found", path=str(path)) from None
    except (SafetensorError, OSError) as e:
        raise DckpError(f"not a readable safetensors file ({e})".replace("\n", " "), path=str(path)) from None


def _load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise DckpError(f"weights do not match the config ({e})".replace("\n", " "), path=str(path)) from None


def _plot(history: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in history], [r["loss"] for r in history])
    ax.set_yscale("symlog")  # the NLL of a small fixed std spans orders of magnitude and may go negative
    ax.set(xlabel="step", ylabel="negative log-likelihood", title="policy training loss")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
