"""Behaviour cloning: train a policy head on demonstrations, keep checkpoints, select one, save and load it.

Files in `out_dir` (all written atomically; no pickle anywhere):
- `policy.safetensors`: the kept weights: `obs_mean`, `obs_std` (the normalisation), `head.<name>` (the head's)
  and a trainable encoder's `encoder.<name>`; `policy.json`: `config` (`PolicyConfig`), `head` (`{"name",
  "options"}`, every option), `obs_dim`, `action_dim`, `best_step` (the step whose weights these are) and
  `torch_threads`: `{first step: torch CPU threads}` per stretch of training with one thread count (the count
  changes the floating-point sums, hence the trained policy; see docs/determinism.md).
- `policy_last.safetensors`: resumable state, every `checkpoint_every` steps and at the end, in the format of
  `dckp.training` (as the DON's and the representations'): `model/<name>` tensors (those of `policy.safetensors`),
  `optimizer/<param index>/<name>` Adam state, metadata `dckp`: JSON of `step` (steps done), `config`, `obs_dim`,
  `torch_threads` and the optimiser's `param_groups` and scalars. If it exists, `train_policy` continues from it
  (the config may differ only in `steps`, `checkpoint_every`, `device`, `compile` and the validation's settings).
- with `val_every > 0`: `checkpoints/step_<steps>/`, a policy folder every `val_every` steps and at the end,
  rolled out on validation seeds (`dckp.evaluation.validation`; results in `validation.jsonl`); the best is copied to
  `policy.safetensors`. Without, the last step's weights are kept.
- `estimate.json`, while a training stopped over its time budget (`budget_s`) is not finished: `{"head", "steps",
  "at_step", "s_per_step", "budget_s"}`, the seconds per step it measured (`dckp.table.cost` reads it).
- `train_log.jsonl`: one `{"step": s, "loss": l}` line per step (the losses are read from the device every
  `dckp.training.READ_EVERY` steps and at every checkpoint); `policy_loss.png`: the loss curve and, with
  validation, the validation success against steps.

A step's phases are labelled `data`, `h2d`, `forward` (a trainable encoder), `loss` (the head's forward and loss),
`backward` and `optim` for torch.profiler (benchmarks/train_step_profile.py).

Step `s` draws its batch from `numpy.random.default_rng([seed, s])` and seeds torch from `[seed, s, 1]`, so a
resumed run repeats exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch.profiler import record_function
from tqdm import tqdm

from dckp.config import atomic_write_bytes, from_dict, save_json
from dckp.errors import DckpError, Interrupted, OverBudget
from dckp.policy.config import PolicyConfig
from dckp.policy.heads.base import head_class
from dckp.policy.kept import best_step, kept_folder
from dckp.policy.model import Policy
from dckp.training import (
    READ_EVERY,
    load_optimizer_tensors,
    log_lines_before,
    optimizer_tensors,
    prefixed,
    read_checkpoint,
    read_pending,
    stop_after_step,
)

WEIGHTS, META, LAST = "policy.safetensors", "policy.json", "policy_last.safetensors"
LOG, PLOT, ESTIMATE = "train_log.jsonl", "policy_loss.png", "estimate.json"
# a time budget is checked once, after this many steps of a piece of training (or 1 % of the steps, if more)
BUDGET_PROBE_STEPS = 20
# config fields that may change when resuming
_RESUMABLE = ("steps", "checkpoint_every", "device", "compile", "val_every", "val_episodes", "val_workers")


def train_policy(features: list[np.ndarray], actions: list[np.ndarray], cfg: PolicyConfig, out_dir,
                 progress: bool = True, encoder=None, frames=None, validator=None, budget_s: float = 0.0) -> dict:
    """Fit a `Policy` with head `cfg.head` to demonstrations `features[i] (T_i, F)` -> `actions[i] (T_i, 7)` by
    minimising the head's loss with Adam (`cfg.lr`, L2 `cfg.weight_decay`) for `cfg.steps` steps on
    `cfg.device`, on windows the head asks for (`Head.window`).

    With a trainable `encoder` (`dckp.encoders.Encoder`), `features` are the proprioception alone and the
    encoder is trained with the policy: each step encodes the batch's frames, read by `frames.batch(index,
    first, n, length)` (a `dckp.policy.demos.FrameWindows`), and puts its features before the proprioception.
    With `cfg.val_every`, `validator` (a `dckp.evaluation.validation.Validator`) rolls out each kept checkpoint.
    With `budget_s`, a training whose first `BUDGET_PROBE_STEPS` steps (or 1 %) project all `cfg.steps` over
    `budget_s` seconds saves its state, writes `estimate.json` and raises OverBudget; it resumes as after Ctrl-C.

    Returns `{"steps", "resumed_from", "obs_dim", "loss_start", "loss_end", "best_step"}` (first and last
    logged loss; `best_step` the step of the weights kept).
    """
    out = Path(out_dir)
    options = cfg.options()
    cls = head_class(cfg.head)
    if encoder is not None and not cls.end_to_end:
        raise DckpError(f"the {cfg.head} head trains on frozen encoders' features only; {encoder.name} is trained "
                        "with the policy: choose the lstm or rnn-gmm head", field="head")
    if cfg.val_every and validator is None:
        raise DckpError("validation rollouts need the task: train through `dckp train-policy` (train_on_demos), or "
                        "set val_every 0", field="val_every")
    obs, act, lengths = _pad_demos(features, actions)
    data = _digest(obs, act, lengths)
    feature_dim = encoder.output_dim() if encoder is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Policy(feature_dim + obs.shape[2], 7, cfg)
    valid = torch.cat([o[:n] for o, n in zip(obs, lengths, strict=True)])
    model.fit_normalisation(torch.cat([valid.new_zeros(len(valid), feature_dim), valid], 1))  # features: as is
    model.head.fit(torch.cat([a[:n] for a, n in zip(act, lengths, strict=True)]))
    device = torch.device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if encoder is not None:
        encoder.to(device).train()
        if cfg.compile:
            encoder.compile(backend=cfg.compile)  # in place: the weights keep their names
        params += list(encoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, threads = _load_last(out / LAST, model, opt, cfg, data, encoder) if (out / LAST).exists() else (0, {})
    if start < cfg.steps and list(threads.values())[-1:] != [torch.get_num_threads()]:
        threads[str(start)] = torch.get_num_threads()
    history = [json.loads(line) for line in log_lines_before(out / LOG, start)]
    atomic_write_bytes(out / LOG, "".join(json.dumps(r) + "\n" for r in history).encode())
    span = cls.window(options)
    probe = start + max(BUDGET_PROBE_STEPS, cfg.steps // 100)
    model.train()
    pending: list = []  # the steps whose losses are not read yet
    with open(out / LOG, "a") as logf, tqdm(total=cfg.steps, initial=start, disable=not progress,
                                            desc=f"policy {cfg.head}", unit="step") as bar, stop_after_step() as stop:
        began = time.monotonic()
        for step in range(start, cfg.steps):
            with record_function("data"):
                index, first, n = _windows(lengths, span, cfg, step)
                o, a, mask = _gather(obs, act, lengths, index, first, n)
                images = frames.batch(index, first, n, o.shape[1]) if encoder is not None else None
            with record_function("h2d"):
                o, a, mask = (x.to(device, non_blocking=True) for x in (o, a, mask))
                if images is not None:
                    images = {k: v.to(device, non_blocking=True) for k, v in images.items()}
            torch.manual_seed(_step_seed(cfg.seed, step))
            if images is not None:
                with record_function("forward"):
                    o = torch.cat([encoder(images).view(*o.shape[:2], -1), o], -1)
            with record_function("loss"):
                loss = model.loss({"obs": o, "action": a, "mask": mask})
            with record_function("backward"):
                opt.zero_grad()
                loss.backward()
            with record_function("optim"):
                opt.step()
                model.head.after_step()
            pending.append(({"step": step}, {"loss": loss.detach()}))
            bar.update()
            done, stopping = step + 1, bool(stop)  # a first Ctrl-C (or SIGTERM, SIGHUP in the CLI): save and stop
            rate = (time.monotonic() - began) / (done - start) if budget_s and done == probe < cfg.steps else 0.0
            over = rate * cfg.steps > budget_s > 0
            saving = done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping or over
            if saving or len(pending) == READ_EVERY:
                read = read_pending(pending)
                history += read
                logf.write("".join(json.dumps(r) + "\n" for r in read))
                bar.set_postfix(loss=f"{history[-1]['loss']:.3g}")
            if cfg.val_every and (done % cfg.val_every == 0 or done == cfg.steps):
                folder = kept_folder(out, done)
                save_policy(model, folder, encoder, threads, best=done)
                validator.submit(done, folder)
            if saving:
                logf.flush()
                _save_last(out / LAST, model, opt, cfg, done, threads, data, encoder)
            if stopping:
                raise Interrupted(f"saved {out / LAST} at step {done} of {cfg.steps}")
            if over:
                save_json({"head": cfg.head, "steps": cfg.steps, "at_step": done, "s_per_step": round(rate, 6),
                           "budget_s": budget_s}, out / ESTIMATE)
                raise OverBudget(f"{cfg.steps} steps at {rate:.3g} s each, measured over steps {start}..{done}, "
                                 f"would take {rate * cfg.steps / 3600:.2f} h, over the budget of "
                                 f"{budget_s / 3600:.2f} h; saved {out / LAST} at step {done}, which a larger budget "
                                 "resumes", path=str(out))
            if validator is not None:
                for r in validator.poll():
                    bar.write(f"validation: step {r['step']}: {r['successes']}/{r['episodes']}")
    best, records = cfg.steps, {}
    if cfg.val_every:
        records = validator.close(workers=torch.get_num_threads())  # the training's CPUs are free now
        best = best_step(records)
        model.eval()
        _load_state(model, *_weights(kept_folder(out, best)), encoder)
    save_policy(model, out, encoder, threads, best=best)
    (out / ESTIMATE).unlink(missing_ok=True)  # finished: its own time counts now
    _plot(history, records, out / PLOT)
    return {"steps": cfg.steps, "resumed_from": start, "obs_dim": model.obs_dim,
            "loss_start": history[0]["loss"] if history else None,
            "loss_end": history[-1]["loss"] if history else None, "best_step": best}


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.default_rng([seed, step, 1]).integers(2**62))


def _state(model: Policy, encoder=None) -> dict[str, torch.Tensor]:
    """The policy's tensors: normalisation and head under their own names, a trainable encoder's under
    `encoder.`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if encoder is not None and encoder.trainable:
        tensors.update({f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()})
    return tensors


def save_policy(model: Policy, out_dir, encoder=None, threads: dict | None = None, best: int | None = None) -> None:
    """Write `policy.safetensors` and `policy.json` (`torch_threads`: `threads` as `train_policy` counts them, and
    `best_step`; null when the model was not trained by it)."""
    out = Path(out_dir)
    atomic_write_bytes(out / WEIGHTS, safetensors.torch.save(_state(model, encoder)))
    save_json({"config": dataclasses.asdict(model.cfg),
               "head": {"name": model.cfg.head, "options": dataclasses.asdict(model.cfg.options())},
               "obs_dim": model.obs_dim, "action_dim": model.action_dim, "torch_threads": threads,
               "best_step": best}, out / META)


def load_policy(out_dir) -> Policy:
    """The policy (normalisation and head) saved in `out_dir` by `save_policy`/`train_policy`, in eval mode on the
    CPU; DckpError naming the file when a file is missing, corrupt or does not match its config."""
    out = Path(out_dir)
    try:
        meta = json.loads((out / META).read_text())
        obs_dim, action_dim, config = int(meta["obs_dim"]), int(meta["action_dim"]), meta["config"]
        if "head" not in meta:
            raise DckpError("written by an older dckp (no head); train the policy again", path=str(out / META),
                            field="head")
        head = meta["head"]
        config = {**config, "head": head["name"], "head_options": head["options"]}
    except FileNotFoundError:
        raise DckpError("file not found", path=str(out / META)) from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DckpError(f"not a policy description ({type(e).__name__}: {e})", path=str(out / META)) from None
    cfg = from_dict(PolicyConfig, config, source=str(out / META))
    try:
        model = Policy(obs_dim, action_dim, cfg)
    except DckpError as e:
        raise DckpError(e.message, path=str(out / META), field=e.field) from None
    _load_state(model, *_weights(out))
    return model.eval()


def load_encoder_weights(encoder, out_dir) -> None:
    """Load a trainable encoder's weights from the policy folder's `policy.safetensors`."""
    tensors, path = _weights(out_dir)
    _load_module(encoder, prefixed(tensors, "encoder."), path)


def _weights(out_dir) -> tuple[dict[str, torch.Tensor], Path]:
    path = Path(out_dir) / WEIGHTS
    if not path.is_file():
        raise DckpError("file not found", path=str(path))
    try:
        return safetensors.torch.load_file(str(path)), path
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0]
        raise DckpError(f"not a readable safetensors file ({type(e).__name__}: {reason})", path=str(path)) from None


def _load_state(model: Policy, tensors: dict[str, torch.Tensor], path: Path, encoder=None) -> None:
    """Policy tensors (and a trainable encoder's, under `encoder.`) into the modules."""
    _load_module(model, {k: v for k, v in tensors.items() if not k.startswith("encoder.")}, path)
    if encoder is not None and encoder.trainable:
        _load_module(encoder, prefixed(tensors, "encoder."), path)


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise DckpError(f"weights do not match the config ({e})".replace("\n", " "), path=str(path)) from None


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


def _windows(lengths: np.ndarray, span: tuple[int, int, int], cfg: PolicyConfig, step: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step `step`'s batch: `cfg.batch_size` demos drawn with replacement (`index`), and of each a window (first
    step `first`, `n` steps): with `span = (length, before, after)` (`Head.window`) the whole demo for length 0, a
    window inside the demo (the whole demo when shorter) without padding, or else one of `length` steps that may
    start `before` steps early and end `after` steps late."""
    length, before, after = span
    rng = np.random.default_rng([cfg.seed, step])
    index = rng.integers(0, len(lengths), cfg.batch_size)
    T = lengths[index]
    if before or after:
        n = np.full_like(T, length)
        return index, rng.integers(-before, np.maximum(T - length + after, -before) + 1), n
    n = np.minimum(T, length) if length else T
    return index, rng.integers(0, T - n + 1), n


def _gather(obs, act, lengths, index, first, n):
    """obs `(B, L, F)`, actions `(B, L, 7)` and the mask `(B, L)` of the windows' steps; a step before a demo's
    start or after its end repeats its first or last step."""
    steps = np.arange(n.max())
    t = torch.from_numpy(np.clip(first[:, None] + steps, 0, lengths[index][:, None] - 1))
    i = torch.from_numpy(index)[:, None]
    return obs[i, t], act[i, t], torch.from_numpy(steps < n[:, None])


def _digest(*arrays) -> str:
    """sha256 of the training data (the observations, actions and lengths), so that a resumed training is the one
    it continues."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def _save_last(path: Path, model: Policy, opt: torch.optim.Optimizer, cfg: PolicyConfig, step: int,
               threads: dict, data: str, encoder=None) -> None:
    tensors, opt_meta = optimizer_tensors(opt)
    tensors.update({f"model/{k}": v for k, v in _state(model, encoder).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # one metadata key: safetensors writes several in a random order, and the file would differ run to run
    meta = {"step": step, "config": dataclasses.asdict(cfg), "obs_dim": model.obs_dim, "torch_threads": threads,
            "optimizer": opt_meta, "data": data}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"dckp": json.dumps(meta)}))


def _load_last(path: Path, model: Policy, opt: torch.optim.Optimizer, cfg: PolicyConfig, data: str,
               encoder=None) -> tuple[int, dict]:
    """Restore model and optimizer from `policy_last.safetensors`; the number of steps already done and the
    checkpoint's `torch_threads`. DckpError when it was trained on other `data` (`_digest`; checkpoints saved
    before the digest was recorded are taken as they are)."""
    remedy = "delete it to train from the start"
    meta, tensors = read_checkpoint(path, "policy checkpoint", remedy)
    try:
        saved, step, obs_dim, threads = meta["config"], int(meta["step"]), int(meta["obs_dim"]), meta["torch_threads"]
        opt_meta = meta["optimizer"]
    except (KeyError, ValueError, TypeError) as e:
        raise DckpError(f"not a policy checkpoint ({type(e).__name__}: {e}); {remedy}", path=str(path)) from None
    current = dataclasses.asdict(cfg)
    if obs_dim != model.obs_dim or {k: v for k, v in saved.items() if k not in _RESUMABLE} != {
            k: v for k, v in current.items() if k not in _RESUMABLE}:
        raise DckpError("checkpoint was trained with another config or feature size; delete it or use another "
                        "out_dir", path=str(path))
    if meta.get("data", data) != data:
        raise DckpError("checkpoint was trained on other data (the demonstrations or the encoder's features "
                        f"changed); {remedy}", path=str(path))
    if step > cfg.steps:
        raise DckpError(f"checkpoint is at step {step}, beyond steps={cfg.steps}", path=str(path))
    _load_state(model, prefixed(tensors, "model/"), path, encoder)
    try:
        load_optimizer_tensors(opt, tensors, opt_meta)
    except (ValueError, KeyError, RuntimeError) as e:
        raise DckpError(f"bad optimizer state ({e})".replace("\n", " "), path=str(path)) from None
    return step, dict(threads)


def _plot(history: list[dict], records: dict[int, dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6.5 if records else 4))
    ax = fig.add_subplot(2 if records else 1, 1, 1)
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], linewidth=0.5)
    ax.set_yscale("symlog")  # an NLL spans orders of magnitude and may go negative
    ax.set(xlabel="step", ylabel="training loss", title="policy training")
    if records:
        val = fig.add_subplot(2, 1, 2)
        val.plot(list(records), [r["rate"] for r in records.values()], marker="o")
        val.set(xlabel="step", ylabel="validation success", ylim=(-0.02, 1.02),
                title=f"validation rollouts (seeds from 2,000,000; {next(iter(records.values()))['episodes']} each)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
